"""Microcontroller firmware under QEMU (slow: CI runs them after installing
gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm): the
boards' start-up code and MVE, the instruction counter (its calibration
on every board's clock), and the firmware of the shared trained
PreActResNet byte-compared with the tflite-micro interpreter on every
board (the Cortex-M3, M4, M7, M33 and M55; the M0+ on its stand-in, the
microbit's Cortex-M0, with a model small enough for its 16 KiB), every
layout; the CLIs end to end from the one verified model_int8.tflite, an
MCU step that fails leaving the verified export published, and the MCU
table of an export whose checks failed."""

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


@pytest.fixture(scope="module")
def tiny(fmnist):
    """A PreActResNet small enough for the microbit's 16 KiB (stride-2
    stem, width 8: a 5 KiB activation buffer), briefly trained, int8."""
    import keras

    from export.tflite.convert import convert
    from export.transform.fold import fold_batchnorm_with_report
    from s2nn_keras.models import PreActResNet

    x_train, y_train = fmnist[0][:3000], fmnist[1][:3000]
    keras.utils.set_random_seed(2)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8, stem_stride=2, dropout=0.0)
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train.astype("float32") / 255.0, y_train, batch_size=64, epochs=1, verbose=0)
    calib = fmnist[0][-200:].astype("float32") / 255.0
    conv = convert(fold_batchnorm_with_report(model)[0], "int8", lambda: ([calib[i:i + 50]] for i in range(0, 200, 50)))
    inputs = quantize_inputs(conv.flatbuffer, fmnist[2][:N_QEMU])
    return conv, inputs, tflm_outputs(conv.flatbuffer, inputs)[0]


def _check_firmware(conv, inputs, ref, tmp_path, core, layouts):
    """Each layout's firmware gives TFLM's logits on every image; MVE runs
    on the M55 only (self-test, MVFR1); SysTick ticks once per 1e9 / SYSCLK
    instructions under -icount shift=0 (the board's clock); two runs count
    the same; the layers add up; the spike layouts report fired inputs.
    Returns the mean instructions per layout."""
    program = lower(conv.flatbuffer, spike_codes(conv))
    totals = {}
    for layout in layouts:
        fw = build_firmware(generate(program, layout, target=core), core, str(tmp_path / layout))
        run = run_qemu(fw, inputs, len(program.layers), 10)
        assert np.array_equal(run.outputs, ref), (core, layout)
        assert run.instructions_per_tick == pytest.approx(BOARDS[core].instructions_per_tick, rel=1e-4)
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
    return totals


@pytest.mark.parametrize("core", [c for c, b in BOARDS.items() if not b.stand_in])
def test_firmware_is_byte_identical_and_counts_are_deterministic(s2nn, tmp_path, core):
    conv, inputs, ref, _ = s2nn
    totals = _check_firmware(conv, inputs, ref, tmp_path, core, ("dense", "spike_list", "spike_mask"))
    # which layout is faster depends on the model and core (the width-8 test
    # model's M55 spike lists barely pay off); run_mcu measures and chooses
    assert totals["spike_list"] < totals["spike_mask"], totals


def test_cortex_m0plus_runs_on_its_stand_in_board(tiny, s2nn, fmnist, tmp_path):
    """Armv6-M code (soft float, no unaligned access, no DSP) on the
    microbit's Cortex-M0: byte-identical with TFLM, counted at its 16 MHz;
    a model larger than its 16 KiB is linked for its sizes, not refused."""
    conv, inputs, ref = tiny
    _check_firmware(conv, inputs, ref, tmp_path, "cortex-m0plus", ("dense", "spike_list"))
    report = run_mcu(s2nn[0], fmnist[2][:4], McuConfig(cores=("cortex-m0plus", "cortex-m3"), num_images=4,
                                                      measure_images=2, output_dir=str(tmp_path / "big")))
    m0, m3 = report["cores"]["cortex-m0plus"], report["cores"]["cortex-m3"]
    assert m0["compiled_only"] and "does not fit its stand-in board microbit (16 KiB RAM)" in m0["why"]
    assert m0["layouts"] == m3["layouts"] and "cortex-m3" in m0["layouts_from"]    # the same portable kernels
    assert m0["static_ram_bytes"] > 16 * 1024 and m0["flash_bytes"] > m0["constant_bytes"]
    assert os.path.isfile(tmp_path / "big" / "cortex-m0plus" / "library" / "CMakeLists.txt")


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


def _cli(module, *args, timeout=1800):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_end_to_end_from_one_verified_tflite(trained_model, tmp_path):
    """--model exports and verifies first (OUTPUT_DIR/export), then generates
    the C from that model_int8.tflite; --export_dir and --tflite read the
    same bytes back with the same spike tensors."""
    path = str(tmp_path / "model.keras")
    trained_model.save(path)
    out = tmp_path / "mcu"
    proc = _cli("export.mcu", "--model", path, "--output_dir", out, "--cores", "cortex-m4,cortex-m7", "--images",
                12, "--measure_images", 4, "--num_calibration", 100, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "mcu_report.json").read_text())
    exported = json.loads((out / "export" / "export_report.json").read_text())
    assert exported["checks"]["passed"] and exported["rewrites"] == ["bn_as_depthwise", "gap_as_average_pool"]
    sha = _sha(out / "export" / "model_int8.tflite")
    assert report["source"]["sha256"] == sha == exported["formats"]["int8"]["sha256"]
    assert report["source"]["export_checks_passed"] is True
    assert report["spike_tensors"] == len(exported["formats"]["int8"]["spike_codes"]) > 0
    for core in ("cortex-m4", "cortex-m7"):
        assert report["cores"][core]["bit_exact"] == {"images": 12, "equal": 12, "fraction": 1.0}
    for source in (["--export_dir", out / "export"], ["--tflite", out / "export" / "model_int8.tflite"]):
        again = tmp_path / "again"
        proc = _cli("export.mcu", *source, "--output_dir", again, "--cores", "generic", "--images", 12, "--quiet")
        assert proc.returncode == 0, proc.stderr[-2000:]
        second = json.loads((again / "mcu_report.json").read_text())
        assert second["source"]["sha256"] == sha and second["spike_tensors"] == report["spike_tensors"]
        assert second["cores"]["generic"]["bit_exact"]["fraction"] == 1.0


def _export_main(argv, capfd):
    from export.cli import export as export_cli

    status = export_cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return status, out, [l for l in err.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def model_file(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.keras"
    trained_model.save(str(path))
    return path


EXPORT_ARGS = ["--formats", "int8", "--max_test_examples", "40", "--num_calibration", "100", "--no_c_array",
               "--mcu_images", "6"]


def test_export_mcu_runs_on_the_published_file(model_file, tmp_path, capfd):
    """python -m export --mcu: the C of the model_int8.tflite just
    published (same sha256), every board and generic, recorded in
    export_report.json under formats.int8.mcu."""
    out = tmp_path / "export"
    status, stdout, err = _export_main(["--model", model_file, "--output_dir", out, *EXPORT_ARGS, "--mcu",
                                        "cortex-m3,cortex-m33,generic"], capfd)
    assert status == 0 and not err, err
    report = json.loads((out / "export_report.json").read_text())
    mcu = report["formats"]["int8"]["mcu"]
    assert mcu["source"]["sha256"] == _sha(out / "model_int8.tflite") == report["formats"]["int8"]["sha256"]
    assert set(mcu["cores"]) == {"cortex-m3", "cortex-m33", "generic"} and "error" not in mcu
    assert all(e["bit_exact"]["fraction"] == 1.0 for e in mcu["cores"].values())
    assert mcu["cores"]["cortex-m33"]["board"] == "mps2-an505" and "microcontroller C" in stdout
    assert (out / "mcu" / "cortex-m33" / "library" / "arm-none-eabi-cortex-m33.cmake").is_file()


def test_only_the_mcu_step_fails_and_the_export_stays_published(model_file, tmp_path, capfd, monkeypatch):
    """A model that does not fit the board: the verified export is
    published, export_report.json records the step's error, and the run
    ends with that one line (exit 2)."""
    from export.mcu import firmware

    b = BOARDS["cortex-m3"]
    monkeypatch.setitem(BOARDS, "cortex-m3", firmware.Board(b.core, b.machine, b.linker_script, b.sysclk_hz,
                                                            b.flash, (b.ram[0], 4096), b.const_region))
    out = tmp_path / "export"
    status, _, err = _export_main(["--model", model_file, "--output_dir", out, *EXPORT_ARGS, "--mcu", "cortex-m3",
                                   "--quiet"], capfd)
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("python -m export: error: --mcu: the model does not fit mps2-an385 (cortex-m3): it "
                             "needs ") and "the board has" in err[0] and "4,096 B" in err[0], err[0]
    assert "the verified export is published in" in err[0]
    report = json.loads((out / "export_report.json").read_text())
    assert report["checks"]["passed"] and (out / "model_int8.tflite").is_file()
    assert report["formats"]["int8"]["mcu"]["error"] == err[0].split("error: ", 1)[1]


def test_mcu_table_of_an_export_that_failed_its_checks(model_file, tmp_path, capfd, monkeypatch):
    """--allow_failed_checks keeps the files; the MCU step still runs on
    them and its table says the model failed its checks; exit 3 with the
    export's line."""
    from export import checks

    monkeypatch.setitem(checks.BOUNDS, "integer_agreement", 1.01)
    out = tmp_path / "export"
    status, stdout, err = _export_main(["--model", model_file, "--output_dir", out, *EXPORT_ARGS, "--mcu",
                                        "generic", "--allow_failed_checks"], capfd)
    assert status == 3 and len(err) == 1 and "the export's checks failed" in err[0], err
    assert "THE MODEL FAILED ITS EXPORT CHECKS (int8.litert.agreement" in stdout
    rows = [l for l in stdout.splitlines() if l.strip().startswith("generic ")]
    assert len(rows) == 2 and rows[0].endswith("(of a model that FAILED its export checks)"), rows   # as it runs
    assert rows[1].endswith("model FAILED export checks"), rows    # the table
    mcu = json.loads((out / "mcu" / "mcu_report.json").read_text())
    assert mcu["export_checks"]["passed"] is False
    proc = _cli("export.mcu", "--export_dir", out, "--output_dir", tmp_path / "again", "--cores", "generic",
                "--images", 6, "--quiet")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 3 and len(lines) == 1 and "failed its export's checks" in lines[0], proc.stderr


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
