"""export.energy.tflite finds the spike tensors from their values, whatever
ops write them: a hand-built network whose neurons are convolutions with a
large gain and a fused RELU6 (spikes {0, 6}, the edge formulation), with a
neuron on a residual sum as a 1x1 DEPTHWISE_CONV_2D gain, converted with
TensorFlow to float32 and int8, against the Keras S2Activation network it
computes."""

import keras
import numpy as np
import pytest

from export.tflite import flatbuffer
from export.energy.tflite import _Levels, compare_rates, read_positions, tflite_energy_report
from s2nn_keras import S2Activation
from s2nn_keras.energy import energy_report
from tests.export.helpers import plain_tflite

tf = pytest.importorskip("tensorflow")
L = keras.layers
GAIN = 1e6
TH = (0.3, 0.2, 0.5)  # thresholds of the three neurons


def _weights():
    rng = np.random.default_rng(7)
    return {
        "conv1": [rng.normal(0.15, 0.3, (3, 3, 1, 4)).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)],
        "conv2": [rng.normal(0, 0.3, (3, 3, 4, 4)).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)],
        "logits": [rng.normal(0, 1.0, (4, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)],
    }


def _spiking(w):
    """The reference: conv -> S2Activation neurons, a neuron on a residual sum."""
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")
    s1 = S2Activation("ste_s", threshold=TH[0], name="n1")(L.Conv2D(4, 3, padding="same", name="conv1")(inp))
    s2 = S2Activation("ste_s", threshold=TH[1], name="n2")(L.Conv2D(4, 3, padding="same", name="conv2")(s1))
    s3 = S2Activation("ste_s", threshold=TH[2], name="n3")(L.Add(name="sum")([s1, s2]))
    model = keras.Model(inp, L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(s3)))
    for name, values in w.items():
        model.get_layer(name).set_weights(values)
    return model


def _saturating(w):
    """The same function with spikes of amplitude 6: each neuron is the
    preceding conv with kernel*G and (bias - u_th)*G and a RELU6; the neuron
    on the sum is a 1x1 depthwise gain; consumers divide by 6."""
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")
    c1 = L.Conv2D(4, 3, padding="same", name="conv1")
    s1 = L.ReLU(max_value=6.0, name="n1")(c1(inp))
    c2 = L.Conv2D(4, 3, padding="same", activation="relu6", name="conv2")
    s2 = c2(s1)
    gain = L.DepthwiseConv2D(1, activation="relu6", name="n3_gain")
    s3 = gain(L.Add(name="sum")([s1, s2]))
    dense = L.Dense(3, name="logits")
    model = keras.Model(inp, dense(L.GlobalAveragePooling2D(name="gap")(s3)))
    (k1, b1), (k2, b2), (kl, bl) = w["conv1"], w["conv2"], w["logits"]
    c1.set_weights([k1 * GAIN, (b1 - TH[0]) * GAIN])
    c2.set_weights([k2 / 6.0 * GAIN, (b2 - TH[1]) * GAIN])
    gain.set_weights([np.full((1, 1, 4, 1), GAIN / 6.0, np.float32), np.full(4, -TH[2] * GAIN, np.float32)])
    dense.set_weights([kl / 6.0, bl])
    return model


def _convert(model, x, int8):
    return plain_tflite(model, (lambda: ([x[i:i + 1]] for i in range(64))) if int8 else None)


@pytest.fixture(scope="module")
def nets():
    w = _weights()
    x = np.random.default_rng(1).random((96, 8, 8, 1), dtype=np.float32)
    spiking, saturating = _spiking(w), _saturating(w)
    # the two Keras models compute the same spikes (up to potentials within 6/GAIN of a threshold)
    a = keras.Model(spiking.inputs, spiking.get_layer("n1").output).predict(x, verbose=0)
    b = keras.Model(saturating.inputs, saturating.get_layer("n1").output).predict(x, verbose=0)
    assert np.mean(a == b / 6.0) >= 0.999
    return spiking, x, energy_report(spiking, x), _convert(saturating, x, False), _convert(saturating, x, True)


def test_edge_formulation_has_no_comparison_ops(nets):
    for content in nets[3:]:
        counts = flatbuffer.op_counts(content)
        assert not {"GREATER_EQUAL", "LESS_EQUAL", "SELECT_V2", "SELECT"} & set(counts)
        g = flatbuffer.read_model(content).main
        acts = [op.fused_activation for op in g.operators if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        assert acts[1:] == ["RELU6", "RELU6"]  # conv2 and the 1x1 gain; conv1's RELU6 may be its own op


@pytest.mark.parametrize("which,bound", [(3, 1e-3), (4, 0.02)], ids=["float32", "int8"])
def test_rates_match_the_spiking_keras_model(nets, which, bound):
    spiking, x, keras_rep, *flats = nets
    rep = tflite_energy_report(flats[which - 3], x, keras_model=spiking)
    assert [r["name"] for r in rep["layers"]] == ["conv1", "conv2", "logits"]
    assert [r["input_kind"] for r in rep["layers"]] == ["image", "spikes", "pooled_spikes"]
    cmp = compare_rates(keras_rep, rep)
    assert cmp["unmatched"] == [] and len(cmp["per_layer"]) == 2
    assert cmp["max_abs_diff"] <= bound, cmp
    assert all(0.05 < r["firing_rate"] < 0.95 for r in rep["layers"][1:])
    row = rep["layers"][1]
    assert row["spike_levels"][0] == 0.0 and row["spike_levels"][1] == pytest.approx(6.0, rel=1e-6)
    assert "RELU6" in row["spike_producer"] or row["spike_producer"] == "RELU6"
    assert any("n3_gain" in n and "not counted" in n for n in rep["notes"])
    assert rep["quantization"] == ("float32" if which == 3 else "int8")


def test_without_the_keras_model_the_gain_op_is_found_from_its_output(nets):
    spiking, x, keras_rep, f32, int8 = nets
    for content in (f32, int8):
        rep = tflite_energy_report(content, x)
        assert [r["input_kind"] for r in rep["layers"]] == ["image", "spikes", "pooled_spikes"]
        assert any("1x1" in n and "not counted" in n for n in rep["notes"])
        assert rep["total_flops"] == keras_rep["total_flops"]


def _tensor(dtype, scale=None, zp=None):
    q = None if scale is None else flatbuffer.Quantization(np.array([scale], np.float32), np.array([zp]), 0)
    return flatbuffer.Tensor(0, "t", (4,), (4,), "X", np.dtype(dtype), q, 0, None)


def test_levels_classifier():
    h = _Levels(_tensor("float32"))
    h.add(np.array([0, 6, 0, 0], np.float32))
    h.add(np.array([6, 6, 0, 0], np.float32))
    s = h.summary()
    assert (s["kind"], s["lo"], s["hi"], s["rate"]) == ("spikes", 0.0, 6.0, 3 / 8)
    h = _Levels(_tensor("float32"))
    h.add(np.array([-1, 1, 1, -1, -1, -1], np.float32))
    assert h.summary()["kind"] == "signed_spikes" and h.summary()["rate"] == pytest.approx(2 / 6)
    h = _Levels(_tensor("float32"))
    h.add(np.array([0.2, 0.7, 0.2, 0.7], np.float32))  # two levels, neither 0 nor symmetric
    assert h.summary() is None
    h = _Levels(_tensor("float32"))
    h.add(np.linspace(0, 1, 1000, dtype=np.float32))  # real values
    assert h.summary() is None
    # int8 {0, 6} with scale 6/255, zero point -128: q = -128 and 127; one ramp value in 2000
    h = _Levels(_tensor("int8", 6 / 255, -128))
    v = np.full(2000, -128, np.int8)
    v[:500] = 127
    v[1000] = 3
    h.add(v)
    s = h.summary()
    assert s["kind"] == "spikes" and s["hi"] == pytest.approx(6.0) and s["rate"] == pytest.approx(501 / 2000)
    assert s["offlevel"] == pytest.approx(1 / 2000)
    v[1000:1010] = 3  # 10 of 2000 off the levels: above NEAR_BINARY_TOLERANCE
    h = _Levels(_tensor("int8", 6 / 255, -128))
    h.add(v)
    assert h.summary() is None


# --------------------------------------------------------------------------
# Strided 1x1 convolutions: R at the positions they read.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size,kernel,stride,dilation,padding", [
    (7, 1, 2, 1, "SAME"), (8, 1, 2, 1, "SAME"), (9, 1, 3, 1, "VALID"), (8, 1, 3, 1, "SAME"),
    (8, 3, 2, 1, "SAME"), (8, 3, 2, 1, "VALID"), (7, 2, 3, 1, "VALID"), (10, 3, 1, 2, "SAME"),
    (9, 2, 4, 1, "SAME"), (11, 2, 1, 3, "VALID")])  # TF convolves dilation > 1 at stride 1 only
def test_read_positions_are_what_tensorflow_convolves(size, kernel, stride, dilation, padding):
    # reference: position p is read iff a one-hot input at p gives a non-zero output (all-ones kernel)
    x = tf.constant(np.eye(size, dtype=np.float32).reshape(size, size, 1, 1))
    k = tf.ones((kernel, 1, 1, 1))
    y = tf.nn.conv2d(x, k, strides=(stride, 1), padding=padding, dilations=(dilation, 1)).numpy()
    got = read_positions(size, y.shape[1], stride, dilation, kernel, padding == "SAME")
    assert got == np.nonzero(y.reshape(size, -1).any(axis=1))[0].tolist()


@pytest.mark.parametrize("pad,strides,padding", [(0, (2, 2), "valid"), (0, (3, 2), "same"), (1, (2, 3), "valid")],
                         ids=["valid-2x2", "same-3x2", "pad1-valid-2x3"])
def test_strided_1x1_conv_reads_its_rate_at_the_positions_it_reads(pad, strides, padding):
    """A {0, 6} spike map (conv + RELU6 neuron), optionally zero-padded, read
    by a strided 1x1 conv: R is the rate of the subsampled map the conv reads
    (NumPy reference), not of the whole map."""
    inp = keras.Input((9, 8, 1), batch_size=1, name="image")
    neuron = L.Conv2D(2, 1, activation="relu6", name="neuron")
    s = neuron(inp)
    read = L.ZeroPadding2D(pad, name="pad")(s) if pad else s
    model = keras.Model(inp, L.Conv2D(3, 1, strides=strides, padding=padding, name="strided")(read))
    neuron.set_weights([np.full((1, 1, 1, 2), GAIN, np.float32), np.array([-0.5 * GAIN, -0.75 * GAIN], np.float32)])
    rng = np.random.default_rng(5)
    x = (rng.integers(0, 64, (40, 9, 8, 1)) + 0.5) / 64
    x[:, ::2] = np.sqrt(x[:, ::2])  # even rows fire more: the subsampled rate differs from the whole
    x = x.astype(np.float32)  # no value within 1e-3 of a threshold: the gain saturates every one
    spikes = np.concatenate([x > 0.5, x > 0.75], axis=-1)
    inside = np.pad(np.ones_like(spikes), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    sub = np.pad(spikes, ((0, 0), (pad, pad), (pad, pad), (0, 0)))[:, ::strides[0], ::strides[1]]
    sub_inside = inside[:, ::strides[0], ::strides[1]]
    expected = sub[sub_inside].mean()
    assert abs(expected - spikes.mean()) > 0.01

    content = _convert(model, x, False)
    graph = flatbuffer.read_model(content).main
    conv = [op for op in graph.operators if op.name == "CONV_2D"][-1]
    assert (conv.options.strideH, conv.options.strideW) == strides
    assert ("PAD" in [op.name for op in graph.operators]) == bool(pad)
    rep = tflite_energy_report(content, x)
    row = rep["layers"][-1]
    assert row["input_kind"] == "spikes" and row["spike_levels"] == [0.0, pytest.approx(6.0)]
    assert row["firing_rate"] == pytest.approx(expected, abs=1e-12)
    assert "positions the strided 1x1 CONV_2D reads" in row["input_source"]


def test_tensor_label_is_layer_and_op_of_the_first_fused_part():
    from export.energy.tflite import tensor_label

    name = ("seq_1/seq_1/act2_1/Relu6;seq_1/seq_1/conv2_1/BiasAdd;seq_1/seq_1/conv2_1/convolution;"
            "seq_1/seq_1/conv2_1/Squeeze1")
    assert tensor_label(name) == "act2/Relu6"
    assert tensor_label("serving_default_image:0") == "serving_default_image:0"
    assert tensor_label("m/conv_1_1/convolution") == "conv_1/convolution"  # only the scope's own _N goes
