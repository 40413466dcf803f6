"""Firing rates R(l) (Eq. B.2) and the logging callback."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from s2nn_keras import FiringRateCallback, S2Activation, firing_rates
from s2nn_keras.models import PreActResNet


def _tiny(surrogate="s2nn", threshold=None):
    inputs = keras.Input((4,), name="u")
    s1 = S2Activation(surrogate, threshold=threshold, name="n1")(inputs)
    s2 = S2Activation(surrogate, threshold=threshold, name="n2")(keras.layers.Lambda(lambda t: -t)(inputs))
    out = keras.layers.Concatenate()([s1, s2])
    return keras.Model(inputs, out)


def test_rates_on_known_spikes():
    # Threshold 1: row 0 fires 2 of 4 in n1 and 0 of 4 in n2; row 1 fires 4/4 and 0/4;
    # row 2 fires 0/4 in n1 and 4/4 in n2.
    x = np.array([[1.0, 2.0, 0.0, 0.999], [5, 5, 5, 5], [-1, -2, -3, -1]], np.float32)
    rates = firing_rates(_tiny(), x)
    assert list(rates) == ["n1", "n2"]
    assert rates["n1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert rates["n2"] == pytest.approx((0 + 0 + 1.0) / 3)


def test_sign_neuron_counts_plus_one_as_spike_and_batches_weighted_by_size():
    x = np.array([[1.0, -1.0, 0.0, -0.1]] * 5, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(5))).batch(2)  # batches 2, 2, 1
    rates = firing_rates(_tiny("ste_b"), ds)
    assert rates["n1"] == pytest.approx(0.5)   # u >= 0: 1.0 and 0.0
    assert rates["n2"] == pytest.approx(0.75)  # -u >= 0: -1, 0, -0.1 -> 3 of 4


def test_relu_model_has_no_rates_and_empty_data_is_an_error():
    relu = PreActResNet([1], (8, 8, 1), 3, width=4, activation="relu")
    assert firing_rates(relu, np.zeros((2, 8, 8, 1), np.float32)) == {}
    with pytest.raises(ValueError, match="empty"):
        firing_rates(_tiny(), np.zeros((0, 4), np.float32))


def test_callback_logs_rates_during_fit():
    keras.utils.set_random_seed(0)
    model = PreActResNet([1], (8, 8, 1), 3, width=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(16, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, 16)
    callback = FiringRateCallback(x[:8])
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    keys = [k for k in history.history if k.startswith("firing_rate/")]
    assert "firing_rate/final_act" in keys and "firing_rate/mean" in keys
    assert len(history.history["firing_rate/final_act"]) == 2
    direct = firing_rates(model, x[:8])
    assert history.history["firing_rate/final_act"][-1] == pytest.approx(direct["final_act"])
    assert all(0.0 <= v <= 1.0 for v in direct.values())
