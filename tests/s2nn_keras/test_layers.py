"""S2Activation: config round trip, mixed precision, and .keras save/load in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from s2nn_keras import S2Activation
from s2nn_keras.models import PreActResNet

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
    x = tf.constant([[0.0, 0.8, 2.0]])
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
    json.dumps(config)


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
    before = [w.numpy().copy() for w in model.trainable_weights]
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
        x = tf.random.uniform((4, 8, 8, 1))
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.square(logits))
        grads = tape.gradient(loss, model.trainable_weights)
        assert logits.dtype == tf.float32
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
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
    np.save(tmp_path / "y.npy", model(x, training=False).numpy())
    script = textwrap.dedent(
        f"""
        import numpy as np, keras, tensorflow as tf
        import s2nn_keras  # registers the layers; no custom_objects needed
        model = keras.saving.load_model({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.testing.assert_array_equal(model(x, training=False).numpy(), np.load({str(tmp_path / 'y.npy')!r}))
        layer = model.get_layer("stage1_block1_act1")
        assert type(layer).__name__ == "S2Activation" and layer.surrogate == "sibnn" and layer.params["rho"] == 0.5
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(xt, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        stem = grads[0].numpy()
        assert np.all(np.isfinite(stem)) and np.any(stem != 0), "no surrogate gradient reached the stem"
        print("LOADED_OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    # Run outside the repo so nothing but the saved file and the installed package is used.
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED_OK" in result.stdout
