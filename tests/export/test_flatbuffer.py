"""export.tflite.flatbuffer: the TFLite op reader, checked on small models converted
with TensorFlow (op names, fused activations, per-channel quantization,
constant buffers) and against the LiteRT interpreter's own tensor details."""

import keras
import numpy as np
import pytest

from export.tflite.flatbuffer import op_counts, read_model
from tests.export.helpers import plain_tflite

tf = pytest.importorskip("tensorflow")

L = keras.layers


def _model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2), batch_size=1, name="image")
    x = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.DepthwiseConv2D(3, activation="relu6", name="dw")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(4, name="fc")(x)
    model = keras.Model(inp, out)
    # non-trivial biases
    for name in ("conv", "dw", "fc"):
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[1] = np.linspace(-0.3, 0.3, w[1].size).astype(np.float32)
        layer.set_weights(w)
    return model


def _convert(model, int8=False):
    rng = np.random.default_rng(0)
    return plain_tflite(model, (lambda: ([rng.random((1, 6, 6, 2), dtype=np.float32)] for _ in range(16)))
                        if int8 else None)


@pytest.fixture(scope="module")
def models():
    model = _model()
    return model, _convert(model), _convert(model, int8=True)


def _interpreter_details(content):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    return {d["index"]: d for d in interp.get_tensor_details()}


def test_float32_ops_activations_and_weights(models):
    model, f32, _ = models
    parsed = read_model(f32)
    g = parsed.main
    names = [op.name for op in g.operators]
    assert names == ["CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    acts = {op.name: op.fused_activation for op in g.operators}
    assert acts == {"CONV_2D": "RELU", "DEPTHWISE_CONV_2D": "RELU6", "RESHAPE": None, "FULLY_CONNECTED": "NONE"}
    conv = g.operators[0]
    assert conv.options_type == "Conv2DOptions" and conv.options.strideW == 1
    kernel, bias = model.get_layer("conv").get_weights()
    w = g.tensors[conv.inputs[1]]
    assert w.is_constant and w.dtype == np.float32 and w.shape == (3, 3, 3, 2)
    np.testing.assert_array_equal(w.data, kernel.transpose(3, 0, 1, 2))  # [O, kh, kw, I]
    np.testing.assert_array_equal(g.tensors[conv.inputs[2]].data, bias)
    dw = g.operators[1]
    dk, db = model.get_layer("dw").get_weights()
    np.testing.assert_array_equal(g.tensors[dw.inputs[1]].data, dk.reshape(1, 3, 3, 3))  # [1, kh, kw, C*m]
    fc = g.operators[3]
    fk, _ = model.get_layer("fc").get_weights()
    np.testing.assert_array_equal(g.tensors[fc.inputs[1]].data, fk.T)  # [O, I]
    x = g.tensors[g.inputs[0]]
    assert x.data is None and x.shape == (1, 6, 6, 2) and x.quantization is None
    assert g.producer(conv.outputs[0]) is conv and g.consumers(conv.outputs[0]) == [dw]
    assert g.producer(g.inputs[0]) is None
    assert op_counts(f32) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "RESHAPE": 1}


def test_int8_per_channel_scales_and_buffers(models):
    model, _, q8 = models
    g = read_model(q8).main
    assert [op.name for op in g.operators][0] == "CONV_2D"
    conv = next(op for op in g.operators if op.name == "CONV_2D")
    w = g.tensors[conv.inputs[1]]
    assert w.dtype == np.int8 and w.quantization.per_channel
    assert w.quantization.scales.shape == (3,) and w.quantization.quantized_dimension == 0
    assert np.all(w.quantization.zero_points == 0)
    kernel, bias = model.get_layer("conv").get_weights()
    ref = kernel.transpose(3, 0, 1, 2)
    half_step = w.quantization.scales.reshape(3, 1, 1, 1) / 2 * 1.0001
    assert np.all(np.abs(w.dequantized() - ref) <= half_step)
    # symmetric per-channel int8: the largest |weight| of a channel maps to 127
    np.testing.assert_array_equal(np.abs(w.data).reshape(3, -1).max(axis=1), [127, 127, 127])
    b = g.tensors[conv.inputs[2]]
    x_in = g.tensors[conv.inputs[0]]
    assert b.dtype == np.int32
    np.testing.assert_allclose(b.quantization.scales, x_in.quantization.scales[0] * w.quantization.scales, rtol=1e-6)
    np.testing.assert_allclose(b.dequantized(), bias, atol=float(b.quantization.scales.max()))
    out = g.tensors[conv.outputs[0]]
    assert out.dtype == np.int8 and not out.quantization.per_channel
    assert [g.operators[i].fused_activation for i in range(2)] == ["RELU", "RELU6"]
    assert g.tensors[g.inputs[0]].dtype == np.int8


@pytest.mark.parametrize("which", [1, 2])
def test_agrees_with_the_interpreter(models, which):
    content = models[which]
    g = read_model(content).main
    details = _interpreter_details(content)
    assert len(details) <= len(g.tensors)
    for index, d in details.items():
        t = g.tensors[index]
        assert t.name == d["name"]
        assert list(t.shape) == list(d["shape"])
        assert t.dtype == np.dtype(d["dtype"])
        q = d["quantization_parameters"]
        if len(q["scales"]):
            np.testing.assert_array_equal(t.quantization.scales, q["scales"])
            np.testing.assert_array_equal(t.quantization.zero_points, q["zero_points"])
            assert t.quantization.quantized_dimension == q["quantized_dimension"]
        else:
            assert t.quantization is None


def test_op_counts_matches_the_tflite_micro_schema_reader(models):
    tflite = pytest.importorskip("export.tflite.convert")
    pytest.importorskip("tflite_micro")
    for content in models[1:]:
        if hasattr(tflite, "op_names"):
            assert op_counts(content) == dict(tflite.op_names(content))


def test_bad_input(tmp_path, models):
    with pytest.raises(ValueError, match="TFL3"):
        read_model(b"not a flatbuffer at all")
    path = tmp_path / "m.tflite"
    path.write_bytes(b"\x00" * 4 + b"TFL3" + b"\x00" * 4)
    with pytest.raises(ValueError, match="no subgraph"):
        read_model(str(path))
    with pytest.raises(ValueError, match="corrupt"):
        read_model(models[2][: len(models[2]) // 3])
    with pytest.raises(TypeError):
        read_model(123)
