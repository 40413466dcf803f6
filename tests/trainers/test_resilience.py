"""Kill-and-resume with a real subprocess, multi-worker training over
TF_CONFIG with two local worker processes, and the sweep restart."""

import json
import os
import signal
import subprocess

import pytest

from tests.trainers.helpers import (REPO, TINY, assert_cosine_history, free_ports, kill_after_first_epoch,
                                    read_json, run_trainer, start_tiny_run, trainer_cmd, trainer_env, wait_all,
                                    write_fake_fashion_mnist)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_last_epoch(tmp_path):
    epochs = 6
    args, out, proc = start_tiny_run(tmp_path, epochs, ["--max_train_examples=256", "--batch_size=32"])
    state_path = out / "state.json"
    kill_after_first_epoch([proc], state_path, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    killed_state = read_json(state_path)
    done = killed_state["epochs_completed"]
    assert 1 <= done < epochs
    assert not (out / "metrics.json").exists()
    # The checkpoint the state points at is complete (written before state.json).
    assert (out / killed_state["checkpoint"]).is_file()

    second = run_trainer(*args, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"resuming from epoch {done}/{epochs} (optimizer step {done * 8})" in second.stdout
    assert f"Epoch {done + 1}/{epochs}" in second.stdout
    assert "Epoch 1/" not in second.stdout or done == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    # The cosine schedule continued from the restored step count.
    assert_cosine_history(metrics, epochs)
    assert metrics["wall_time_s"] >= metrics["session_wall_time_s"]


@pytest.mark.slow
def test_multi_worker_two_local_processes(tmp_path):
    pytest.importorskip("tensorflow")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("MultiWorkerMirroredStrategy needs the tensorflow backend")
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=64, n_test=32)
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out = tmp_path / "run"
    args = TINY + ["--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                   "--strategy=multi_worker", f"--output_dir={out}"]
    procs = []
    for index in range(2):
        env = trainer_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        procs.append(subprocess.Popen(trainer_cmd(*args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = wait_all(procs, timeout=300)
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_replicas"] == 2 and metrics["epochs_completed"] == 1
    assert "test (32 images, evaluated once at the end)" in outputs[0]
    # The non-chief worker wrote only to its scratch folder and removed it.
    assert not (out / ".worker-1").exists()


@pytest.mark.slow
def test_sweep_runs_grid_writes_csv_and_skips_finished_points(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=32, n_test=16)
    out = tmp_path / "sweep"
    args = [f"--output_dir={out}", "--grid=learning_rate=0.01,0.05", "--", *TINY,
            "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1"]
    first = run_trainer(*args, module="trainers.sweep", timeout=400)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert first.stdout.count(": training") == 2
    assert "best (validation_accuracy_best " in first.stdout and "--learning_rate=0.0" in first.stdout
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["learning_rate"] for r in rows] == ["0.01", "0.05"]
    assert all(r["status"] == "ok" and 0 <= float(r["test_accuracy_final"]) <= 1 for r in rows)
    again = run_trainer(*args, module="trainers.sweep", timeout=120)
    assert again.returncode == 0
    assert again.stdout.count("done, skipped") == 2 and ": training" not in again.stdout
