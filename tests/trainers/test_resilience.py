"""Kill-and-resume with a real subprocess, multi-worker training over
TF_CONFIG with two local worker processes, and the sweep restart."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.trainers.helpers import (REPO, TINY, free_ports, run_trainer, trainer_cmd, trainer_env,
                                    write_fake_fashion_mnist)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_last_epoch(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=256, n_test=64)
    out = tmp_path / "run"
    epochs = 6
    args = TINY + ["--dataset=fashion_mnist", f"--data_dir={data_dir}", f"--epochs={epochs}",
                   "--max_train_examples=256", "--batch_size=32", f"--output_dir={out}"]
    proc = subprocess.Popen(trainer_cmd(*args), cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    state_path = out / "state.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            state = _read_json(state_path)
            if state and state["epochs_completed"] >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "first run ended before it could be killed:\n" + proc.stdout.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_state = _read_json(state_path)
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
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    # The cosine schedule continued from the restored step count: it ends at 0
    # and the learning rate after epoch e is lr0 * (1 + cos(pi e / E)) / 2.
    import math

    lr0 = metrics["flags"]["learning_rate"]
    for h in metrics["history"]:
        expected = lr0 * (1 + math.cos(math.pi * h["epoch"] / epochs)) / 2
        assert h["learning_rate"] == pytest.approx(expected, rel=1e-4, abs=1e-9)
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
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
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
