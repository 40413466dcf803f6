"""Eqs. B.2-B.4 (s2nn_keras.energy) on tiny models whose spikes are known in
closed form; backend-neutral (run under tensorflow and jax)."""

import keras
import numpy as np
import pytest

from s2nn_keras import S2Activation
from s2nn_keras import energy
from s2nn_keras.models import PreActResNet

L = keras.layers


def _known_spike_model(surrogate="ste_s"):
    """x (4x4x1) -> 1x1 conv with kernel [+1, -1] -> neuron (u_th 0.5):
    channel 0 fires exactly where the pixel is 1, channel 1 never does.
    The spikes feed a 3x3 conv and (through GAP) a Dense."""
    inp = keras.Input((4, 4, 1), name="image")
    conv1 = L.Conv2D(2, 1, use_bias=False, name="conv1")
    u = conv1(inp)
    s = S2Activation(surrogate, threshold=0.5, name="neuron")(u)
    c2 = L.Conv2D(3, 3, padding="same", use_bias=False, name="conv2")(s)
    pooled = L.GlobalAveragePooling2D(name="gap")(s)
    logits = L.Dense(2, name="logits")(L.Dropout(0.5, name="drop")(pooled))
    model = keras.Model(inp, [logits, c2])
    conv1.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    return model


def _known_data():
    x = np.zeros((2, 4, 4, 1), np.float32)
    x[0].flat[[0, 5, 10, 15]] = 1.0          # 4 of 16 pixels
    x[1].flat[[1, 2, 3, 4, 6, 7, 8, 9]] = 1.0  # 8 of 16 pixels
    return x


# R = (4 + 8) spikes / (2 examples * 16 pixels * 2 channels)
KNOWN_RATE = 12 / 64
FLOPS = {"conv1": 1 * 16 * 1 * 2, "conv2": 9 * 16 * 2 * 3, "logits": 2 * 2}


def test_b2_to_b4_default_convention_known_spikes():
    rep = energy.energy_report(_known_spike_model(), _known_data(), convention="default")
    rows = {r["name"]: r for r in rep["layers"]}
    assert {n: r["flops"] for n, r in rows.items()} == FLOPS
    assert rows["conv1"]["input_kind"] == "image" and rows["conv1"]["firing_rate"] is None
    assert rows["conv2"]["input_kind"] == "spikes"
    assert rows["conv2"]["firing_rate"] == pytest.approx(KNOWN_RATE, abs=1e-12)
    assert rows["logits"]["input_kind"] == "pooled_spikes"
    assert rows["logits"]["firing_rate"] == pytest.approx(KNOWN_RATE, abs=1e-12)
    assert "gap" in rows["logits"]["input_source"] and "neuron" in rows["logits"]["input_source"]
    assert rep["neuron_firing_rates"] == {"neuron": pytest.approx(KNOWN_RATE)}
    e_full = 4.6 * (32 + 864 + 4)                       # B.3
    e_method = 4.6 * 32 + 0.9 * 864 * KNOWN_RATE + 4.6 * 4  # image and pooled: MAC at rate 1
    assert rep["total_flops"] == 900
    assert rep["e_full_pj"] == pytest.approx(e_full, rel=1e-12)
    assert rep["e_method_pj"] == pytest.approx(e_method, rel=1e-12)
    assert rep["efficiency"] == pytest.approx(e_full / e_method, rel=1e-12)
    assert rows["conv2"]["energy_pj"] == pytest.approx(0.9 * 864 * KNOWN_RATE)
    assert sum(r["energy_share"] for r in rep["layers"]) == pytest.approx(1.0)
    assert rep["convention"] == "default" and "full rate" in rep["convention_description"]
    assert any("conv1" in n and "MAC" in n for n in rep["notes"])


def test_b4_paper_convention_known_spikes():
    rep = energy.energy_report(_known_spike_model(), _known_data(), convention="paper")
    e_method = 0.9 * (32 * 1.0 + 864 * KNOWN_RATE + 4 * KNOWN_RATE)  # Eq. B.4 literally
    assert rep["e_method_pj"] == pytest.approx(e_method, rel=1e-12)
    assert rep["efficiency"] == pytest.approx(4.6 * 900 / e_method, rel=1e-12)
    assert rep["convention"] == "paper"


def test_signed_spikes_ste_b():
    rep_d = energy.energy_report(_known_spike_model("ste_b"), _known_data(), convention="default")
    rep_p = energy.energy_report(_known_spike_model("ste_b"), _known_data(), convention="paper")
    rows = {r["name"]: r for r in rep_d["layers"]}
    assert rows["conv2"]["input_kind"] == "signed_spikes"
    assert rows["conv2"]["firing_rate"] == pytest.approx(KNOWN_RATE)  # the +1 outputs
    assert rows["conv2"]["energy_pj"] == pytest.approx(0.9 * 864)  # a -1 is not silent
    rows_p = {r["name"]: r for r in rep_p["layers"]}
    assert rows_p["conv2"]["energy_pj"] == pytest.approx(0.9 * 864 * KNOWN_RATE)
    assert rows_p["logits"]["energy_pj"] == pytest.approx(0.9 * 4 * KNOWN_RATE)


def test_relu_model_is_full_precision_in_both_conventions():
    model = PreActResNet([1], (8, 8, 1), 3, activation="relu", width=4)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    for conv in ("default", "paper"):
        rep = energy.energy_report(model, x, convention=conv)
        assert rep["efficiency"] == 1.0 and rep["neuron_firing_rates"] == {}
        assert all(r["op"] == "MAC" and r["charged_rate"] == 1.0 for r in rep["layers"])


class _Batches(keras.utils.PyDataset):
    def __init__(self, x):
        super().__init__()
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i:i + 1], np.zeros(1)


def test_data_forms_give_the_same_report():
    model, x = _known_spike_model(), _known_data()
    ref = energy.energy_report(model, x)["e_method_pj"]
    assert energy.energy_report(model, x, batch_size=1)["e_method_pj"] == pytest.approx(ref, rel=1e-15)
    assert energy.energy_report(model, _Batches(x))["e_method_pj"] == pytest.approx(ref, rel=1e-15)
    gen = ((x[i:i + 1], 0) for i in range(2))  # one-shot generator
    rep = energy.energy_report(model, gen)
    assert rep["e_method_pj"] == pytest.approx(ref, rel=1e-15) and rep["num_examples"] == 2
    assert rep["neuron_firing_rates"] == {"neuron": pytest.approx(KNOWN_RATE)}
    with pytest.raises(ValueError, match="empty"):
        energy.energy_report(model, x[:0])


def test_tf_data():
    tf = pytest.importorskip("tensorflow")
    model, x = _known_spike_model(), _known_data()
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(2))).batch(1)
    assert energy.energy_report(model, ds)["e_method_pj"] == pytest.approx(
        energy.energy_report(model, x)["e_method_pj"], rel=1e-15)


def test_presets_and_user_values():
    model, x = _known_spike_model(), _known_data()
    rep = energy.energy_report(model, x, preset="45nm_int8")
    assert (rep["e_mac_pj"], rep["e_ac_pj"]) == (0.23, 0.03)
    assert "Horowitz" in rep["preset_description"]
    assert rep["e_full_pj"] == pytest.approx(0.23 * 900)
    rep = energy.energy_report(model, x, e_mac_pj=2.0, e_ac_pj=0.5)
    assert rep["preset"] == "custom" and rep["e_full_pj"] == pytest.approx(1800.0)
    assert energy.PRESETS["45nm_fp32"][:2] == (4.6, 0.9)
    assert energy.PRESETS["45nm_fp32"][0] / energy.PRESETS["45nm_fp32"][1] == pytest.approx(5.11, abs=5e-3)
    with pytest.raises(ValueError, match="unknown preset"):
        energy.energy_report(model, x, preset="7nm")
    with pytest.raises(ValueError, match="both"):
        energy.energy_report(model, x, e_mac_pj=1.0)
    with pytest.raises(ValueError, match="positive"):
        energy.energy_report(model, x, e_mac_pj=-1.0, e_ac_pj=0.1)
    with pytest.raises(ValueError, match="unknown convention"):
        energy.energy_report(model, x, convention="lee2020")


def test_max_pool_and_subsample_of_spikes_measured_on_pooled_map():
    inp = keras.Input((4, 4, 1))
    conv1 = L.Conv2D(1, 1, use_bias=False, name="c1")
    s = S2Activation("ste_s", threshold=0.5, name="n")(conv1(inp))
    mp = L.MaxPooling2D(2, name="mp")(s)
    sub = L.AveragePooling2D(pool_size=1, strides=2, name="sub")(s)
    out = L.Concatenate()([L.Conv2D(1, 1, name="after_max")(mp), L.Conv2D(1, 1, name="after_sub")(sub)])
    model = keras.Model(inp, out)
    conv1.set_weights([np.ones((1, 1, 1, 1), np.float32)])
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 0, 0] = 1.0  # one spike at (0, 0): in the first 2x2 max window and on the stride-2 grid
    rows = {r["name"]: r for r in energy.energy_report(model, x)["layers"]}
    assert rows["after_max"]["input_kind"] == "spikes" and rows["after_max"]["firing_rate"] == 0.25
    assert rows["after_sub"]["input_kind"] == "spikes" and rows["after_sub"]["firing_rate"] == 0.25


def test_nested_model_and_shared_neuron():
    """Nested models are expanded (their convs counted and fed correctly);
    a neuron called twice gives two rates."""
    inner_in = keras.Input((4, 4, 2))
    inner = keras.Model(inner_in, L.Conv2D(2, 1, use_bias=False, name="inner_conv")(inner_in), name="block")
    inp = keras.Input((4, 4, 1))
    conv1 = L.Conv2D(2, 1, use_bias=False, name="conv1")
    neuron = S2Activation("ste_s", threshold=0.5, name="n")
    s1 = neuron(conv1(inp))
    s2 = neuron(inner(s1))
    model = keras.Model(inp, L.Dense(2, name="logits")(L.Flatten()(s2)))
    conv1.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    inner.get_layer("inner_conv").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    rep = energy.energy_report(model, _known_data())
    rows = {r["name"]: r for r in rep["layers"]}
    assert list(rows) == ["conv1", "block/inner_conv", "logits"]
    assert rows["block/inner_conv"]["input_kind"] == "spikes"
    assert rows["block/inner_conv"]["firing_rate"] == pytest.approx(KNOWN_RATE)
    assert rows["logits"]["input_kind"] == "spikes" and rows["logits"]["firing_rate"] == pytest.approx(KNOWN_RATE)
    assert rep["neuron_firing_rates"] == {"n": pytest.approx(KNOWN_RATE), "n#2": pytest.approx(KNOWN_RATE)}


def test_non_binary_spike_input_is_an_error():
    inp = keras.Input((4,))
    s = S2Activation("ste_s", threshold=0.5, name="n")(inp)
    scaled = L.Reshape((4,), name="r")(s)
    model = keras.Model(inp, L.Dense(1, name="d")(scaled))
    rep = energy.energy_report(model, np.eye(4, dtype=np.float32))
    assert rep["layers"][0]["firing_rate"] == 0.25

    class NotANeuron(L.Layer):  # claims to be a neuron but outputs 2
        is_spiking_neuron = True
        off_value = 0.0

        def call(self, x):
            return x * 2.0

    model = keras.Model(inp, L.Dense(1, name="d2")(NotANeuron(name="fake")(inp)))
    with pytest.raises(ValueError, match="not binary"):
        energy.energy_report(model, np.eye(4, dtype=np.float32))
