"""The library on every installed Keras backend, from the default run.

Keras fixes its backend once per process, so the default ``pytest`` run (on
TensorFlow) starts real subprocesses:

* the surrogate, layer and learnable-parameter test files
  (``tests/s2nn_keras/test_surrogates.py``, ``test_layers.py``,
  ``test_learnable.py``: every NumPy reference, thresholds, 0, +-1e30,
  float16/bfloat16, each backend's jit) under ``KERAS_BACKEND=jax`` and
  ``KERAS_BACKEND=torch`` (each skipped when that framework is not
  installed; PyPI's torch wheels bring gigabytes of CUDA, so CI covers jax).
  ``S2NN_BACKEND_TESTS=all`` runs the whole ``tests/s2nn_keras`` instead; CI
  runs all of it on JAX anyway, in an environment without TensorFlow
  (``.ci/run``), so the default run keeps to the numerics;
  ``S2NN_<BACKEND>_PYTHON`` may name another interpreter for a backend (e.g.
  a venv with CPU torch);
* ``import s2nn_keras``, building, training (``model.fit``), firing rates and
  a ``.keras`` round trip with TensorFlow hidden from the import system, as
  on a machine where TensorFlow is not installed.
"""

import os
import subprocess
import textwrap

import keras
import pytest

from tests.backend_python import python_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_TESTS = ("tests/s2nn_keras" if os.environ.get("S2NN_BACKEND_TESTS") == "all"
                 else "tests/s2nn_keras/test_surrogates.py tests/s2nn_keras/test_layers.py "
                      "tests/s2nn_keras/test_learnable.py")
OTHER_BACKENDS = ("jax", "torch")


def _env(backend, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", **extra)
    env.pop("PYTEST_XDIST_WORKER", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _tail(result, chars=6000):
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-chars:]}\n--- stderr ---\n{result.stderr[-chars:]}"


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_library_tests_pass_on_backend(backend):
    python = python_for(backend)
    if python is None:
        pytest.skip(f"{backend} is not installed (set S2NN_{backend.upper()}_PYTHON to a venv that has it)")
    if keras.backend.backend() == backend:
        pytest.skip(f"this run already is the {backend} backend")
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", *LIBRARY_TESTS.split()],
        cwd=REPO, env=_env(backend), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{LIBRARY_TESTS} failed under KERAS_BACKEND={backend}:\n" + _tail(result)
    assert " passed" in result.stdout.splitlines()[-1], _tail(result)


# Runs in a fresh interpreter: TensorFlow is hidden before keras is imported.
# The path finder is wrapped (rather than a finder that raises put in front)
# so that TensorFlow looks exactly as if it were not installed:
# importlib.util.find_spec("tensorflow") is None (torch._dynamo probes it) and
# "import tensorflow" raises ModuleNotFoundError.
WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import importlib.machinery
    import importlib.util
    import sys

    class HideTensorFlow(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0].startswith("tensorflow"):  # tensorflow, tensorflow_datasets, ...
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [HideTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert HideTensorFlow in sys.meta_path
    assert importlib.util.find_spec("tensorflow") is None
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("hiding TensorFlow does not work")

    import os
    import numpy as np
    import keras
    import s2nn_keras
    from s2nn_keras import FiringRateCallback, S2Activation, firing_rates, spike
    from s2nn_keras.models import PreActResNet
    from s2nn_keras.regularizers import FiringRateRegularizer

    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((48, 12, 12, 1), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    model = PreActResNet([1, 1], (12, 12, 1), 3, width=4, activation="s2nn",
                         activity_regularizer=FiringRateRegularizer(l1=0.01))
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stem = np.array(model.get_layer("stem_conv").kernel.numpy())
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[FiringRateCallback(x[:16])])
    losses = history.history["loss"]
    assert all(np.isfinite(losses)), losses
    # The stem is only reached through spiking neurons: it moves only through the surrogate.
    assert not np.allclose(stem, model.get_layer("stem_conv").kernel.numpy())
    assert 0.0 <= history.history["firing_rate/mean"][-1] <= 1.0
    rates = firing_rates(model, x)
    assert set(rates) == {l.name for l in model.layers if isinstance(l, S2Activation)}

    path = os.path.join(sys.argv[1], "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x[:8], training=False)),
                                  keras.ops.convert_to_numpy(model(x[:8], training=False)))
    loaded_tf = [m for m in sys.modules if m.split(".")[0].startswith("tensorflow")]
    assert not loaded_tf, loaded_tf
    print("TRAINED_WITHOUT_TENSORFLOW", keras.backend.backend(), [round(float(l), 4) for l in losses])
    """
)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_import_build_train_save_with_tensorflow_blocked(backend, tmp_path):
    python = python_for(backend)
    if python is None:
        pytest.skip(f"{backend} is not installed (set S2NN_{backend.upper()}_PYTHON to a venv that has it)")
    result = subprocess.run([python, "-c", WITHOUT_TENSORFLOW, str(tmp_path)], cwd=tmp_path,
                            env=_env(backend), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, _tail(result)
    assert f"TRAINED_WITHOUT_TENSORFLOW {backend}" in result.stdout, _tail(result)
