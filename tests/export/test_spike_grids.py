"""Spike grids from the levels (export.tflite.spike_grids): a neuron that never
fires on the calibration images exports in int8 and int16x8 like any other,
and the layers reading it are requantized exactly as the converter would."""

import numpy as np
import pytest

from export.tflite.flatbuffer import read_model
from export.transform.fold import fold_batchnorm
from export.tflite.spike_grids import requantized_weights
from export.tflite.convert import convert
from tests.export.helpers import two_neuron_model


def _rep(x):
    return lambda: ([x[i:i + 20]] for i in range(0, len(x), 20))


def _model(dense_head=True):
    """conv -> BN -> neuron -> depthwise -> BN -> neuron -> (GAP -> Dense | Flatten -> Dense)."""
    model = two_neuron_model((6, 6, 2), seed=5, flatten=not dense_head, logits_bias="ones")
    # act1 reads channel 0 minus channel 1: it never fires on calibration images whose two channels
    # are equal, and often on images whose channel 0 is larger
    conv = model.get_layer("conv")
    kernel = np.abs(conv.get_weights()[0])
    kernel[:, :, 1, :] = -kernel[:, :, 0, :]
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    model.get_layer("bn1").set_weights([np.ones(4), np.zeros(4), np.zeros(4), np.ones(4)])
    model.get_layer("bn2").set_weights([np.ones(4), np.full(4, 0.5), np.zeros(4), np.ones(4)])
    return model


def test_requantized_weights_are_the_converters_own():
    """On a model calibrated normally, requantizing every Conv/Depthwise/Dense
    from its Keras weights gives the flatbuffer's weights and bias, bit for
    bit (int16x8 biases within one unit)."""
    rng = np.random.default_rng(0)
    folded = fold_batchnorm(_model())
    x = rng.normal(1.0, 1.0, (40, 6, 6, 2)).astype(np.float32)
    for quantization in ("int8", "int16x8"):
        conv = convert(folded, quantization, _rep(x))
        assert conv.spike_grids == {}         # every neuron fired: the flatbuffer is the converter's own
        graph = read_model(conv.flatbuffer).main
        seen = set()
        for op in graph.operators:
            w = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 else None
            layer = next((l for l in ("conv", "dw", "logits") if w is not None and f"/{l}_1/" in w.name), None)
            if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or layer is None:
                continue
            b = graph.tensors[op.inputs[2]]
            kernel, bias = conv.model.get_layer(layer).get_weights()
            q, scales, bq, bscales = requantized_weights(op.name, kernel, bias, w.shape,
                                                         graph.tensors[op.inputs[0]].quantization.scales[0], b.dtype)
            np.testing.assert_array_equal(q, w.data, err_msg=(quantization, layer))
            np.testing.assert_allclose(scales, w.quantization.scales, rtol=1e-7)
            if quantization == "int8":
                np.testing.assert_array_equal(bq, b.data, err_msg=(quantization, layer))
            else:   # int64 biases of ~1e7: the converter's float32 arithmetic can round one unit apart
                assert np.max(np.abs(bq.astype(np.int64) - b.data.astype(np.int64))) <= 1, (layer, bq, b.data)
            np.testing.assert_allclose(bscales, b.quantization.scales, rtol=1e-6)
            seen.add(op.name)
        assert seen == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


@pytest.mark.parametrize("quantization", ["int8", "int16x8"])
@pytest.mark.parametrize("dense_head", [True, False])
def test_a_neuron_silent_on_the_calibration_data_exports(quantization, dense_head):
    from export.transform.edge import level_grid
    from export.tflite.spikes import run_spikes
    from export.tflite.verify import verify_spikes

    rng = np.random.default_rng(1)
    folded = fold_batchnorm(_model(dense_head))
    calib = np.repeat(rng.normal(0.0, 1.0, (40, 6, 6, 1)), 2, axis=-1).astype(np.float32)  # act1 is silent
    x = (rng.normal(0.0, 0.5, (30, 6, 6, 2)) + [0.5, -0.5]).astype(np.float32)           # ... and fires
    assert not np.any(np.asarray(fold_batchnorm(_model(dense_head)).get_layer("act1")(
        folded.get_layer("conv")(calib)))), "the calibration images must leave act1 silent"
    conv = convert(folded, quantization, _rep(calib))
    assert "act1" in conv.spike_grids and conv.spike_grids["act1"]["was"][0] < 1e-6
    assert conv.spike_grids["act1"]["requantized"] == ["dw"]
    graph = read_model(conv.flatbuffer).main
    q = graph.tensors[conv.spike_tensors["act1"]].quantization
    assert (float(q.scales[0]), int(q.zero_points[0])) == pytest.approx(level_grid((0.0, 6.0), quantization))
    check = verify_spikes(conv, folded, x, runtimes=("litert", "litert_builtin", "tflm"))
    assert check["two_level"] and check["neurons_equal_given_equal_inputs"], check["runtime_agreement"]
    _, spikes = run_spikes(conv.flatbuffer, conv.spike_tensors, x, "litert_builtin")
    assert 0.05 < np.mean(spikes["act1"] == spikes["act1"].max()) < 0.95    # it fires on real data
    # the depthwise neuron reading it decides as the folded model does, up to its int8 weight rounding
    per = check["per_neuron"]["act2"]
    assert per["local_mismatches"] <= 0.01 * per["elements"], per
    # (tensors after it that are not spikes keep the grids calibration gave them: the logits here
    # were calibrated on the constant output of a silent network and clip; they still follow act1)
    logits, _ = run_spikes(conv.flatbuffer, {}, x, "litert_builtin")
    assert np.ptp(logits, axis=0).max() > 0


def test_a_model_whose_neurons_fire_is_left_unchanged():
    from export.tflite.spike_grids import fix_spike_grids
    from export.tflite.convert import spike_tensors

    rng = np.random.default_rng(2)
    folded = fold_batchnorm(_model())
    x = rng.normal(1.0, 1.0, (40, 6, 6, 2)).astype(np.float32)
    conv = convert(folded, "int8", _rep(x))
    assert conv.spike_grids == {}
    flat, fixed = fix_spike_grids(conv.flatbuffer, conv.model, spike_tensors(conv.flatbuffer, ["act1", "act2"]),
                                  {"act1": (0.0, 6.0), "act2": (0.0, 6.0)}, "int8")
    assert flat is conv.flatbuffer and fixed == {}


@pytest.mark.parametrize("quantization", ["int8", "int16x8"])
def test_a_transposed_conv_reading_a_silent_neuron_is_requantized(quantization):
    """A Conv2DTranspose reading the spikes of a neuron silent on the
    calibration data (TRANSPOSE_CONV: data input 2, bias 3) gets its weights
    requantized like any other layer -- the same integers the converter
    writes when the neuron fires -- and its outputs follow the spikes."""
    import keras

    from export.tflite.runtimes import run_litert

    model = _model()
    x_in = model.inputs[0]
    act1 = model.get_layer("act1").output
    up = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="up")(act1)
    model = keras.Model(x_in, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(up)))
    rng = np.random.default_rng(3)
    model.get_layer("up").bias.assign(rng.normal(0.0, 0.3, 3).astype(np.float32))
    folded = fold_batchnorm(model)
    calib = np.repeat(rng.normal(0.0, 1.0, (40, 6, 6, 1)), 2, axis=-1).astype(np.float32)  # act1 is silent
    x = (rng.normal(0.0, 0.5, (30, 6, 6, 2)) + [0.5, -0.5]).astype(np.float32)           # ... and fires
    silent, firing = convert(folded, quantization, _rep(calib)), convert(folded, quantization, _rep(x))
    assert silent.spike_grids["act1"]["requantized"] == ["up"] and "act1" not in firing.spike_grids

    def weights(conv):
        graph = read_model(conv.flatbuffer).main
        op = next(o for o in graph.operators if o.name == "TRANSPOSE_CONV")
        bias = graph.tensors[op.inputs[3]]
        return graph.tensors[op.inputs[1]].data, bias.data, bias.quantization.scales

    (w_silent, b_silent, s_silent), (w_firing, b_firing, s_firing) = weights(silent), weights(firing)
    np.testing.assert_array_equal(w_silent, w_firing)
    assert np.max(np.abs(b_silent.astype(np.int64) - b_firing.astype(np.int64))) <= 1
    np.testing.assert_allclose(s_silent, s_firing, rtol=1e-6)
    assert np.ptp(run_litert(silent.flatbuffer, x)["outputs"], axis=0).max() > 0
