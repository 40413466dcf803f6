"""Firing rates R(l) (Eq. B.2), the on-device spike counter and the logging
callback; backend-neutral (run under KERAS_BACKEND=tensorflow and jax)."""

import keras
import numpy as np
import pytest

from s2nn_keras import FiringRateCallback, S2Activation, firing_rates
from s2nn_keras.firing import SpikeCounter, iter_batches, neuron_outputs
from s2nn_keras.graph import LayerGraph
from s2nn_keras.models import PreActResNet


def _tiny(surrogate="s2nn", threshold=None):
    inputs = keras.Input((4,), name="u")
    s1 = S2Activation(surrogate, threshold=threshold, name="n1")(inputs)
    s2 = S2Activation(surrogate, threshold=threshold, name="n2")(keras.layers.Lambda(lambda t: -t)(inputs))
    out = keras.layers.Concatenate()([s1, s2])
    return keras.Model(inputs, out)


X = np.array([[1.0, 2.0, 0.0, 0.999], [5, 5, 5, 5], [-1, -2, -3, -1]], np.float32)


def test_rates_on_known_spikes():
    # Threshold 1: row 0 fires 2 of 4 in n1 and 0 of 4 in n2; row 1 fires 4/4 and 0/4;
    # row 2 fires 0/4 in n1 and 4/4 in n2.
    rates = firing_rates(_tiny(), X)
    assert list(rates) == ["n1", "n2"]
    assert rates["n1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-15)
    assert rates["n2"] == pytest.approx((0 + 0 + 1.0) / 3, abs=1e-15)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        s = slice(i * self.size, (i + 1) * self.size)
        return self.x[s], self.y[s]


def test_data_forms_agree_and_batches_are_weighted_by_size():
    x = np.array([[1.0, -1.0, 0.0, -0.1]] * 5, np.float32)
    y = np.zeros(5)
    model = _tiny("ste_b")
    want = {"n1": 0.5, "n2": 0.75}  # u >= 0: 1.0 and 0.0; -u >= 0: -1, 0, -0.1 -> 3 of 4
    forms = {
        "array": x,
        "array_batch_2": None,
        "list_of_tuples": [(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:], y[4:])],  # batches 2, 2, 1
        "generator": ((x[i:i + 2], y[i:i + 2], y[i:i + 2]) for i in range(0, 5, 2)),
        "pydataset": _Batches(x, y, 2),
    }
    for name, data in forms.items():
        if name == "array_batch_2":
            got = firing_rates(model, x, batch_size=2)
        else:
            got = firing_rates(model, data)
        assert got == pytest.approx(want, abs=1e-15), name


def test_tf_data_when_tensorflow_is_present():
    tf = pytest.importorskip("tensorflow")
    x = np.array([[1.0, -1.0, 0.0, -0.1]] * 5, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(5))).batch(2)
    assert firing_rates(_tiny("ste_b"), ds) == pytest.approx({"n1": 0.5, "n2": 0.75}, abs=1e-15)
    assert firing_rates(_tiny("ste_b"), ds, max_batches=1) == pytest.approx({"n1": 0.5, "n2": 0.75})


def test_relu_model_has_no_rates_and_empty_data_is_an_error():
    relu = PreActResNet([1], (8, 8, 1), 3, width=4, activation="relu")
    assert firing_rates(relu, np.zeros((2, 8, 8, 1), np.float32)) == {}
    with pytest.raises(ValueError, match="empty"):
        firing_rates(_tiny(), np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="empty"):
        firing_rates(relu, [])
    with pytest.raises(ValueError, match="batch_size"):
        firing_rates(_tiny(), X, batch_size=0)
    with pytest.raises(ValueError, match="0-d"):
        list(iter_batches(np.float32(1.0)))


def test_shared_neuron_and_sequential():
    n = S2Activation("ste_s", threshold=0.5, name="shared_n")
    inp = keras.Input((2,))
    a = n(inp)
    b = n(keras.layers.Lambda(lambda t: t - 1.0)(inp))  # second call of the same neuron
    model = keras.Model(inp, keras.layers.Concatenate()([a, b]))
    x = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    rates = firing_rates(model, x)
    assert rates == pytest.approx({"shared_n": 0.5, "shared_n#2": 0.25})

    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d"),
                            S2Activation("ste_s", threshold=0.5, name="act")])
    seq.get_layer("d").set_weights([np.eye(4, dtype=np.float32), np.zeros(4, np.float32)])
    assert firing_rates(seq, X) == pytest.approx({"act": (3 + 4 + 0) / 12}, abs=1e-15)


def test_counter_outputs_per_example_counts_and_nonbinary():
    inp = keras.Input((3, 2))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 1.0, name="ident")(inp))
    graph = LayerGraph(model)
    counter = SpikeCounter(graph, [graph.node("ident").output(0)], count_nonbinary=True)
    # only [batch] numbers per measured tensor leave the device
    assert [tuple(o.shape) for o in counter.probe.outputs] == [(None, 2)]  # fired, nonbinary
    x = np.array([[[1, 0], [0.5, -1], [0, 0]], [[2, 2], [1, 1], [-1, 0]]], np.float32)
    counts = counter.count(x, batch_size=1)
    assert counts.num_examples == 2
    assert counts.fired.tolist() == [6.0] and counts.total.tolist() == [12.0]
    assert counts.nonbinary.tolist() == [3.0]  # 0.5, 2, 2
    assert counts.rates.tolist() == [0.5]


def test_callback_logs_rates_during_fit_and_builds_the_probe_once():
    keras.utils.set_random_seed(0)
    model = PreActResNet([1], (8, 8, 1), 3, width=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.rand(16, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, 16)
    callback = FiringRateCallback(x[:8])
    probes = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            probes.append(callback._counter.counter.probe)

    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback, Spy()])
    assert probes[0] is probes[1]
    keys = [k for k in history.history if k.startswith("firing_rate/")]
    assert "firing_rate/final_act" in keys and "firing_rate/mean" in keys
    assert len(history.history["firing_rate/final_act"]) == 2
    direct = firing_rates(model, x[:8])
    assert list(direct) == list(neuron_outputs(LayerGraph(model)))
    # the callback saw the trained weights of the last epoch
    assert history.history["firing_rate/final_act"][-1] == pytest.approx(direct["final_act"], abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in direct.values())
