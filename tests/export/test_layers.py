"""export.transform.layers registers every Keras layer the export writes into a model,
without importing TensorFlow: folded, quantization-aware and QAT-training
models load with plain keras.saving.load_model after `import export`
(which registers them without importing Keras itself)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.export.helpers import two_neuron_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NO_TF = textwrap.dedent(r"""
    import os, sys
    class _BlockTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, _BlockTensorFlow())
    import keras
    import export
    import export.transform.layers
    for name in ("ThresholdNeuron", "GridQuantize", "ActivationQuantizer", "QATConv1D", "QATConv2D", "QATConv3D",
                 "QATDepthwiseConv1D", "QATDepthwiseConv2D", "QATDense"):
        assert keras.saving.get_registered_object("s2nn_export>" + name) is getattr(export.transform.layers, name), name
    assert "tensorflow" not in sys.modules
    print("OK", keras.backend.backend())
""")

LOAD = textwrap.dedent(r"""
    import sys
    if sys.argv[1] == "export first":   # `import export` alone registers, when Keras comes later too
        import export  # noqa: F401
        assert "keras" not in sys.modules and "tensorflow" not in sys.modules  # import export stays cheap
        import keras
    else:
        import keras
        import export  # noqa: F401  (the one import a user needs)
    import numpy as np
    x = np.load(sys.argv[2])
    for path in sys.argv[3:]:
        model = keras.saving.load_model(path)
        np.save(path + ".npy", np.asarray(model(x, training=False)))
    print("OK")
""")


def test_registry_imports_without_tensorflow():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", NO_TF], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0 and "OK jax" in proc.stdout, proc.stderr[-3000:]


def _model():
    return two_neuron_model((8, 8, 2), seed=3)


def test_every_export_model_loads_after_importing_the_registry(tmp_path):
    from export.transform.fold import fold_batchnorm
    from export.transform.qat import calibrate, inference_model, quantization_aware_model

    model = _model()
    x = np.random.default_rng(0).normal(1.0, 1.0, (16, 8, 8, 2)).astype("float32")
    for _ in range(5):
        model(x, training=True)
    qat = quantization_aware_model(model)
    calibrate(qat, x)
    models = {"folded": fold_batchnorm(model), "qat_train": qat, "qat": inference_model(qat)}
    kinds = {name: {type(l).__name__ for l in m.layers} for name, m in models.items()}
    assert "ThresholdNeuron" in kinds["folded"] and "GridQuantize" in kinds["qat"]
    assert {"ActivationQuantizer", "QATConv2D", "QATDepthwiseConv2D", "QATDense"} <= kinds["qat_train"]
    paths = []
    for name, m in models.items():
        paths.append(str(tmp_path / f"{name}.keras"))
        m.save(paths[-1])
    np.save(tmp_path / "x.npy", x)
    for order in ("export first", "keras first"):
        proc = subprocess.run([sys.executable, "-c", LOAD, order, str(tmp_path / "x.npy")] + paths,
                              capture_output=True, text=True, cwd=REPO, timeout=600,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert proc.returncode == 0 and "OK" in proc.stdout, (order, proc.stderr[-3000:])
        for name, path in zip(models, paths):
            np.testing.assert_array_equal(np.load(path + ".npy"), np.asarray(models[name](x, training=False)),
                                          err_msg=f"{name} ({order})")
