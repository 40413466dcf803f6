"""FiringRateRegularizer: values on known spikes, validation, serialization,
and that training with it lowers the firing rate."""

import keras
import numpy as np
import pytest

from s2nn_keras import S2Activation, firing_rates
from s2nn_keras.models import PreActResNet
from s2nn_keras.regularizers import FiringRateRegularizer

SPIKES = np.array([[1, 0, 0, 1], [0, 0, 0, 1]], np.float32)  # r_i = 0.5, 0.25


def test_l1_value_is_rate_summed_over_batch():
    assert float(FiringRateRegularizer(l1=0.5)(SPIKES)) == pytest.approx(0.5 * (0.5 + 0.25))


def test_target_rate_value():
    reg = FiringRateRegularizer(target_rate=0.1, strength=2.0)
    assert float(reg(SPIKES)) == pytest.approx(2.0 * ((0.5 - 0.1) ** 2 + (0.25 - 0.1) ** 2))
    both = FiringRateRegularizer(l1=0.5, target_rate=0.1, strength=2.0)
    assert float(both(SPIKES)) == pytest.approx(0.375 + 2.0 * (0.16 + 0.0225))


def test_signed_spikes_count_plus_one_only():
    signed = 2.0 * SPIKES - 1.0  # ste_b outputs
    assert float(FiringRateRegularizer(l1=0.5)(signed)) == pytest.approx(0.375)
    assert float(FiringRateRegularizer(l1=1.0)(-np.ones((2, 3), np.float32))) == 0.0
    assert float(FiringRateRegularizer(l1=1.0)(np.ones((2, 3), np.float32))) == pytest.approx(2.0)


def test_layer_loss_is_divided_by_batch_size():
    layer = S2Activation("ste_s", threshold=0.5, activity_regularizer=FiringRateRegularizer(l1=0.5))
    layer(SPIKES)
    assert float(layer.losses[0]) == pytest.approx(0.5 * 0.375)  # l1 * batch firing rate


@pytest.mark.parametrize("kwargs, match", [
    ({"l1": -1.0}, "l1"),
    ({"l1": 0.0}, "penalises nothing"),
    ({"target_rate": 1.5}, "target_rate"),
    ({"target_rate": 0.1, "strength": -1.0}, "strength"),
    ({"l1": float("nan")}, "finite"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FiringRateRegularizer(**kwargs)


def test_saved_model_round_trip(tmp_path):
    reg = FiringRateRegularizer(l1=0.2, target_rate=0.05, strength=3.0)
    model = PreActResNet([1], (8, 8, 1), 3, width=4, activity_regularizer=reg)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    got = loaded.get_layer("final_act").activity_regularizer
    assert isinstance(got, FiringRateRegularizer)
    assert got.get_config() == {"l1": 0.2, "target_rate": 0.05, "strength": 3.0}


def _train(reg, x, y):
    keras.utils.set_random_seed(1)
    inp = keras.Input((x.shape[1],))
    h = keras.layers.Dense(32, name="dense")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = S2Activation("s2nn", name="neuron", activity_regularizer=reg)(h)
    out = keras.layers.Dense(2, name="logits")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return firing_rates(model, x)["neuron"], model.evaluate(x, y, verbose=0)[1]


def test_training_with_regularizer_lowers_firing_rate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    rate_free, acc_free = _train(None, x, y)
    rate_l1, acc_l1 = _train(FiringRateRegularizer(l1=1.0), x, y)
    rate_target, _ = _train(FiringRateRegularizer(target_rate=0.02, strength=10.0), x, y)
    assert rate_l1 < 0.5 * rate_free
    assert rate_target < 0.5 * rate_free
    assert acc_l1 > 0.8  # still learns the task
