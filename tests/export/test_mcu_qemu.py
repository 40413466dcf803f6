"""Microcontroller firmware under QEMU (slow: CI runs them after installing
gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm): the
boards' start-up code and MVE, the instruction counter, and the firmware
of the shared trained PreActResNet byte-compared with the tflite-micro
interpreter on both cores, every layout; the CLI end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from export.mcu.firmware import BOARDS, available, build_firmware, run_qemu
from export.mcu.generate import generate
from export.mcu.lower import lower
from export.mcu.config import McuConfig
from export.mcu.run import quantize_inputs, run_mcu, spike_codes, tflm_outputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_QEMU = 30
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")]


@pytest.fixture(scope="module")
def s2nn(folded, calibration, fmnist):
    from export.tflite.convert import convert

    conv = convert(folded[0], "int8", calibration)
    inputs = quantize_inputs(conv.flatbuffer, fmnist[2][:N_QEMU])
    ref, arena = tflm_outputs(conv.flatbuffer, inputs)
    return conv, inputs, ref, arena


@pytest.mark.parametrize("core", sorted(BOARDS))
def test_firmware_is_byte_identical_and_counts_are_deterministic(s2nn, tmp_path, core):
    """Each layout's firmware gives TFLM's logits on every image; MVE runs
    on the M55 (self-test, MVFR1) and not on the M4; SysTick ticks once per
    40 (M4, 25 MHz) or 31.25 (M55, 32 MHz) instructions under -icount
    shift=0; two runs count the same; the spike layouts report fired inputs."""
    conv, inputs, ref, _ = s2nn
    program = lower(conv.flatbuffer, spike_codes(conv))
    totals = {}
    for layout in ("dense", "spike_list", "spike_mask"):
        fw = build_firmware(generate(program, layout, target=core), core, str(tmp_path / layout))
        run = run_qemu(fw, inputs, len(program.layers), 10)
        assert np.array_equal(run.outputs, ref), (core, layout)
        assert run.instructions_per_tick == pytest.approx(1e9 / BOARDS[core].sysclk_hz, rel=1e-4)
        assert run.mve == (1 if core == "cortex-m55" else 2)
        assert ((run.mvfr1 >> 8) & 0xF) == (2 if core == "cortex-m55" else 0)
        # the layers add up to the inference (each mark costs a few instructions)
        per_image = run.layer_instructions.sum(axis=1)
        assert np.all(np.abs(per_image - run.instructions) <= 40 * len(program.layers) + 200)
        again = run_qemu(fw, inputs[:3], len(program.layers), 10)
        assert np.array_equal(again.instructions, run.instructions[:3])
        assert np.array_equal(again.layer_instructions, run.layer_instructions[:3])
        totals[layout] = run.instructions.mean()
        spike = [l.index for l in program.spike_layers]
        if layout != "dense":
            assert run.fired[:, spike].sum() > 0
        assert 0 < run.stack_used < run.stack_reserved
        assert fw.flash_bytes > len(conv.flatbuffer) // 2 and fw.static_ram_bytes > 0
    # which layout is faster depends on the model and core (the width-8 test
    # model's M55 spike lists barely pay off); run_mcu measures and chooses
    assert totals["spike_list"] < totals["spike_mask"], totals


def test_run_mcu_report(s2nn, fmnist, tmp_path):
    """run_mcu end to end on the M55: host and QEMU outputs byte-identical,
    the layout of each spike layer chosen by measurement, and the figures
    the report promises."""
    conv, _, _, arena = s2nn
    report = run_mcu(conv, fmnist[2][:N_QEMU], McuConfig(cores=("cortex-m55",), num_images=N_QEMU, measure_images=5,
                                                      output_dir=str(tmp_path)))
    assert all(h["fraction"] == 1.0 for h in report["host"].values())
    e = report["cores"]["cortex-m55"]
    assert e["bit_exact"]["fraction"] == 1.0 and e["dense_bit_exact"]["equal"] == e["dense_bit_exact"]["images"]
    assert e["deterministic"] and e["mve_self_test"] == "passed"
    # per layer the fewest measured instructions: the chosen build is no slower than all-dense
    assert e["instructions"]["mean"] <= e["instructions_dense"]["mean"] + 3 * report["layers"] + 100
    for row in e["per_layer"]:
        measured = {k: v for k, v in row["instructions"].items() if k != "chosen"}
        if row["name"] in e["layouts"]:
            assert measured[row["layout"]] == min(measured.values()), row
            assert 0 < row["input_firing_rate"] < 1
    # The fit runs over (spike-driven layer, image) points. Its coefficients
    # mean something only over many layers (the quickstart's: benchmarks.mcu);
    # this width-8 model has two or three such layers, where two parameters
    # nearly interpolate the layer means, so only the bookkeeping is checked.
    spiking = [name for name, layout in e["layouts"].items() if layout != "dense"]
    assert spiking and e["fit"]["points"] == N_QEMU * len(spiking)
    for fit in (e["fit"]["instructions_vs_ac"], e["fit"]["instructions_vs_ac_and_outputs"]):
        assert fit["r2"] <= 1.0 and np.isfinite(fit["per_ac"])
    assert e["ram_bytes"] == e["static_ram_bytes"] + e["stack_bytes"]
    assert report["tflm_arena_bytes"] == arena
    assert os.path.isfile(tmp_path / "cortex-m55" / "chosen" / "model.c")
    assert os.path.isfile(tmp_path / "cortex-m55" / "chosen" / "build.sh")


def test_cli_end_to_end(trained_model, tmp_path):
    path = str(tmp_path / "model.keras")
    trained_model.save(path)
    out = tmp_path / "mcu"
    proc = subprocess.run([sys.executable, "-m", "export.mcu", "--model", path, "--output_dir", str(out),
                           "--cores", "cortex-m4", "--images", "12", "--measure_images", "4",
                           "--num_calibration", "100", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "mcu_report.json").read_text())
    assert report["cores"]["cortex-m4"]["bit_exact"] == {"images": 12, "equal": 12, "fraction": 1.0}
    assert report["spike_tensors"] > 0 and report["rewrites"] == ["bn_as_depthwise", "gap_as_average_pool"]


def test_reporter_in_export_run(trained_model, fmnist, tmp_path):
    """export.mcu.reporter plugs into export_run: report["formats"]["int8"]["mcu"]."""
    from export import mcu
    from export.config import ExportConfig
    from export.pipeline import export_run

    x, y = fmnist[2][:40], fmnist[3][:40]
    result = export_run(trained_model, ExportConfig(
        str(tmp_path), x, y, formats=("int8",), calibration_images=fmnist[0][-100:], max_tflm_examples=20,
        c_array=False, verbose=False, spike_checks=False,
        reporters=(mcu.reporter(x[:8], mcu.McuConfig(cores=("cortex-m55",), num_images=8, measure_images=3)),)))
    figures = result["formats"]["int8"]["mcu"]
    assert figures["cores"]["cortex-m55"]["bit_exact"]["fraction"] == 1.0
    names = {c["name"] for c in result["checks"]["results"]}
    assert {"int8.mcu.cortex-m55.bit_exact", "int8.mcu.cortex-m55.deterministic"} <= names
    assert (tmp_path / "mcu").is_dir()       # the C and firmware, published with the export
    assert figures["spike_layers"] and figures["tflite_bytes"] == result["formats"]["int8"]["size_bytes"]
    assert "microcontroller C" in mcu.format_summary(figures)


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder"])
def test_mlperf_tiny_on_both_cores(name, tmp_path):
    """Every MLPerf Tiny model runs on both boards, byte-identical with TFLM."""
    from tests import zoo
    from export.tflite.convert import convert

    model = zoo.trained(name)
    x_train, _, x_test, _ = zoo.data(name)

    def representative():
        for i in range(0, 200, 50):
            yield [x_train[-200:][i:i + 50]]

    conv = convert(model, "int8", representative)
    report = run_mcu(conv, x_test[:10], McuConfig(cores=("cortex-m4", "cortex-m55"), num_images=10, measure_images=3,
                                                  output_dir=str(tmp_path)))
    for core, e in report["cores"].items():
        assert e["bit_exact"]["fraction"] == 1.0 and e["deterministic"], (name, core)
    assert all(h["fraction"] == 1.0 for h in report["host"].values())
