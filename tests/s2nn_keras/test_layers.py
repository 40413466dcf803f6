"""S2Activation: config round trip, mixed precision, and .keras save/load in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from s2nn_keras import S2Activation, is_spiking_neuron
from s2nn_keras.models import PreActResNet
from tests.s2nn_keras.backend_utils import BACKEND, loss_and_grads, to_numpy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_come_from_the_surrogate():
    assert S2Activation().threshold == 1.0
    assert S2Activation("ste_b").threshold == 0.0 and S2Activation("ste_b").off_value == -1.0
    assert S2Activation("sibnn").threshold == 0.3
    layer = S2Activation("s2nn", threshold=0.5, alpha=0.4)
    assert layer.params == {"tau_s": 1.0, "alpha": 0.4}


def test_get_config_round_trip():
    layer = S2Activation("slayer", threshold=0.8, alpha1=2.0, beta1=0.5, name="n1")
    config = layer.get_config()
    assert config["surrogate"] == "slayer" and config["threshold"] == 0.8
    assert config["alpha1"] == 2.0 and config["beta1"] == 0.5
    clone = S2Activation.from_config(config)
    x = np.array([[0.0, 0.8, 2.0]], np.float32)
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(layer(x)))
    np.testing.assert_array_equal(to_numpy(layer(x)), [[0, 1, 1]])
    json.dumps(config)


def test_config_format_is_unchanged():
    """The exact keys old .keras files carry (they must keep loading)."""
    config = S2Activation("s2nn", threshold=0.5, alpha=0.4, name="n").get_config()
    assert {k: config[k] for k in ("name", "surrogate", "threshold", "tau_s", "alpha")} == {
        "name": "n", "surrogate": "s2nn", "threshold": 0.5, "tau_s": 1.0, "alpha": 0.4}
    assert S2Activation.from_config(config).params == {"tau_s": 1.0, "alpha": 0.4}


def test_is_spiking_neuron():
    assert is_spiking_neuron(S2Activation("ste_b"))
    assert not is_spiking_neuron(keras.layers.ReLU())

    class Folded(keras.layers.Layer):
        is_spiking_neuron = True

    assert is_spiking_neuron(Folded())


def test_invalid_layer_arguments():
    with pytest.raises(ValueError, match="valid names"):
        S2Activation("relu6")
    with pytest.raises(ValueError, match="valid parameters: alpha, tau_s"):
        S2Activation("s2nn", rho=0.1)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        S2Activation("s2nn", threshold=-0.5)


def test_layer_trains_with_fit():
    keras.utils.set_random_seed(0)
    x = np.random.rand(64, 8).astype("float32")
    y = (x.sum(axis=1) > 4).astype("int64")
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16), keras.layers.BatchNormalization(),
        S2Activation("s2nn"), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    # The first Dense only changes through the surrogate gradient.
    assert not np.allclose(before[0], model.trainable_weights[0].numpy())


def test_mixed_float16_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = PreActResNet([1], (8, 8, 1), 3, width=4, activation="s2nn")
        neuron = model.get_layer("stage1_block1_act1")
        assert neuron.compute_dtype == "float16"
        x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
        loss, out_dtype, grads = loss_and_grads(model, x)
        assert out_dtype == "float32" and np.isfinite(loss)
        assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
        assert np.any(grads[0] != 0), "no surrogate gradient reached the stem"
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16"])
def test_bfloat16_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = PreActResNet([1], (8, 8, 1), 3, width=4, activation="s2nn")
        assert model.get_layer("final_act").compute_dtype == "bfloat16"
        x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
        loss, out_dtype, grads = loss_and_grads(model, x)
        assert out_dtype == "float32"  # the logits layer is float32
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)
        assert np.any(grads[0] != 0)
    finally:
        keras.config.set_dtype_policy(previous)


def test_saved_model_loads_in_fresh_process_without_custom_objects(tmp_path):
    """A real subprocess: ``import s2nn_keras`` then plain ``load_model(path)``."""
    keras.utils.set_random_seed(1)
    model = PreActResNet([1, 1], (12, 12, 1), 4, width=4, activation="sibnn", rho=0.5)
    x = np.random.rand(3, 12, 12, 1).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", to_numpy(model(x, training=False)))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import s2nn_keras  # registers the layers; no custom_objects needed
        from tests.s2nn_keras.backend_utils import loss_and_grads, to_numpy
        model = keras.saving.load_model({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.testing.assert_array_equal(to_numpy(model(x, training=False)), np.load({str(tmp_path / 'y.npy')!r}))
        layer = model.get_layer("stage1_block1_act1")
        assert type(layer).__name__ == "S2Activation" and layer.surrogate == "sibnn" and layer.params["rho"] == 0.5
        _, _, grads = loss_and_grads(model, x)
        stem = grads[0]
        assert np.all(np.isfinite(stem)) and np.any(stem != 0), "no surrogate gradient reached the stem"
        print("LOADED_OK", keras.backend.backend())
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=BACKEND)
    # Run outside the repo so nothing but the saved file and the installed package is used.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"LOADED_OK {BACKEND}" in result.stdout


def test_file_saved_by_the_tensorflow_only_release_still_loads():
    """``data/preact_s2nn_v0.1.0.keras`` was trained and saved by s2nn_keras at
    commit 963156f (TensorFlow-only surrogates, before keras.ops): a
    PreActResNet([1, 1]) with s2nn neurons (threshold 0.8, alpha 0.3) and a
    FiringRateRegularizer. It must load on every backend, compiled, with the
    same neurons and logits."""
    from s2nn_keras.regularizers import FiringRateRegularizer

    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    model = keras.saving.load_model(os.path.join(data, "preact_s2nn_v0.1.0.keras"))
    ref = np.load(os.path.join(data, "preact_s2nn_v0.1.0_outputs.npz"))
    neurons = [l for l in model.layers if is_spiking_neuron(l)]
    assert len(neurons) == 5
    for n in neurons:
        assert (n.surrogate, n.threshold, n.params) == ("s2nn", 0.8, {"tau_s": 1.0, "alpha": 0.3})
        assert isinstance(n.activity_regularizer, FiringRateRegularizer)
    np.testing.assert_allclose(to_numpy(model(ref["x"], training=False)), ref["logits"], rtol=1e-5, atol=1e-5)
    assert model.optimizer is not None  # compiled, optimizer restored
