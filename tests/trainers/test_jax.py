"""The trainer on the JAX backend with TensorFlow absent (a sys.meta_path
blocker makes every ``tensorflow*`` import fail, as on the GPU machine)."""

import json
import subprocess

import pytest

pytest.importorskip("jax")

from tests.trainers.helpers import (  # noqa: E402
    REPO, TINY, assert_cosine_history, free_ports, jax_env, kill_after_first_epoch, no_tf_cmd, run_trainer_jax_no_tf,
    start_tiny_run, wait_all, write_fake_fashion_mnist)


def _tags(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_jax_without_tensorflow_end_to_end(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=96, n_test=40)
    out = tmp_path / "run"
    proc = run_trainer_jax_no_tf(*TINY, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2",
                                 "--randaugment_ops=2", "--crop_flip", "--export", f"--output_dir={out}",
                                 timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "jax" and m["input_pipeline"] == "device" and m["epochs_completed"] == 2
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["tta_accuracy"] <= 1.0
    assert list(m["firing_rates"]) == ["stage1_block1_act1", "stage1_block1_act2", "final_act"]
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert m["history"][1]["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    # No TensorFlow: the .keras files, the Keras-side energy report, and the export command.
    for name in ("final.keras", "best.keras", "state.json"):
        assert (out / name).is_file(), name
    assert m["export"]["skipped"] == "TensorFlow is not installed"
    assert "python -m export --model " + str(out / "final.keras") in proc.stdout
    energy = json.loads((out / "energy" / "energy_report.json").read_text())
    assert energy["num_examples"] == 40 and m["energy"]["efficiency"] == energy["efficiency"]
    # One line per epoch on a non-terminal stdout.
    assert [ln[:9] for ln in proc.stdout.splitlines() if ln.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate",
            "epoch_firing_rate/mean"} <= _tags(str(out / "tensorboard" / "train"))
    assert {"epoch_loss", "epoch_accuracy"} <= _tags(str(out / "tensorboard" / "validation"))


def test_jax_rejects_tf_only_flags_in_one_line(tmp_path):
    out = tmp_path / "run"
    for flag, expected in (("--input_pipeline=tf_data", "--input_pipeline tf_data needs the tensorflow"),
                           ("--strategy=multi_worker", "--strategy multi_worker needs the TF_CONFIG environment")):
        proc = run_trainer_jax_no_tf("--dataset=fashion_mnist", flag, f"--output_dir={out}", timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and expected in proc.stderr
        assert proc.stdout == "" and not out.exists()


@pytest.mark.slow
def test_jax_data_parallel_on_two_cpu_devices(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=101, n_test=51)
    out = tmp_path / "run"
    proc = run_trainer_jax_no_tf(*TINY, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                                 "--strategy=mirrored", f"--output_dir={out}", timeout=400,
                                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_replicas"] == 2 and len(m["devices"]) == 2
    # 51 test images: the last batch is padded to 20 with a zero-weight row,
    # which must not count in the accuracy.
    assert abs(m["test_accuracy"] * 51 - round(m["test_accuracy"] * 51)) < 1e-3


@pytest.mark.slow
def test_jax_sigkill_then_rerun_resumes(tmp_path):
    epochs = 5
    args, out, proc = start_tiny_run(tmp_path, epochs, ["--randaugment_ops=1"], cmd=no_tf_cmd, env=jax_env())
    state_path = out / "state.json"
    kill_after_first_epoch([proc], state_path, timeout=300)
    done = json.loads(state_path.read_text())["epochs_completed"]
    assert 1 <= done < epochs and not (out / "metrics.json").exists()
    second = run_trainer_jax_no_tf(*args, timeout=400)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert f"resuming from epoch {done}/{epochs} (optimizer step {done * 8})" in second.stdout
    assert f"Epoch {done + 1}/{epochs}" in second.stdout and "Epoch 1/" not in second.stdout
    assert_cosine_history(json.loads((out / "metrics.json").read_text()), epochs)


def _start_cluster(args, ports):
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(len(ports)):
        env = jax_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        procs.append(subprocess.Popen(no_tf_cmd(*args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


@pytest.mark.slow
def test_jax_multi_worker_two_processes_on_localhost_with_resume(tmp_path):
    """--strategy multi_worker on JAX: two processes (jax.distributed over
    TF_CONFIG, the same command as on TensorFlow), killed after an epoch and
    started again: both resume from the chief's checkpoint."""
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=144, n_test=40)
    out = tmp_path / "run"
    epochs = 3
    args = TINY + ["--dataset=fashion_mnist", f"--data_dir={data_dir}", f"--epochs={epochs}",
                   "--strategy=multi_worker", f"--output_dir={out}"]
    procs = _start_cluster(args, free_ports(2))
    kill_after_first_epoch(procs, out / "state.json", timeout=300)
    done = json.loads((out / "state.json").read_text())["epochs_completed"]
    assert 1 <= done < epochs and not (out / "metrics.json").exists()

    procs = _start_cluster(args, free_ports(2))
    outputs = wait_all(procs, timeout=400)
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    assert f"resuming from epoch {done}/{epochs}" in outputs[0] and f"resuming from epoch {done}/{epochs}" in outputs[1]
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "jax" and m["num_processes"] == 2 and m["num_replicas"] == 2
    assert [h["epoch"] for h in m["history"]] == list(range(1, epochs + 1))
    # 128 training images per epoch over 2 processes (16 each per global batch of 32): 4 steps.
    assert m["steps_per_epoch"] == 4 and m["num_train_examples"] == 128
    # Global metrics: 40 test images, each counted once across the two processes.
    assert abs(m["test_accuracy_final"] * 40 - round(m["test_accuracy_final"] * 40)) < 1e-3
    assert "test (40 images, evaluated once at the end)" in outputs[0]
    assert not (out / ".worker-1").exists() and (out / "final.keras").is_file()
    assert list(m["firing_rates"]) == ["stage1_block1_act1", "stage1_block1_act2", "final_act"]
