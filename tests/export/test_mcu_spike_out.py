"""Spike outputs without requantization (export.mcu.spike_out): the
per-channel thresholds against export/quant.py's requantization, checked
exhaustively around each threshold for random multipliers, shifts, zero
points and clamps; the layers the lowering fuses and marks; the spike
streams the generator plans; and the host build of the new kernels
byte-identical with TFLite Micro on small models (one op and a spiking
ResNet with the fused ADD + neuron)."""

import numpy as np
import pytest

from export import quant
from export.mcu import spike_out as so

RNG_CASES = 60


def _stage(acc, q, s, zp, act):
    """TFLite's output stage, straight from export.quant (the reference)."""
    v = quant.multiply_by_quantized_multiplier(np.asarray(acc, np.int64), q, s) + zp
    return np.clip(v, act[0], act[1])


def _random_multiplier(rng):
    m = float(np.exp(rng.uniform(np.log(1e-4), np.log(300.0))))
    return quant.quantize_multiplier(m)


@pytest.mark.parametrize("seed", range(RNG_CASES))
def test_first_reaching_is_the_first_accumulator_at_the_level(seed):
    """For random multipliers (shifts from -13 to 9), zero points and
    clamps: the bisection's accumulator reaches the level and the one before
    does not, and the output stage is monotone around it (2,001 accumulators
    on each side, every one checked)."""
    rng = np.random.default_rng(seed)
    q, s = _random_multiplier(rng)
    zp = int(rng.integers(-128, 128))
    lo = int(rng.integers(-128, 0))
    act = (lo, int(rng.integers(lo + 1, 128)))
    d_lo, d_hi = so.monotone_range(s)
    a_lo, a_hi = max(d_lo, -2 ** 24), min(d_hi, 2 ** 24)
    level = int(rng.integers(act[0] + 1, act[1] + 1))

    def f(v):
        return int(_stage([v], q, s, zp, act)[0])

    t = so.first_reaching(f, a_lo, a_hi, level)
    near = np.arange(max(a_lo, t - 2000), min(a_hi, t + 2000) + 1)
    out = _stage(near, q, s, zp, act)
    assert np.all(np.diff(out) >= 0), "the output stage is not monotone here"
    assert np.array_equal(out >= level, near >= t)


@pytest.mark.parametrize("seed", range(RNG_CASES))
def test_threshold_is_exact_or_refused(seed):
    """threshold() on a two-code output (the saturate export's steep
    multipliers) matches the requantization on every accumulator around it;
    with a third code in between it refuses (None)."""
    rng = np.random.default_rng(1000 + seed)
    off, on = -128, 127
    q, s = quant.quantize_multiplier(float(rng.choice([3.0, 8.0, 16.0, 255.5, 0.7])))
    zp = int(rng.integers(-128, 0))
    lo_acc, hi_acc = int(rng.integers(-5000, -200)), int(rng.integers(200, 5000))
    f = lambda v: int(_stage([v], q, s, zp, (off, on))[0])   # noqa: E731
    t = so.threshold(f, lo_acc, hi_acc, (off, on))
    acc = np.arange(lo_acc, hi_acc + 1)
    out = _stage(acc, q, s, zp, (off, on))
    two_codes = np.all((out == off) | (out == on))
    if not two_codes:
        assert t is None
        return
    assert t is not None and np.array_equal(out == on, acc >= t)


@pytest.mark.parametrize("seed", range(20))
def test_spike_sum_thresholds_match_every_sum(seed):
    """A conv reading spikes, built like the saturate export (bias half a
    lattice step off, acc = bias + 255 S, M = 3): a spike exactly when the
    sum of the fired weights reaches the threshold, for every sum the
    weights can make; a bias that lands an accumulator on the ramp has no
    threshold."""
    rng = np.random.default_rng(2000 + seed)
    oc, k = 6, int(rng.integers(4, 40))
    w = rng.integers(-127, 128, size=(oc, k))
    bias = 255 * rng.integers(-20, 20, size=oc) + 127
    q, s = quant.quantize_multiplier(3.0)
    mult, shift = np.full(oc, q), np.full(oc, s)
    ts = so.spike_sum_thresholds(w, bias, 255, mult, shift, -128, (-128, 127), (-128, 127))
    assert ts is not None
    for c in range(oc):
        s_range = np.arange(np.minimum(w[c], 0).sum(), np.maximum(w[c], 0).sum() + 1)
        out = _stage(bias[c] + 255 * s_range, q, s, -128, (-128, 127))
        assert np.array_equal(out == 127, s_range >= ts[c]), c
    ramp = bias.copy()
    ramp[0] = 40       # acc = 40 + 255 S: 3 * 40 - 128 = -8, a third code
    assert so.spike_sum_thresholds(w, ramp, 255, mult, shift, -128, (-128, 127), (-128, 127)) is None


@pytest.mark.parametrize("seed", range(20))
def test_int8_thresholds_match_every_code(seed):
    """A 1x1 depthwise neuron, weights of both signs and zero: fires exactly
    when (x ^ neg) >= t and not never, for all 256 input codes."""
    rng = np.random.default_rng(3000 + seed)
    c = 16
    w = rng.integers(-127, 128, size=c)
    w[:2] = 0
    in_zp = int(rng.integers(-128, 128))
    # thresholds 63/127 of a step off the grid as the export places them: |acc| >= 63, M = 8
    bias = 127 * rng.integers(-128, 128, size=c) + 63 * np.sign(rng.normal(size=c)).astype(int)
    bias[0], bias[1] = 100, -100          # w = 0: always / never
    q, s = quant.quantize_multiplier(8.0)
    mult, shift = np.full(c, q), np.full(c, s)
    got = so.int8_thresholds(bias, w, in_zp, mult, shift, -128, (-128, 127), (-128, 127))
    x = np.arange(-128, 128)
    ref = np.stack([_stage(bias[i] + (x - in_zp) * w[i], q, s, -128, (-128, 127)) for i in range(c)])
    if not np.all((ref == -128) | (ref == 127)):
        assert got is None
        return
    t, neg, never = got
    fires = ((x[None, :] ^ neg[:, None]) >= t[:, None]) & ~never[:, None]
    assert np.array_equal(fires, ref == 127)
    assert never[1] and not never[0]


@pytest.mark.parametrize("seed", range(12))
def test_add_then_neuron_is_one_threshold_on_the_sum(seed):
    """ADD on TFLite's 2^20 grid, then a 1x1 depthwise neuron (rising and
    falling channels): the fused kernel's test d = R(b) + 2^19 a + k >= 0
    (xor the polarity) is the neuron's output on all 65,536 input pairs."""
    rng = np.random.default_rng(4000 + seed)
    s1, s2, s_out = (float(v) for v in rng.uniform(0.01, 0.2, size=3))
    left = 20
    twice = 2.0 * max(s1, s2)
    m1, sh1 = quant.quantize_multiplier(s1 / twice)
    m2, sh2 = quant.quantize_multiplier(s2 / twice)
    mo, sho = quant.quantize_multiplier(twice / ((1 << left) * s_out))
    p = dict(in_zp=int(rng.integers(-128, 128)), in2_zp=int(rng.integers(-128, 128)), out_zp=int(rng.integers(-20, 20)),
             act_min=-128, act_max=127, left_shift=left, m1=m1, s1=sh1, m2=m2, s2=sh2, mo=mo, so=sho)
    c = 12
    w = rng.integers(-127, 128, size=c)
    bias = 127 * rng.integers(-128, 128, size=c) + 63 * np.where(w >= 0, 1, -1)
    qn, sn = quant.quantize_multiplier(8.0)
    dw = {"bias": bias, "w": w, "in_zp": p["out_zp"], "mult": np.full(c, qn), "shift": np.full(c, sn),
          "out_zp": -128, "act": (-128, 127)}
    thr = so.add_thresholds(p, dw, (-128, 127))
    x = np.arange(-128, 128)
    r1, r2 = so.add_sums(p)
    s = (r1[:, None] + r2[None, :]).reshape(-1)
    o = _stage(s, mo, sho, p["out_zp"], (-128, 127))
    ref = np.stack([_stage(bias[i] + (o - p["out_zp"]) * w[i], qn, sn, -128, (-128, 127)) for i in range(c)])
    if not np.all((ref == -128) | (ref == 127)):
        assert thr is None
        return
    t, neg = thr
    assert np.array_equal((s[None, :] >= t[:, None]) != (neg[:, None] != 0), ref == 127)
    kernel = so.add_kernel_constants(p, t, neg)
    assert kernel is not None
    a_zp, b_zp = (p["in_zp"], p["in2_zp"]) if kernel["a"] == 0 else (p["in2_zp"], p["in_zp"])
    assert kernel["b_zp"] == b_zp
    a, b = np.meshgrid(x, x, indexing="ij")
    a, b = (a, b) if kernel["a"] == 0 else (b, a)
    rb = quant.multiply_by_quantized_multiplier((b.reshape(-1) - b_zp) * (1 << left), kernel["m"], kernel["sh"])
    d = rb[:, None] + (a.reshape(-1) * (1 << (left - 1)))[:, None] + kernel["k"][None, :]
    assert np.array_equal(((d >= 0) != (neg[None, :] != 0)).T, ref == 127)


def test_kernel_lane_orders_are_permutations():
    """The lane orders the generator stores weights and thresholds in are
    permutations of their blocks (s2mcu_spike.c derives each)."""
    for lanes, n in ((so.MVE16_LANES, 32), (so.MVE16_PARAMS, 32), (so.DSP16_LANES, 16), (so.MVE_ADD_LANES, 16)):
        assert sorted(lanes.tolist()) == list(range(n))
    # narrowing vectors 0 and 1 (2 and 3) into even and odd bytes gives channels in order
    narrowed = [so.MVE16_LANES[8 * (j % 2) + (j // 2) % 8 + 16 * (j // 16)] for j in range(32)]
    assert narrowed == list(range(32))


# ------------------------------------------------------ lowering and the C


@pytest.fixture(scope="module")
def s2nn(folded, calibration):
    from export.tflite.convert import convert

    return convert(folded[0], "int8", calibration)


def test_lowering_fuses_and_marks(s2nn):
    """The PreActResNet's ADDs absorb the BN + neuron after them, the 1x1
    subsample of the projection shortcut becomes the shortcut conv's stride,
    and every layer writing a spike tensor has thresholds."""
    from export.mcu.lower import lower
    from export.mcu.run import spike_codes

    program = lower(s2nn.flatbuffer, spike_codes(s2nn))
    fused = [l for l in program.layers if l.kind == "add"]
    assert fused and all(l.spike_out == (-128, 127) and "s_thr" in l.consts for l in fused if l.op.endswith("CONV_2D"))
    assert not [l for l in program.layers if l.kind == "avgpool" and l.params["k_h"] == 1]
    strided = [l for l in program.layers if l.kind == "conv" and l.params["k_h"] == 1 and l.params["s_h"] == 2]
    assert strided and all(l.spike_capable for l in strided)
    for l in program.layers:
        if program.tensors[program.root(l.outputs[0])].spike is not None and l.kind in ("conv", "dwconv"):
            assert l.spike_out is not None, l.name


def test_streams_are_planned_and_smaller_than_the_codes_plus_counts(s2nn):
    """spike_list: the spike tensors read only by spike_list convs are
    streams (HW (C + 1) bytes at most), written by their producers."""
    from export.mcu.generate import generate
    from export.mcu.lower import lower
    from export.mcu.run import spike_codes

    program = lower(s2nn.flatbuffer, spike_codes(s2nn))
    code = generate(program, "spike_list", target="cortex-m55")
    streams = [l for l in program.layers if l.params.get("out_stream")]
    assert streams and all(l.spike_out is not None for l in streams)
    for l in streams:
        t = program.root(l.outputs[0])
        n, h, w, c = program.tensors[t].shape
        assert code.plan.blocks[f"t{t}"].size == h * w * (c + 1)
    assert "S2_OUT_STREAM" not in code.files["model.c"]   # flags are numbers; the kernels read them
    assert "s2_add_spike(" in code.files["model.c"] and "s2_dwconv_neuron(" in code.files["model.c"]


@pytest.mark.parametrize("case", ["conv_then_depthwise", "dense"])
def test_spike_outputs_of_small_models_are_byte_identical(case, tmp_path):
    """A conv reading an image and a 3x3 depthwise reading its spikes, each
    feeding a saturate neuron (tests.export.helpers.two_neuron_model), and a
    Dense layer feeding one: thresholds on a dense input's accumulator and on
    the sum of fired weights; the host build of every layout against TFLM."""
    import keras

    from export.mcu.build import build_host, run_host
    from export.mcu.generate import generate
    from export.mcu.lower import LAYOUTS, lower
    from export.mcu.run import quantize_inputs, spike_codes, tflm_outputs
    from export.tflite.convert import convert, ensure_folded
    from s2nn_keras import S2Activation
    from tests.export.helpers import two_neuron_model

    if case == "dense":
        keras.utils.set_random_seed(3)
        inputs = keras.Input((6, 6, 2))
        h = keras.layers.Dense(24)(keras.layers.Flatten()(inputs))
        h = S2Activation(name="act")(keras.layers.BatchNormalization(name="bn")(h))
        model = keras.Model(inputs, keras.layers.Dense(5)(h))
        shape = (6, 6, 2)
    else:
        model, shape = two_neuron_model((10, 10, 2), 0), (10, 10, 2)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64,) + shape).astype("float32")
    conv = convert(ensure_folded(model), "int8", lambda: [[data]])
    program = lower(conv.flatbuffer, spike_codes(conv))
    marked = [l for l in program.layers if l.spike_out is not None]
    assert marked and any("acc_thr" in l.consts for l in marked)
    inputs_q = quantize_inputs(conv.flatbuffer, data[:40])
    ref, _ = tflm_outputs(conv.flatbuffer, inputs_q, arena_bytes=1 << 20)
    for layout in LAYOUTS:
        exe = build_host(generate(program, layout, target="host"), str(tmp_path / layout))
        got = run_host(exe, inputs_q, (ref.shape[1],))["outputs"]
        assert np.array_equal(got, ref), layout
