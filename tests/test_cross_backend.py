"""``.keras`` files cross backends (issue 9, item 2), in real subprocesses.

A small PreActResNet is trained (``model.fit``) and saved under
``KERAS_BACKEND=jax`` (and ``torch`` where installed), then loaded under
TensorFlow, which must give

* the same predictions, logits within 1e-4 of the saving backend's;
* the same spike maps in every neuron layer except float ties: positions
  where the membrane potential sits at the threshold to within ``TIE_TOL``
  in either backend (counted and bounded);
* a BN-folded model and a float32 TFLite model (public ``export`` API) with
  the same results as a TensorFlow-built model holding the same weights.

Each backend's interpreter is ``sys.executable`` unless ``S2NN_<BACKEND>_PYTHON``
names another one (e.g. a venv with CPU torch and no TensorFlow); a backend
that interpreter cannot import is skipped.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.backend_python import python_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIE_TOL = 1e-4         # |u - u_th| below which two backends may disagree on a spike
MAX_TIE_FRACTION = 1e-3  # of all spike-map elements
LOGIT_TOL = 1e-4

SAVE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import keras
    import s2nn_keras
    from s2nn_keras.models import PreActResNet

    out = sys.argv[1]
    kw = {"learnable": ("threshold", "tau_s", "alpha")} if sys.argv[2:] == ["learnable"] else {}
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.random((64, 16, 16, 1), dtype=np.float32)
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype("int64") + 2 * (x[:, :, :8].mean(axis=(1, 2, 3)) > 0.5)
    model = PreActResNet([1, 1], (16, 16, 1), 4, width=8, activation="s2nn", dropout=0.1, **kw)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    model.save(os.path.join(out, "model.keras"))

    neurons = [l for l in model.layers if s2nn_keras.is_spiking_neuron(l)]
    probe = keras.Model(model.input, [model.output] + [n.output for n in neurons] + [n.input for n in neurons])
    x_test = np.random.default_rng(4).random((32, 16, 16, 1), dtype=np.float32)
    outs = [keras.ops.convert_to_numpy(t) for t in probe(x_test, training=False)]
    k = len(neurons)
    np.savez(os.path.join(out, "reference.npz"), x=x_test, logits=outs[0],
             **{f"spikes_{n.name}": s for n, s in zip(neurons, outs[1:1 + k])},
             **{f"u_{n.name}": u for n, u in zip(neurons, outs[1 + k:])})
    print("SAVED", keras.backend.backend())
    """
)

LOAD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import keras
    import s2nn_keras
    from s2nn_keras.models import PreActResNet
    import export  # public names only: fold_batchnorm, to_tflite
    from ai_edge_litert.interpreter import Interpreter

    out, tie_tol, compile_ = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "compile"
    kw = {"learnable": ("threshold", "tau_s", "alpha")} if sys.argv[4:] == ["learnable"] else {}
    assert keras.backend.backend() == "tensorflow"
    ref = np.load(os.path.join(out, "reference.npz"))
    x = ref["x"]
    loaded = keras.saving.load_model(os.path.join(out, "model.keras"), compile=compile_)
    neurons = [l for l in loaded.layers if s2nn_keras.is_spiking_neuron(l)]
    probe = keras.Model(loaded.input, [loaded.output] + [n.output for n in neurons] + [n.input for n in neurons])
    outs = [keras.ops.convert_to_numpy(t) for t in probe(x, training=False)]
    k = len(neurons)
    result = {"logits_max_abs_diff": float(np.max(np.abs(outs[0] - ref["logits"]))),
              "predictions_equal": bool(np.array_equal(outs[0].argmax(1), ref["logits"].argmax(1))),
              "layers": {}}
    for n, s, u in zip(neurons, outs[1:1 + k], outs[1 + k:]):
        s_ref, u_ref = ref[f"spikes_{n.name}"], ref[f"u_{n.name}"]
        differ = s != s_ref
        th = np.asarray(keras.ops.convert_to_numpy(n.threshold))  # a float or learned per channel
        tie = (np.abs(u_ref - th) <= tie_tol) | (np.abs(u - th) <= tie_tol)
        result["layers"][n.name] = {"elements": int(s.size), "mismatches": int(differ.sum()),
                                    "unexplained": int((differ & ~tie).sum()),
                                    "u_max_abs_diff": float(np.max(np.abs(u - u_ref)))}

    # The same weights in a model built under TensorFlow.
    fresh = PreActResNet([1, 1], (16, 16, 1), 4, width=8, activation="s2nn", dropout=0.1, **kw)
    if kw:
        result["learned_thresholds_vary"] = all(len(np.unique(keras.ops.convert_to_numpy(n.threshold))) > 1
                                                for n in neurons)
    fresh.set_weights(loaded.get_weights())
    logits_fresh = keras.ops.convert_to_numpy(fresh(x, training=False))
    result["fresh_vs_loaded_logits_max_abs_diff"] = float(np.max(np.abs(logits_fresh - outs[0])))

    def tflite_logits(flatbuffer):
        interp = Interpreter(model_content=flatbuffer)
        interp.allocate_tensors()
        i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
        rows = []
        for image in x:
            interp.set_tensor(i, image[None])
            interp.invoke()
            rows.append(interp.get_tensor(o)[0].copy())
        return np.stack(rows)

    folded = {}
    lite = {}
    for name, model in (("loaded", loaded), ("fresh", fresh)):
        f = export.fold_batchnorm(model)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in f.layers)
        folded[name] = keras.ops.convert_to_numpy(f(x, training=False))
        lite[name] = tflite_logits(export.to_tflite(f, "float32"))
    result["folded_loaded_vs_fresh_max_abs_diff"] = float(np.max(np.abs(folded["loaded"] - folded["fresh"])))
    result["tflite_loaded_vs_fresh_max_abs_diff"] = float(np.max(np.abs(lite["loaded"] - lite["fresh"])))
    result["folded_vs_keras_max_abs_diff"] = float(np.max(np.abs(folded["loaded"] - outs[0])))
    result["tflite_vs_keras_max_abs_diff"] = float(np.max(np.abs(lite["loaded"] - outs[0])))
    result["tflite_predictions_equal"] = bool(np.array_equal(lite["loaded"].argmax(1), outs[0].argmax(1)))
    with open(os.path.join(out, "result.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    print("LOADED")
    """
)


def _run(python, backend, script, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    result = subprocess.run([python, "-c", script, *args], cwd=args[0], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"KERAS_BACKEND={backend} {python} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout


@pytest.mark.parametrize("backend, neurons", [
    ("jax", "fixed"), ("torch", "fixed"),
    pytest.param("jax", "learnable", marks=pytest.mark.slow),  # learned per-channel thresholds, ~40 s
])
def test_saved_under_backend_loads_folds_and_exports_under_tensorflow(backend, neurons, tmp_path):
    python = python_for(backend)
    if python is None:
        pytest.skip(f"{backend} is not installed (set S2NN_{backend.upper()}_PYTHON to a venv that has it)")
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("the loading side needs TensorFlow")
    assert f"SAVED {backend}" in _run(python, backend, SAVE, str(tmp_path), neurons)
    # Keras 3.15 saves a torch-compiled model's optimizer as its torch subclass
    # (keras.src.backend.torch.optimizers.torch_adam.Adam), which TensorFlow
    # cannot import: such files load with compile=False (as export does).
    compile_ = "nocompile" if backend == "torch" else "compile"
    assert "LOADED" in _run(sys.executable, "tensorflow", LOAD, str(tmp_path), str(TIE_TOL), compile_, neurons)
    result = json.loads((tmp_path / "result.json").read_text())
    summary = json.dumps(result, indent=1)
    print(f"{backend} -> tensorflow:", summary)

    assert result["predictions_equal"], summary
    assert result["logits_max_abs_diff"] <= LOGIT_TOL, summary
    elements = sum(l["elements"] for l in result["layers"].values())
    ties = sum(l["mismatches"] for l in result["layers"].values())
    assert all(l["unexplained"] == 0 for l in result["layers"].values()), summary
    assert ties <= MAX_TIE_FRACTION * elements, summary
    assert all(l["u_max_abs_diff"] <= 1e-4 for l in result["layers"].values()), summary

    # A file from another backend is just weights: TF-built model, folded model
    # and TFLite flatbuffer all agree with the loaded one.
    assert result["fresh_vs_loaded_logits_max_abs_diff"] == 0.0, summary
    assert result["folded_loaded_vs_fresh_max_abs_diff"] == 0.0, summary
    assert result["tflite_loaded_vs_fresh_max_abs_diff"] == 0.0, summary
    assert result["tflite_predictions_equal"], summary
    assert result["folded_vs_keras_max_abs_diff"] <= LOGIT_TOL, summary
    assert result["tflite_vs_keras_max_abs_diff"] <= LOGIT_TOL, summary
    if neurons == "learnable":  # learned per-channel thresholds crossed the backends
        assert result["learned_thresholds_vary"], summary
