"""The edge-native (saturate) neuron: exact integer decisions, two levels,
edge-only ops, overflow guards, and what cannot be expressed."""

import numpy as np
import pytest

import keras

from export.transform.edge import EdgeError, edge_model, fake_quantize_kernel, quantization_params
from export.tflite.flatbuffer import read_model
from export.transform.fold import fold_batchnorm
from export.formats import EDGE_OPS, FORBIDDEN_EDGE_OPS
from export.tflite.spikes import add_outputs, run_spikes
from export.tflite.convert import convert, op_names
from s2nn_keras import S2Activation

RNG = np.random.default_rng(7)


def _set_bn(bn, channels, rng, negative=0, zero_fire=None, zero_silent=None, u_th=1.0):
    gamma = rng.uniform(0.5, 2.0, channels)
    beta = rng.normal(0.0, 0.5, channels)
    if negative is not None:
        gamma[negative] = -gamma[negative]
    if zero_fire is not None:
        gamma[zero_fire], beta[zero_fire] = 0.0, u_th + 0.5
    if zero_silent is not None:
        gamma[zero_silent], beta[zero_silent] = 0.0, u_th - 0.7
    bn.set_weights([gamma, beta, rng.normal(0.0, 0.3, channels), rng.uniform(0.5, 2.0, channels)])


def _two_neuron_model(surrogate="s2nn", channels=6, rng=RNG):
    """image -> BN -> neuron (depthwise kind) -> conv3x3 -> BN -> neuron (conv
    kind) -> GAP -> Dense, BN statistics set by hand (negative and zero scales)."""
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    inputs = keras.Input((10, 10, 3), name="x")
    h = keras.layers.Conv2D(channels, 3, padding="same", name="stem")(inputs)
    s = keras.layers.Add(name="add")([h, keras.layers.Conv2D(channels, 1, name="side")(inputs)])
    a = S2Activation(surrogate, name="act1")(keras.layers.BatchNormalization(name="bn1")(s))
    h = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name="conv1")(a)
    a2 = S2Activation(surrogate, name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    out = keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(a2))
    model = keras.Model(inputs, out)
    u_th = model.get_layer("act1").threshold
    _set_bn(model.get_layer("bn1"), channels, rng, negative=0, zero_fire=1, zero_silent=2, u_th=u_th)
    _set_bn(model.get_layer("bn2"), channels, rng, negative=0, zero_fire=1, zero_silent=2, u_th=u_th)
    return model


def _data(n, rng=RNG):
    return rng.normal(0.0, 1.0, (n, 10, 10, 3)).astype(np.float32)


def _rep(x):
    return lambda: ([x[i:i + 20]] for i in range(0, len(x), 20))


@pytest.fixture(scope="module")
def two_neuron():
    model = _two_neuron_model()
    return model, fold_batchnorm(model), _data(120), _data(40, np.random.default_rng(8))


def _tensor(flat, index):
    return read_model(flat).main.tensors[index]


def test_int8_conv_neuron_is_the_exact_decision_on_the_int8_weight_lattice(two_neuron):
    """acc = 255 K + b_q with b_q = 127 (mod 255): the int8 spike of the conv
    neuron equals, element for element, the decision of the float conv with
    the flatbuffer's own int8 weights on the flatbuffer's own input spikes
    and the folded (unplaced) bias: no ties, no exceptions."""
    model, folded, calib, x = two_neuron
    conv = convert(folded, "int8", _rep(calib))
    plan = conv.plan.neurons
    assert plan["act1"].kind == "tensor" and plan["act2"].kind == "conv"
    assert plan["act2"].input_kind == "spikes01" and plan["act2"].min_abs_accumulator == 127.0
    _, spikes = run_spikes(conv.flatbuffer, conv.spike_tensors, x, "litert_builtin")
    s1 = (spikes["act1"] == 127).astype(np.float64)          # {0, 1}
    graph = read_model(conv.flatbuffer).main
    op = next(o for o in graph.operators if o.outputs[0] == conv.spike_tensors["act2"])
    w = graph.tensors[op.inputs[1]]
    q_w = w.data.astype(np.float64)                           # [out, kh, kw, in] int8 codes
    k = folded.get_layer("conv1").get_weights()
    W, b = k[0].astype(np.float64), k[1].astype(np.float64)  # folded: fires iff W s + b >= 0
    step = np.max(np.abs(W.reshape(-1, W.shape[-1])), axis=0) / 127.0
    # conv with the int8 weights (in weight steps) on zero-padded spikes
    padded = np.pad(s1, ((0, 0), (1, 1), (1, 1), (0, 0)))
    K = np.zeros(spikes["act2"].shape)
    for dy in range(3):
        for dx in range(3):
            K += np.einsum("nhwi,oi->nhwo", padded[:, dy:dy + 10, dx:dx + 10, :], q_w[:, dy, dx, :])
    fire = K * step + b >= 0
    const = np.max(np.abs(W.reshape(-1, W.shape[-1])), axis=0) == 0
    fire[..., const] = (b[const] >= 0)
    assert np.array_equal(spikes["act2"] == 127, fire)
    assert set(np.unique(spikes["act2"])) <= {-128, 127}


def test_int8_depthwise_neuron_is_the_exact_decision_on_its_input_grid(two_neuron):
    """The depthwise neuron fires iff p (x - theta) >= 0 on the int8 grid of
    its input, with the original threshold: read x from the flatbuffer."""
    model, folded, calib, x = two_neuron
    conv = convert(folded, "int8", _rep(calib))
    graph = read_model(conv.flatbuffer).main
    op = next(o for o in graph.operators if o.outputs[0] == conv.spike_tensors["act1"])
    probe = dict(conv.spike_tensors, x_in=op.inputs[0])
    _, out = run_spikes(conv.flatbuffer, probe, x, "tflm")
    q = graph.tensors[op.inputs[0]].quantization
    xv = (out["x_in"].astype(np.float64) - q.zero_points[0]) * q.scales[0]
    neuron = folded.get_layer("act1")
    th, pol = neuron.thresholds.astype(np.float64), neuron.polarity
    fire = np.where(pol > 0, xv >= th, np.where(pol < 0, xv <= th, th == 1.0))
    assert conv.grids["act1"]["equal"], conv.grids
    assert np.array_equal(out["act1"] == 127, fire)
    assert set(np.unique(out["act1"])) <= {-128, 127}


@pytest.mark.parametrize("quantization", ["float32", "int8", "int16x8"])
@pytest.mark.parametrize("surrogate", ["s2nn", "ste_b"])
def test_every_format_is_edge_only_and_two_level(quantization, surrogate):
    model = _two_neuron_model(surrogate, rng=np.random.default_rng(3))
    folded = fold_batchnorm(model)
    calib, x = _data(80), _data(16, np.random.default_rng(4))
    conv = convert(folded, quantization, _rep(calib) if quantization != "float32" else None)
    ops = op_names(conv.flatbuffer)
    assert set(ops) <= EDGE_OPS and not set(ops) & FORBIDDEN_EDGE_OPS, ops
    levels = {n: conv.plan.neurons[n].levels for n in conv.spike_tensors}
    outs = {rt: run_spikes(conv.flatbuffer, conv.spike_tensors, x, rt) for rt in ("litert_builtin", "tflm")}
    for name, t in conv.spike_tensors.items():
        from export.tflite.convert import level_codes

        tensor = _tensor(conv.flatbuffer, t)
        q = tensor.quantization
        codes = set(levels[name]) if q is None else set(level_codes(q, tensor.dtype, levels[name]))
        assert len(codes) == 2
        for rt, (_, spikes) in outs.items():
            assert set(np.unique(spikes[name]).tolist()) <= codes, (rt, name, np.unique(spikes[name]), codes)
    # Runtimes round the other ops (stem, add) differently at times, which can
    # move later spikes; the neurons agree bit for bit where their inputs do.
    from export.tflite.verify import verify_spikes

    check = verify_spikes(conv, folded, x, runtimes=("litert", "litert_builtin", "tflm"))
    assert check["two_level"] and check["neurons_equal_given_equal_inputs"], check["runtime_agreement"]
    # the ste_b levels are +-1, the {0, 1} neuron's {0, 6}
    assert levels["act1"] == ((-1.0, 1.0) if surrogate == "ste_b" else (0.0, 6.0))


def test_float_edge_model_matches_the_folded_model(two_neuron):
    model, folded, _, x = two_neuron
    plan = edge_model(folded, "float32")
    a, b = folded.predict(x, verbose=0), plan.model.predict(x, verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_quantization_params_follow_tflite():
    assert quantization_params(-1.0, 3.0, "int8") == pytest.approx((4.0 / 255, -64))
    assert quantization_params(0.5, 2.0, "int8")[1] == -128      # range extended to include 0
    assert quantization_params(-2.0, 1.0, "int16x8") == pytest.approx((2.0 / 32767, 0))


def test_fake_quantized_kernel_is_what_the_converter_stores(two_neuron):
    _, folded, calib, _ = two_neuron
    conv = convert(folded, "int8", _rep(calib))
    graph = read_model(conv.flatbuffer).main
    stem = next(o for o in graph.operators if o.name == "CONV_2D" and "stem" in graph.tensors[o.outputs[0]].name)
    w = graph.tensors[stem.inputs[1]]
    kernel = folded.get_layer("stem").get_weights()[0]
    fq = fake_quantize_kernel(kernel)
    np.testing.assert_allclose(np.transpose(w.dequantized(), (1, 2, 3, 0)), fq, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fake_quantize_kernel(fq), fq)  # idempotent


def test_spikes_that_meet_the_input_in_an_add_name_the_layer_and_the_flag():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(2, 1, name="c")(inputs)
    a = S2Activation(name="act")(keras.layers.BatchNormalization(name="bn")(h))
    out = keras.layers.Add(name="join")([a, inputs])
    folded = fold_batchnorm(keras.Model(inputs, out))
    with pytest.raises(EdgeError, match="act.*join.*--neuron compare"):
        edge_model(folded, "float32")
    # the comparison formulation exports it
    assert "GREATER_EQUAL" in op_names(convert(folded, "float32", neuron="compare").flatbuffer)


@pytest.mark.parametrize("tail, where", [
    (lambda a: keras.layers.GlobalAveragePooling2D(name="gap")(a), "model output through 'gap'"),
    (lambda a: keras.layers.Dense(2, name="head")(keras.layers.Activation("sigmoid", name="squash")(
        keras.layers.Flatten(name="flat")(a))), "'squash' \\(Activation\\)"),
])
def test_spikes_that_reach_what_cannot_take_their_factor_are_one_line_errors(tail, where):
    inputs = keras.Input((6, 6, 2))
    a = S2Activation(name="act")(keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(2, 1)(inputs)))
    folded = fold_batchnorm(keras.Model(inputs, tail(a)))
    with pytest.raises(EdgeError) as err:
        convert(folded, "int8", _rep(_data(20, np.random.default_rng(1))[:, :6, :6, :2]))
    message = str(err.value)
    assert "\n" not in message and "'act'" in message and "--neuron compare" in message
    import re

    assert re.search(where, message), message
    assert convert(folded, "float32", neuron="compare").spike_tensors


def _residual_spikes_model(rng):
    """stem -> BN -> neuron s; s + BN(conv(s)) -> neuron (no BN): the
    post-activation residual block of MLPerf Tiny's ResNet-8."""
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    inputs = keras.Input((10, 10, 3), name="x")
    s = S2Activation(name="stem_act")(keras.layers.BatchNormalization(name="stem_bn")(
        keras.layers.Conv2D(6, 3, padding="same", name="stem")(inputs)))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(6, 3, padding="same", name="conv")(s))
    a = S2Activation(name="add_act")(keras.layers.Add(name="add")([s, h]))
    out = keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(a))
    model = keras.Model(inputs, out)
    for bn in ("stem_bn", "bn"):
        _set_bn(model.get_layer(bn), 6, rng, negative=0, zero_fire=1, zero_silent=2)
    return model


def test_scale_plan_carries_the_spike_factor_through_the_add():
    from export.transform.edge import scale_plan
    from s2nn_keras.graph import LayerGraph

    folded = fold_batchnorm(_residual_spikes_model(np.random.default_rng(5)))
    graph = LayerGraph(folded)
    plan = scale_plan(graph)
    factor = {n.name: plan.of(n.output()) for n in graph.nodes}
    assert factor["stem_act"] == factor["conv"] == factor["add"] == factor["add_act"] == factor["gap"] == 6.0
    assert factor["x"] == factor["stem"] == factor["logits"] == 1.0
    conv, logits = graph.calls("conv")[0], graph.calls("logits")[0]
    assert plan.kernel_scale(conv) == 1.0 and plan.bias_scale(conv) == 6.0      # reads 6, writes 6
    assert plan.kernel_scale(logits) == pytest.approx(1 / 6) and plan.bias_scale(logits) == 1.0
    assert plan.threshold_scale(graph.calls("add_act")[0]) == 6.0


@pytest.mark.parametrize("quantization", ["float32", "int8", "int16x8"])
def test_spikes_into_an_add_export_exactly(quantization):
    """The neuron after the Add reads {0, 6} spikes plus a conv branch scaled
    by 6, with its thresholds times 6: the float32 model equals the folded
    one, the integer models are two-level and decide exactly on their grid."""
    from export.tflite.verify import verify_spikes

    folded = fold_batchnorm(_residual_spikes_model(np.random.default_rng(6)))
    calib, x = _data(80), _data(20, np.random.default_rng(9))
    conv = convert(folded, quantization, _rep(calib) if quantization != "float32" else None)
    assert set(op_names(conv.flatbuffer)) <= EDGE_OPS
    neurons = conv.plan.neurons
    assert neurons["add_act"].kind == "tensor" and neurons["add_act"].input_factor == 6.0
    assert conv.plan.factors["add"] == 6.0 and "logits" in conv.plan.consumers_scaled
    check = verify_spikes(conv, folded, x, runtimes=("litert", "litert_builtin", "tflm"))
    assert check["two_level"] and check["neurons_equal_given_equal_inputs"]
    if quantization == "float32":
        assert check["end_to_end_agreement"] == 1.0
        np.testing.assert_allclose(folded.predict(x, verbose=0), conv.model.predict(x, verbose=0), atol=1e-4)
    else:   # the depthwise neuron decides exactly on its input's grid, with the thresholds times 6
        from export.tflite.convert import decision_op

        graph = read_model(conv.flatbuffer).main
        op = decision_op(graph, "add_act")
        _, out = run_spikes(conv.flatbuffer, dict(conv.spike_tensors, u=op.inputs[0]), x, "tflm")
        q = graph.tensors[op.inputs[0]].quantization
        u = (out["u"].astype(np.float64) - q.zero_points[0]) * q.scales[0]
        neuron = folded.get_layer("add_act")
        th, pol = 6.0 * neuron.thresholds.astype(np.float64), neuron.polarity
        fire = np.where(pol > 0, u >= th, np.where(pol < 0, u <= th, th == 6.0))
        on = out["add_act"].max()
        assert np.array_equal(out["add_act"] == on, fire)


def _separable_dense_model(rng, units=5, features=None):
    """depthwise -> BN -> neuron -> 1x1 conv -> BN -> neuron -> Flatten ->
    Dense -> BN -> neuron -> Dense (DS-CNN's block and an MLP head)."""
    keras.utils.set_random_seed(int(rng.integers(1 << 30)))
    inputs = keras.Input((8, 8, 3), name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    h = S2Activation(name="stem_act")(keras.layers.BatchNormalization(name="stem_bn")(h))
    h = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw")(h)
    h = S2Activation(name="dw_act")(keras.layers.BatchNormalization(name="dw_bn")(h))
    h = keras.layers.Conv2D(6, 1, name="pw")(h)
    h = S2Activation(name="pw_act")(keras.layers.BatchNormalization(name="pw_bn")(h))
    h = keras.layers.Dense(units, name="hidden")(keras.layers.Flatten(name="flat")(h))
    h = S2Activation(name="hidden_act")(keras.layers.BatchNormalization(name="hidden_bn")(h))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    for bn, c in (("stem_bn", 4), ("dw_bn", 8), ("pw_bn", 6), ("hidden_bn", units)):
        _set_bn(model.get_layer(bn), c, rng, negative=0, zero_fire=1, zero_silent=None)
    return model


@pytest.mark.parametrize("quantization", ["float32", "int8", "int16x8"])
def test_depthwise_and_dense_neurons_are_fused_into_their_layer(quantization):
    from export.tflite.flatbuffer import read_model
    from export.tflite.convert import decision_op
    from export.tflite.verify import verify_spikes

    rng = np.random.default_rng(11)
    folded = fold_batchnorm(_separable_dense_model(rng))
    calib = rng.normal(0.5, 0.5, (60, 8, 8, 3)).astype(np.float32)
    x = rng.normal(0.5, 0.5, (16, 8, 8, 3)).astype(np.float32)
    conv = convert(folded, quantization, _rep(calib) if quantization != "float32" else None)
    plan = conv.plan.neurons
    assert {n: (p.kind, p.producer) for n, p in plan.items() if n != "stem_act"} == {
        "dw_act": ("conv", "dw"), "pw_act": ("conv", "pw"), "hidden_act": ("conv", "hidden")}
    ops = op_names(conv.flatbuffer)
    stages = 2 if quantization == "int16x8" else 1          # int16x8 adds one 1x1 level stage per neuron
    assert ops.get("DEPTHWISE_CONV_2D", 0) == 1 + (stages - 1) * 4, ops    # the layer itself (+ level stages)
    graph = read_model(conv.flatbuffer).main
    first = {n: decision_op(graph, n, p.producer) for n, p in plan.items()}
    assert first["dw_act"].name == "DEPTHWISE_CONV_2D" and first["hidden_act"].name == "FULLY_CONNECTED"
    assert first["hidden_act"].fused_activation == ("RELU6" if stages == 1 else "RELU_N1_TO_1")
    check = verify_spikes(conv, folded, x, runtimes=("litert", "litert_builtin", "tflm"))
    assert check["two_level"] and check["neurons_equal_given_equal_inputs"], check["runtime_agreement"]
    if quantization == "float32":
        assert check["end_to_end_agreement"] == 1.0


def test_a_conv_neuron_that_could_overflow_becomes_a_tensor_neuron():
    """A Dense reading 640 int16 features: 32767 * sum|q| * 3 passes 2^31, so
    the neuron is written as its own 1x1 depthwise op on the Dense output."""
    from export.transform.edge import neuron_kinds

    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(2)
    inputs = keras.Input((640,))
    h = keras.layers.Dense(8, name="enc")(inputs)
    a = S2Activation(name="act")(keras.layers.BatchNormalization(name="bn")(h))
    model = keras.Model(inputs, keras.layers.Dense(640, name="dec")(a))
    _set_bn(model.get_layer("bn"), 8, rng)
    folded = fold_batchnorm(model)
    assert neuron_kinds(folded, "int16x8") == {"act": ("tensor", None)}
    assert neuron_kinds(folded, "float32") == {"act": ("conv", "enc")}
    calib = rng.random((40, 640)).astype(np.float32)
    conv = convert(folded, "int16x8", _rep(calib))
    assert conv.plan.neurons["act"].kind == "tensor" and "overflow" in conv.plan.neurons["act"].reason
    assert set(op_names(conv.flatbuffer)) <= EDGE_OPS


@pytest.mark.parametrize("neuron", ["saturate", "compare"])
def test_two_neurons_in_a_row_export_in_every_format(neuron):
    """The second neuron reads {0, 1} spikes: its threshold 1 (a tie on the
    on level) is settled half-way between the levels, so even the int16x8
    ramp of the compare ablation decides it exactly."""
    from export.tflite.convert import settle_spike_thresholds
    from export.tflite.verify import verify_spikes

    rng = np.random.default_rng(4)
    keras.utils.set_random_seed(4)
    inputs = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(inputs)
    a = S2Activation(name="act1")(keras.layers.BatchNormalization(name="bn1")(h))
    b = S2Activation(name="act1b")(a)
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(b)
    a2 = S2Activation(name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(a2)))
    for bn in ("bn1", "bn2"):
        _set_bn(model.get_layer(bn), 6, rng)
    folded = fold_batchnorm(model)
    settled = settle_spike_thresholds(folded).get_layer("act1b")
    assert settled.thresholds.tolist() == [0.5] * 6 and settled.polarity.tolist() == [1] * 6
    calib, x = _data(80), _data(30, np.random.default_rng(12))
    ref = folded.predict(x, verbose=0).argmax(1)
    for quantization in ("float32", "int8", "int16x8"):
        conv = convert(folded, quantization, _rep(calib) if quantization != "float32" else None, neuron=neuron)
        check = verify_spikes(conv, folded, x, runtimes=("litert_builtin",))
        per = check["per_neuron"]["act1b"]
        # the int16x8 ramp of act1 is not two-level where |u - theta| < 1/gain; act1b
        # decides those values on its own (>= 1/2), which the {0, 1} reference cannot
        ramp_values = check["per_neuron"]["act1"]["nonbinary_values"]["litert_builtin"]
        assert per["nonbinary_values"]["litert_builtin"] == 0, (quantization, per)
        assert per["local_mismatches"] <= ramp_values, (quantization, per, ramp_values)
        if neuron == "saturate":
            assert ramp_values == 0
        logits, _ = run_spikes(conv.flatbuffer, {}, x, "litert_builtin")
        assert np.mean(logits.argmax(1) == ref) >= 0.8, quantization   # not at chance


def test_overflow_guard_names_the_neuron():
    from export.transform.edge import _check_overflow

    _check_overflow("ok", 2 ** 28, 3.0, "int8")          # 2^28 * 2^2 < 2^31
    with pytest.raises(EdgeError, match="big.*overflows"):
        _check_overflow("big", 2 ** 29 + 1, 3.0, "int8")


def test_add_outputs_keeps_the_model():
    inputs = keras.Input(batch_shape=(1, 4, 4, 2))
    h = keras.layers.Conv2D(3, 1, activation="relu6", name="c")(inputs)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    conv = convert(keras.Model(inputs, out), "float32")
    graph = read_model(conv.flatbuffer).main
    t = next(o.outputs[0] for o in graph.operators if o.name == "CONV_2D")
    probe = add_outputs(conv.flatbuffer, [t])
    assert read_model(probe).main.outputs == graph.outputs + (t,)
    assert op_names(probe) == op_names(conv.flatbuffer)
