"""Microcontroller C (export.mcu), host build: TFLite's integer arithmetic,
lowering, the memory plan, and the generated C byte-compared with the
tflite-micro interpreter on the shared trained PreActResNet (every layout),
a zoo model, and one-op models; model.h's description of the input and
output; the sources' target guard (arm-none-eabi-gcc -c, no QEMU). QEMU
runs are in test_mcu_qemu.py (slow)."""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export import quant
from export.errors import InputError
from export.mcu.build import KERNEL_SOURCES, ToolError, build_host, run_host, run_tool, write_sources
from export.mcu.config import McuConfig, McuConfigError
from export.mcu.generate import division_magic, generate, spike_accumulator_bound
from export.mcu.lower import DENSE, SPIKE_LAYOUTS, UnsupportedModelError, lower
from export.mcu.run import quantize_inputs, spike_codes, tflm_outputs
from export.mcu.targets import CORES, TARGETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_HOST = 300
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler (gcc)")


# ---------------------------------------------------------------- arithmetic


def _exact_srdhm(a, b):
    """floor((a b + 2^30) / 2^31) as gemmlowp defines it: a nudge of
    +-2^30 by sign and C's truncating division."""
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    num = ab + nudge
    q = abs(num) // (1 << 31)
    return q if num >= 0 else -q


def _exact_rdbp(x, e):
    """x / 2^e rounded half away from zero (exact rationals)."""
    from fractions import Fraction

    v = Fraction(x, 1 << e)
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


def test_srdhm_and_rdbp_match_their_definitions():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 4000), [-2 ** 31, 2 ** 31 - 1, 0, 1, -1, -2 ** 30, 2 ** 30]])
    b = np.concatenate([rng.integers(0, 2 ** 31, 4000), [-2 ** 31, 2 ** 31 - 1, 2 ** 30, 2 ** 30, 2 ** 30, 2 ** 30,
                                                          2 ** 30]])
    got = quant.srdhm(a, b)
    for x, y, g in zip(a.tolist(), b.tolist(), got.tolist()):
        expect = 2 ** 31 - 1 if x == y == -2 ** 31 else _exact_srdhm(x, y)
        assert g == expect, (x, y)
    x = rng.integers(-2 ** 31, 2 ** 31, 3000)
    e = rng.integers(0, 31, 3000)
    ties = np.array([-3, -1, 1, 3, -5, 5, -2 ** 31, 2 ** 31 - 1])  # x / 2 = +-.5, +-1.5, ...
    for xi, ei, g in zip(np.concatenate([x, ties]).tolist(), np.concatenate([e, np.ones(8, int)]).tolist(),
                         quant.rdbp(np.concatenate([x, ties]), np.concatenate([e, np.ones(8, int)])).tolist()):
        assert g == _exact_rdbp(xi, ei), (xi, ei)


def test_quantize_multiplier_edge_cases():
    for m in (0.25, 0.5, 1.0, 3.0, 255.5, 1e-3, 0.7071067811865476):
        q, s = quant.quantize_multiplier(m)
        assert 2 ** 30 <= q < 2 ** 31 and abs(q * 2.0 ** (s - 31) - m) <= m * 2.0 ** -30
    # f * 2^31 rounds up to 2^31: becomes 2^30 with the exponent one higher
    q, s = quant.quantize_multiplier(1.0 - 2.0 ** -33)
    assert (q, s) == (2 ** 30, 1)
    assert quant.quantize_multiplier(0.0) == (0, 0)
    assert quant.quantize_multiplier(2.0 ** -40) == (0, 0)          # shift < -31 flushes to zero


def test_double_and_single_rounding_differ_on_ties():
    """The two TFLite variants really are different functions (so the
    experiment in test_interpreter_uses_double_rounding can tell them apart)."""
    q, s = quant.quantize_multiplier(0.25)   # (2^30, -1): a rounding doubling high mul, then a shift
    x = np.array([-6, -2, 2, 6])             # x / 4 on a tie
    assert quant.multiply_by_quantized_multiplier(x, q, s).tolist() == [-2, -1, 1, 2]
    assert quant.multiply_single_rounding(x, q, s).tolist() == [-1, 0, 1, 2]


def test_division_magic_is_exact():
    for n in (2, 3, 9, 16, 25, 49, 100, 144, 1024):
        m, s = division_magic(n)
        u = np.arange(128 * n + n // 2 + 1, dtype=np.uint64)
        assert m > 0 and np.array_equal((u * np.uint64(m)) >> np.uint64(32 + s), u // np.uint64(n)), n


def test_spike_accumulator_bound():
    w = np.array([[[[100, -20]], [[100, -127]]], [[[-3, 0]], [[0, 0]]]], np.int8).reshape(2, 1, 1, 4)
    assert spike_accumulator_bound(w) == 200   # channel 0: +200 / -20; channel 1: 0 / -130


# ------------------------------------------------------------ the test model


def _xq(x):
    return x.astype("float32") / 255.0 if x.dtype == np.uint8 else x


@pytest.fixture(scope="module")
def s2nn_int8(folded, calibration):
    from export.tflite.convert import convert

    return convert(folded[0], "int8", calibration)


@pytest.fixture(scope="module")
def reference(s2nn_int8, fmnist):
    inputs = quantize_inputs(s2nn_int8.flatbuffer, fmnist[2][:N_HOST])
    outputs, arena = tflm_outputs(s2nn_int8.flatbuffer, inputs)
    return inputs, outputs, arena


def test_lowering_finds_the_spike_driven_layers(s2nn_int8):
    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    kinds = [l.kind for l in program.layers]
    # the neurons after the ADDs are fused into them, the shortcut's 1x1 subsample is its conv's stride
    # (export.mcu.spike_out): one depthwise neuron left, the stem's
    assert kinds.count("conv") == 6 + 1 and kinds.count("dwconv") == 1 and kinds.count("add") == 2
    assert all(l.spike_out is not None for l in program.layers if l.kind == "add")
    # every conv reading a neuron's spikes (directly or through the 1x1
    # subsampling pool) is a spike-driven candidate; the stem (image) and
    # the head (pooled averages) are not
    spiking = {l.name for l in program.spike_layers}
    readers = [l for l in program.layers if l.kind == "conv" and program.tensors[program.root(l.inputs[0])].spike]
    assert spiking == {l.name for l in readers} and len(spiking) == 5
    assert all(l.layouts == (DENSE,) + SPIKE_LAYOUTS for l in program.spike_layers)
    assert program.layers[0].layouts == (DENSE,)
    codes = spike_codes(s2nn_int8)
    assert len(codes) == len(s2nn_int8.spike_tensors) and set(codes.values()) == {(-128, 127)}


@pytest.mark.parametrize("layout", ["dense", "spike_list", "spike_mask"])
def test_host_build_is_byte_identical_with_tflm(s2nn_int8, reference, tmp_path, layout):
    """The generated C, compiled with gcc, gives TFLM's int8 logits byte for
    byte on every test image, in every layout; the spike kernels check that
    each spike tensor held only its two codes (-DS2_CHECK_SPIKES) and count
    the inputs that fired."""
    inputs, ref, _ = reference
    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    code = generate(program, layout, target="host")
    exe = build_host(code, str(tmp_path))
    got = run_host(exe, inputs, (10,), layers=len(program.layers))
    assert got["outputs"].shape == (N_HOST, 10)
    mismatched = np.flatnonzero(np.any(got["outputs"] != ref, axis=1))
    assert mismatched.size == 0, f"{mismatched.size} images differ, first {mismatched[:5]}"
    fired = got["fired"]
    for l in program.layers:
        if layout != DENSE and l.spike_capable:
            p = l.params
            assert 0 < fired[:, l.index].mean() < p["in_h"] * p["in_w"] * p["in_c"], l.name
        else:
            assert not fired[:, l.index].any(), l.name


def test_interpreter_uses_double_rounding(s2nn_int8, reference, tmp_path):
    """Which MultiplyByQuantizedMultiplier the tflite-micro wheel runs,
    measured: the default (double-rounding) build matches it on every image
    (test above); the same C built with TFLITE_SINGLE_ROUNDING's variant
    does not."""
    inputs, ref, _ = reference
    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    code = generate(program, "dense", target="host")
    write_sources(code, str(tmp_path), extra=("host_main.c",))
    exe = str(tmp_path / "single")
    run_tool(["gcc", "-O2", "-DS2_SINGLE_ROUNDING", "-o", exe, "model.c", *KERNEL_SOURCES, "host_main.c"],
             cwd=str(tmp_path))
    got = run_host(exe, inputs, (10,))["outputs"]
    differ = np.any(got != ref, axis=1)
    assert differ.any(), "the single-rounding build matches TFLM too: the experiment cannot tell the variants apart"
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 8


def test_memory_plan(s2nn_int8, reference):
    """The activation buffer: no two blocks alive at the same time overlap,
    elementwise ops reuse their input, and it is below TFLM's arena."""
    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    for layout in ("dense", "spike_list"):
        code = generate(program, layout, target="cortex-m55")
        blocks = list(code.plan.blocks.values())
        for i, a in enumerate(blocks):
            assert a.offset % 16 == 0 and a.offset + a.size <= code.arena_bytes
            for b in blocks[i + 1:]:
                if a.first <= b.last and b.first <= a.last:
                    assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
        assert code.arena_bytes >= code.plan.peak_live_bytes()
        assert code.plan.shared, "no elementwise layer wrote over its input"
        assert code.arena_bytes < reference[2], (layout, code.arena_bytes, reference[2])
    # the input tensor is never overwritten before the first layer reads it
    assert code.plan.offset(f"t{program.root(program.input)}") is not None


def test_zoo_model_ds_cnn_is_byte_identical(tmp_path):
    """MLPerf Tiny DS-CNN (depthwise-separable, spike-driven depthwise and
    pointwise convs) through the generator: host build of each layout
    against TFLM."""
    from tests import zoo
    from export.tflite.convert import convert

    model = zoo.trained("ds_cnn")
    x_train, _, x_test, _ = zoo.data("ds_cnn")

    def representative():
        for i in range(0, 200, 50):
            yield [x_train[-200:][i:i + 50]]

    conv = convert(model, "int8", representative)
    program = lower(conv.flatbuffer, spike_codes(conv))
    assert {l.kind for l in program.spike_layers} == {"conv", "dwconv"}
    inputs = quantize_inputs(conv.flatbuffer, x_test[:100])
    ref, _ = tflm_outputs(conv.flatbuffer, inputs)
    for layout in ("dense", "spike_list", "spike_mask"):
        exe = build_host(generate(program, layout, target="host"), str(tmp_path / layout))
        got = run_host(exe, inputs, (ref.shape[1],))["outputs"]
        assert np.array_equal(got, ref), layout


# ----------------------------------------------------- one-op models and errors


def _single_op_flatbuffer(layer_fn, input_shape, seed=0):
    import keras

    from export.tflite.convert import convert

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, layer_fn(inputs))
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(64,) + tuple(input_shape)).astype("float32")
    return convert(model, "int8", lambda: [[data]]).flatbuffer, data


@pytest.mark.parametrize("case", ["maxpool_same", "avgpool_same", "depthwise_mult2_dilated", "dense_relu6",
                                  "mean_keepdims", "conv_strided_valid"])
def test_single_ops_are_byte_identical(case, tmp_path):
    """Ops and options the quickstart model does not use (SAME padding at
    borders, depth multiplier, dilation, a fused RELU6 clamp, MEAN with
    keepdims over 99 positions and its own output grid, VALID strided
    conv), each against TFLM. (A fixed TFLM arena: its MEAN kernel crashes
    the process, instead of failing, in too small an arena, which the
    arena bisection would try.)"""
    import keras

    layers = {
        "maxpool_same": lambda x: keras.layers.MaxPooling2D(3, 2, padding="same")(keras.layers.Conv2D(6, 3)(x)),
        "avgpool_same": lambda x: keras.layers.AveragePooling2D(3, 2, padding="same")(keras.layers.Conv2D(6, 3)(x)),
        "depthwise_mult2_dilated": lambda x: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, dilation_rate=2,
                                                                           padding="same")(x),
        "dense_relu6": lambda x: keras.layers.Dense(7, activation="relu6")(keras.layers.Flatten()(x)),
        "mean_keepdims": lambda x: keras.ops.mean(keras.layers.Conv2D(5, 1)(x), axis=(1, 2), keepdims=True),
        "conv_strided_valid": lambda x: keras.layers.Conv2D(9, (3, 2), strides=(2, 3))(x),
    }
    flat, data = _single_op_flatbuffer(layers[case], (11, 9, 3))
    program = lower(flat)
    inputs = quantize_inputs(flat, data[:40])
    ref, _ = tflm_outputs(flat, inputs, arena_bytes=1 << 20)
    for hwio in (0, 32):   # the OHWI dot products, and the per-tap HWIO path (Helium's for small K)
        exe = build_host(generate(program, "dense", target="host", dense_hwio_taps=hwio), str(tmp_path / str(hwio)))
        got = run_host(exe, inputs, (ref.shape[1],))["outputs"]
        assert np.array_equal(got, ref), (case, hwio)


def test_unsupported_op_is_one_clear_error():
    import keras

    flat, _ = _single_op_flatbuffer(lambda x: keras.layers.Activation("tanh")(keras.layers.Conv2D(4, 3)(x)), (8, 8, 1))
    with pytest.raises(UnsupportedModelError, match=r"operator \d+ \(TANH\) has no microcontroller kernel; "
                                                    r"supported: CONV_2D"):
        lower(flat)


def test_float_model_is_refused():
    import keras

    from export.tflite.convert import to_tflite

    inputs = keras.Input((6, 6, 1))
    flat = to_tflite(keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)), "float32")
    with pytest.raises(UnsupportedModelError, match="FLOAT32.*int8"):
        lower(flat)


def test_cli_bad_input_is_one_error_line(tmp_path):
    for args, needle in ((["--model", str(tmp_path / "missing.keras"), "--output_dir", str(tmp_path)],
                          "does not exist"),
                         (["--tflite", __file__, "--output_dir", str(tmp_path)], "is not a .tflite file"),
                         (["--model", "x.keras", "--output_dir", str(tmp_path), "--cores", "cortex-m9"],
                          "--cores takes a comma-separated subset of cortex-m0plus,cortex-m3,cortex-m4,cortex-m7,"
                          "cortex-m33,cortex-m55,generic, got 'cortex-m9'")):
        proc = subprocess.run([sys.executable, "-m", "export.mcu", *args], cwd=REPO, capture_output=True, text=True)
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("python -m export.mcu: error:"), \
            proc.stderr
        assert needle in lines[0], lines[0]


# ------------------------------------------------------- model.h and targets


MODEL_H_MAIN = r"""
#include <stdio.h>
#include "model.h"
/* real_main IMAGES CODES LOGITS: per image (S2_MODEL_INPUT_SIZE floats), the
 * int8 codes model.h's helper gives and the dequantized logits */
int main(int argc, char **argv) {
  FILE *fi = fopen(argv[1], "rb"), *fc = fopen(argv[2], "wb"), *fl = fopen(argv[3], "wb");
  float x[S2_MODEL_INPUT_SIZE];
  const int shape[S2_MODEL_INPUT_RANK] = S2_MODEL_INPUT_SHAPE;
  int size = 1;
  for (int i = 0; i < S2_MODEL_INPUT_RANK; i++) size *= shape[i];
  if (!fi || !fc || !fl || size != S2_MODEL_INPUT_SIZE || S2_MODEL_INPUT_FLOAT) return 2;
  while (fread(x, sizeof(float), S2_MODEL_INPUT_SIZE, fi) == S2_MODEL_INPUT_SIZE) {
    int8_t *in = (int8_t *)s2_model_input();
    for (int i = 0; i < S2_MODEL_INPUT_SIZE; i++) in[i] = s2_model_quantize_input(x[i]);
    fwrite(in, 1, S2_MODEL_INPUT_SIZE, fc);
    s2_model_invoke();
    const int8_t *out = (const int8_t *)s2_model_output();
    for (int i = 0; i < S2_MODEL_OUTPUT_SIZE; i++) {
      const float logit = s2_model_dequantize_output(out[i]);
      fwrite(&logit, sizeof(float), 1, fl);
    }
  }
  return fclose(fc) || fclose(fl);
}
"""


def _defines(header):
    out = {}
    for line in header.splitlines():
        if line.startswith("#define "):
            parts = line.split(None, 2)
            if len(parts) == 3:
                out[parts[1]] = parts[2]
    return out


def test_model_h_quantizes_an_image_and_dequantizes_the_logits(s2nn_int8, reference, fmnist, tmp_path):
    """model.h carries the input's and output's shape, scale and zero point
    (the flatbuffer's), and its helpers quantize a real input as Python's
    export.tflite.runtimes.quantize does (ties, saturation and NaN-free
    extremes included) and dequantize a logit as runtimes.dequantize does:
    a C program feeds float images and reads float logits, TFLM's exactly."""
    from export.tflite.flatbuffer import read_model
    from export.tflite.runtimes import dequantize

    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    code = generate(program, "spike_list", target="host")
    graph = read_model(s2nn_int8.flatbuffer).main
    t_in, t_out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    d = _defines(code.files["model.h"])
    for role, t in (("INPUT", t_in), ("OUTPUT", t_out)):
        assert np.float32(d[f"S2_MODEL_{role}_SCALE"].rstrip("f")) == np.float32(t.quantization.scales[0])
        assert int(d[f"S2_MODEL_{role}_ZERO_POINT"]) == int(t.quantization.zero_points[0])
        assert d[f"S2_MODEL_{role}_SHAPE"] == "{" + ", ".join(str(int(s)) for s in t.shape) + "}"
    images = _xq(fmnist[2][:40])
    scale = np.float32(t_in.quantization.scales[0])
    rng = np.random.default_rng(0)
    k = rng.integers(-140, 140, images[0].size)
    odd = images.copy()
    odd[0] = ((k + 0.5) * np.float64(scale)).astype(np.float32).reshape(odd[0].shape)   # near ties
    odd[1] = rng.normal(0.0, 2.0, odd[1].shape).astype(np.float32)                       # saturates
    images = np.concatenate([images, odd[:2]])
    write_sources(code, str(tmp_path))
    (tmp_path / "real_main.c").write_text(MODEL_H_MAIN)
    exe = str(tmp_path / "real_main")
    run_tool(["gcc", "-O2", "-std=c99", "-Wall", "-Wno-unused-function", "-o", exe, "model.c", *KERNEL_SOURCES,
              "real_main.c"], cwd=str(tmp_path))
    images.tofile(tmp_path / "images.bin")
    subprocess.run([exe, "images.bin", "codes.bin", "logits.bin"], cwd=str(tmp_path), check=True)
    codes = np.fromfile(tmp_path / "codes.bin", np.int8).reshape(len(images), -1)
    assert np.array_equal(codes, quantize_inputs(s2nn_int8.flatbuffer, images))
    logits = np.fromfile(tmp_path / "logits.bin", np.float32).reshape(len(images), -1)
    details = {"dtype": np.int8, "quantization_parameters": {"scales": t_out.quantization.scales,
                                                              "zero_points": t_out.quantization.zero_points}}
    ref = reference[1][:40]
    assert np.array_equal(logits[:40], dequantize(ref, details))


ARM_GCC = shutil.which("arm-none-eabi-gcc")
#: (sources generated for, compiler flags, compiles?)
GUARD_CASES = [
    ("cortex-m55", TARGETS["cortex-m55"].cpu_flags, True),
    ("cortex-m55", ("-mcpu=cortex-m4", "-mfloat-abi=hard", "-mthumb"), False),
    ("cortex-m55", ("-mcpu=cortex-m55", "-mfloat-abi=soft", "-mthumb"), False),
    ("cortex-m55", ("-mcpu=cortex-m7", "-mfloat-abi=hard", "-mthumb"), False),
    ("cortex-m55", ("-mcpu=cortex-m33", "-mfloat-abi=hard", "-mthumb"), False),
    ("cortex-m4", TARGETS["cortex-m4"].cpu_flags, True),
    ("cortex-m4", ("-mcpu=cortex-m4", "-mthumb"), False),
    ("cortex-m4", ("-mcpu=cortex-m55", "-mfloat-abi=hard", "-mthumb"), False),
    ("cortex-m4", ("-mcpu=cortex-m7", "-mfloat-abi=hard", "-mthumb"), False),
    ("host", ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb"), False),
    ("host", ("-mcpu=cortex-m55", "-mfloat-abi=hard", "-mthumb"), False),
]


@pytest.fixture(scope="module")
def sources(s2nn_int8, tmp_path_factory):
    """The generated sources of each target, spike_list layouts, in a directory each."""
    program = lower(s2nn_int8.flatbuffer, spike_codes(s2nn_int8))
    out = {}
    for name in TARGETS:
        d = tmp_path_factory.mktemp(name)
        write_sources(generate(program, "spike_list", target=name), str(d))
        out[name] = d
    return out


@pytest.mark.skipif(ARM_GCC is None, reason="needs arm-none-eabi-gcc")
@pytest.mark.parametrize("generated_for,flags,compiles", GUARD_CASES,
                         ids=[f"{t}-on-{'_'.join(f.split('=')[-1] for f in fl[:2])}" for t, fl, _ in GUARD_CASES])
def test_sources_compile_only_for_their_target(sources, generated_for, flags, compiles):
    """Sources generated for one target stop any other compiler target with
    an #error naming the flags they were generated for (a Cortex-M55 plan
    built for a Cortex-M4, or with the soft-float ABI, would compute wrong
    outputs without a warning); the right flags compile, kernels included."""
    files = ["model.c"] + ([*KERNEL_SOURCES] if compiles else [])
    proc = subprocess.run([ARM_GCC, *flags, "-O2", "-std=c99", "-c", *files], cwd=str(sources[generated_for]),
                          capture_output=True, text=True)
    if compiles:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0
    expected = ("the host build" if generated_for == "host" else " ".join(TARGETS[generated_for].cpu_flags))
    assert f"#error \"s2_model was generated for {expected}" in proc.stderr, proc.stderr


def test_core_sources_refuse_the_host_compiler(sources):
    for core in CORES:
        proc = subprocess.run(["gcc", "-c", "model.c"], cwd=str(sources[core]), capture_output=True, text=True)
        assert proc.returncode != 0 and f"s2_model was generated for {' '.join(TARGETS[core].cpu_flags)}" \
            in proc.stderr, proc.stderr


def test_builds_refuse_code_of_another_target(s2nn_int8, tmp_path):
    from export.mcu.firmware import build_firmware

    program = lower(s2nn_int8.flatbuffer)
    with pytest.raises(ValueError, match="build_host builds code generated for target='host'"):
        build_host(generate(program, "dense", target="cortex-m55"), str(tmp_path / "h"))
    with pytest.raises(ValueError, match="generated for host cannot be cortex-m4 firmware"):
        build_firmware(generate(program, "dense", target="host"), "cortex-m4", str(tmp_path / "f"))


def test_mcu_config_is_checked():
    assert McuConfig(cores=["cortex-m55", "cortex-m55"]).cores == ("cortex-m55",)
    assert McuConfig().cores == ("cortex-m4", "cortex-m55") and McuConfig(cores=CORES).cores == CORES
    assert McuConfig(layouts={"stem_conv": "dense"}).layouts == {"stem_conv": "dense"}
    for kwargs, needle in (({"cores": ("cortex-m9",)}, "unknown core 'cortex-m9'"),
                           ({"layouts": "sparse"}, "unknown layout 'sparse'"),
                           ({"layouts": {0: "auto"}}, "unknown layout 'auto'"),
                           ({"num_images": 0}, "num_images must be a positive integer"),
                           ({"host_images": 2.5}, "host_images must be a positive integer")):
        with pytest.raises(McuConfigError, match=needle):
            McuConfig(**kwargs)
    with pytest.raises(TypeError):
        McuConfig(("cortex-m4",))    # keyword arguments only


def test_mcu_errors_are_input_errors():
    """The command lines exit 2 on them (export.errors.InputError), and
    code catching their built-in bases still does."""
    assert issubclass(UnsupportedModelError, InputError) and issubclass(UnsupportedModelError, ValueError)
    assert issubclass(ToolError, InputError) and issubclass(ToolError, RuntimeError)
    assert issubclass(McuConfigError, InputError) and issubclass(McuConfigError, ValueError)


def test_run_mcu_reads_the_flatbuffer_once(s2nn_int8, fmnist, monkeypatch):
    """One parse per run: lowering, the spike codes, the input quantization
    and the TFLM reference all take the parsed model; the host check of
    every layout is byte-identical with TFLM."""
    from export.mcu.run import run_mcu
    from export.tflite import flatbuffer

    calls = []
    real = flatbuffer.read_model
    monkeypatch.setattr(flatbuffer, "read_model", lambda model: calls.append(1) or real(model))
    report = run_mcu(s2nn_int8, fmnist[2][:6], McuConfig(cores=(), model_name="s2nn"))
    assert len(calls) == 1
    assert report["model"] == "s2nn" and report["spike_tensors"] == len(s2nn_int8.spike_tensors)
    assert set(report["host"]) == {"dense", "spike_list", "spike_mask"}
    assert all(h["equal"] == h["images"] == 6 for h in report["host"].values()) and report["cores"] == {}


def test_layer_table_rate_comes_from_a_run_where_the_layer_is_spike_driven():
    """A uniform run gives a layer without that layout the dense kernel (no
    ``spike_list`` for a Dense of more than 255 inputs, e.g. one reading a
    CONCATENATION of spikes), which records no fired inputs: the per-layer
    table takes the rate from a run where the layer is spike-driven, and
    gives none for a layer that runs dense everywhere (never a rate of 0)."""
    from types import SimpleNamespace as NS

    from export.mcu.run import _layer_table

    p = {"in_h": 1, "in_w": 1, "in_c": 640}
    layers = [NS(index=i, name=f"fc{i}", op="FULLY_CONNECTED", macs=640 * 3, params=p, spike_capable=True)
              for i in range(2)]
    instr = np.full((2, 2), 100)
    runs = {DENSE: NS(layer_instructions=instr, fired=np.zeros((2, 2), np.uint32)),
            "spike_list": NS(layer_instructions=instr, fired=np.zeros((2, 2), np.uint32)),   # fc0 dense here
            "spike_mask": NS(layer_instructions=instr, fired=np.array([[64, 0], [128, 0]], np.uint32)),
            "chosen": NS(layer_instructions=instr, fired=np.zeros((2, 2), np.uint32))}
    dense = {0: DENSE, 1: DENSE}
    run_layouts = {DENSE: dense, "spike_list": dense, "spike_mask": {0: "spike_mask", 1: DENSE}, "chosen": dense}
    rows = _layer_table(NS(layers=layers), runs, dense, run_layouts)
    assert rows[0]["input_firing_rate"] == pytest.approx(96 / 640)
    assert rows[0]["ac_operations"] == pytest.approx(96 / 640 * 640 * 3)
    assert "input_firing_rate" not in rows[1]
