"""Shared helpers for the trainer tests: tiny offline data sets and subprocess runs."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny model that trains in seconds on 2 CPU cores.
TINY = ["--model=custom", "--blocks=1", "--width=4", "--batch_size=32", "--randaugment_ops=0",
        "--firing_rate_batches=1", "--validation_examples=16"]


def _write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_fashion_mnist(directory, n_train=128, n_test=64, seed=0):
    """Writes the four Fashion-MNIST IDX .gz files with small random data.

    Class c images are bright in a band whose position depends on c, so
    even a tiny network can learn something.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 8, :] = 230
        _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    return directory


def trainer_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_CONFIG", None)
    env.update(extra or {})
    return env


def trainer_cmd(*args, module="trainers.cifar"):
    return [sys.executable, "-m", module] + list(args)


def run_trainer(*args, timeout=300, env=None, module="trainers.cifar"):
    return subprocess.run(trainer_cmd(*args, module=module), cwd=REPO, env=trainer_env(env),
                          capture_output=True, text=True, timeout=timeout)


# Runs a module with every ``tensorflow*`` import failing as if TensorFlow
# were not installed (find_spec -> ModuleNotFoundError), to check the JAX
# path on a machine that has TensorFlow.
_NO_TF_PRELUDE = """
import importlib.abc, runpy, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow.") or name.startswith("tensorflow_"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def no_tf_cmd(*args, module="trainers.cifar"):
    return [sys.executable, "-c", _NO_TF_PRELUDE, module] + list(args)


def jax_env(extra=None):
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env.update(extra or {})
    return trainer_env(env)


def run_trainer_jax_no_tf(*args, timeout=300, env=None, module="trainers.cifar"):
    """``KERAS_BACKEND=jax python -m <module> args`` with TensorFlow blocked."""
    return subprocess.run(no_tf_cmd(*args, module=module), cwd=REPO, env=jax_env(env),
                          capture_output=True, text=True, timeout=timeout)


def free_ports(n):
    """``n`` TCP ports on localhost free right now (for local clusters)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def read_json(path):
    """The JSON at ``path``, or None while it is missing or half-written."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def kill_after_first_epoch(procs, state_path, timeout):
    """SIGKILLs every process of ``procs`` once ``state_path`` says an epoch
    is done (asserting none ended before), and waits for them."""
    import signal
    import time

    deadline = time.time() + timeout
    try:
        while time.time() < deadline and all(p.poll() is None for p in procs):
            state = read_json(state_path)
            if state and state["epochs_completed"] >= 1:
                break
            time.sleep(0.1)
        assert all(p.poll() is None for p in procs), "a run ended before it could be killed:\n" + "\n".join(
            p.communicate()[0][-2000:] for p in procs if p.poll() is not None)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=60)


def wait_all(procs, timeout):
    """Each process's output; kills whatever is still running at the end."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outputs


def assert_cosine_history(metrics, epochs):
    """One history row per epoch, with the cosine schedule continued across
    a resume: the learning rate after epoch e is lr0 (1 + cos(pi e / E)) / 2."""
    import math

    import pytest

    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    lr0 = metrics["flags"]["learning_rate"]
    for h in metrics["history"]:
        expected = lr0 * (1 + math.cos(math.pi * h["epoch"] / epochs)) / 2
        assert h["learning_rate"] == pytest.approx(expected, rel=1e-4, abs=1e-9)


def start_tiny_run(tmp_path, epochs, extra, cmd=None, env=None):
    """``(args, output folder, process)`` of a tiny Fashion-MNIST run
    (256 fake training images) started in the background: ``cmd`` builds the
    command line (default :func:`trainer_cmd`), ``env`` its environment."""
    data_dir = write_fake_fashion_mnist(os.path.join(str(tmp_path), "data"), n_train=256, n_test=64)
    out = tmp_path / "run"
    args = TINY + ["--dataset=fashion_mnist", f"--data_dir={data_dir}", f"--epochs={epochs}", *extra,
                   f"--output_dir={out}"]
    proc = subprocess.Popen((cmd or trainer_cmd)(*args), cwd=REPO, env=env or trainer_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return args, out, proc
