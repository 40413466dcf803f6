"""TFLite float32 / int8 / int16x8 conversion of a folded, trained
PreActResNet (saturate neurons by default, the compare ablation), run in
LiteRT and TFLite Micro; the ReLU baseline; the export pipeline and CLI."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from export.formats import EDGE_OPS, FORBIDDEN_EDGE_OPS
from export.tflite.runtimes import run_litert, run_tflm, tflm_arena_size
from export.tflite.convert import op_names, to_tflite

N_RUN = 120  # images per runtime in the default tests (TFLM is slow)
COMPARE = {"GREATER_EQUAL", "LESS_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "SELECT_V2"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def converted(folded, calibration):
    model = folded[0]
    return {q: to_tflite(model, q, calibration if q != "float32" else None)
            for q in ("float32", "int8", "int16x8")}


@pytest.fixture(scope="module")
def keras_ref(trained_model, fmnist):
    x = fmnist[2][:N_RUN].astype("float32") / 255.0
    logits = trained_model.predict(x, verbose=0)
    return x, fmnist[3][:N_RUN], logits


@pytest.fixture(scope="module")
def converted_compare(folded, calibration):
    model = folded[0]
    return {q: to_tflite(model, q, calibration if q != "float32" else None, neuron="compare")
            for q in ("float32", "int8", "int16x8")}


def test_default_export_uses_only_edge_ops(converted, folded):
    """Default (saturate) int8 and int16x8 (and float32): only the ops
    XNNPACK, CMSIS-NN and Ethos-U55 all run; no comparison/select/logical/
    cast/gather op, no MUL/SUB (no BN arithmetic), ADD only for the residual
    Adds, QUANTIZE/DEQUANTIZE only at the boundary; the neurons are one
    depthwise conv per BN-threshold neuron (two stages in int16x8)."""
    from export.pipeline import inner_quantize_ops

    model = folded[0]
    residual_adds = sum(1 for l in model.layers if type(l).__name__ == "Add")
    for q, flat in converted.items():
        ops = op_names(flat)
        assert set(ops) <= EDGE_OPS, (q, ops)
        assert not set(ops) & FORBIDDEN_EDGE_OPS and "MUL" not in ops and "SUB" not in ops, (q, ops)
        assert ops.get("ADD", 0) == residual_adds, (q, ops)
        assert not inner_quantize_ops(flat), (q, inner_quantize_ops(flat))
    # 3 BN-threshold neurons (depthwise), 2 neurons inside conv1 of each block
    assert op_names(converted["int8"]).get("DEPTHWISE_CONV_2D") == 3
    assert op_names(converted["float32"]).get("DEPTHWISE_CONV_2D") == 3
    assert op_names(converted["int16x8"]).get("DEPTHWISE_CONV_2D") == 3 * 2 + 2  # sign + level stages


def test_compare_option_keeps_the_comparison_ops(converted_compare, folded):
    model = folded[0]
    residual_adds = sum(1 for l in model.layers if type(l).__name__ == "Add")
    for q in ("float32", "int8"):
        ops = op_names(converted_compare[q])
        assert "MUL" not in ops and "SUB" not in ops, (q, ops)
        assert ops.get("ADD", 0) == residual_adds, (q, ops)  # only the residual Adds
        assert {"GREATER_EQUAL", "LESS_EQUAL", "LOGICAL_OR", "SELECT_V2"} <= set(ops), (q, ops)
        assert "BATCH_MATMUL" not in ops
    ops16 = op_names(converted_compare["int16x8"])
    assert not COMPARE & set(ops16), ops16  # the 16x8 quantizer has no compare ops: the ramp
    # one DEPTHWISE_CONV_2D per BN-threshold neuron (3 in this model), MINIMUM per neuron, no MUL
    assert ops16.get("DEPTHWISE_CONV_2D") == 3 and ops16.get("MINIMUM") == 5 and "MUL" not in ops16, ops16


def test_every_spike_tensor_has_two_levels(converted, folded, calibration, fmnist):
    """Spike tensors of every default format, in LiteRT (XNNPACK and builtin)
    and TFLite Micro: only the two codes of the neuron's levels."""
    from export.tflite.convert import convert
    from export.tflite.verify import verify_spikes

    x = fmnist[2][:12].astype("float32") / 255.0
    for q in ("float32", "int8", "int16x8"):
        conv = convert(folded[0], q, calibration if q != "float32" else None)
        check = verify_spikes(conv, folded[0], x, max_tflm_examples=4)
        assert check["two_level"], (q, check["nonbinary_values"])
        assert check["neurons_equal_given_equal_inputs"], (q, check["runtime_agreement"])
        assert check["local_agreement"] > 0.99, (q, check["local_agreement"])


def test_integer_models_have_integer_io(converted):
    from ai_edge_litert.interpreter import Interpreter

    for q, dtype in (("float32", np.float32), ("int8", np.int8), ("int16x8", np.int16)):
        interp = Interpreter(model_content=converted[q])
        assert interp.get_input_details()[0]["dtype"] == dtype
        assert interp.get_output_details()[0]["dtype"] == dtype
        assert list(interp.get_input_details()[0]["shape"]) == [1, 28, 28, 1]


def test_runtimes_agree_with_keras(converted, keras_ref):
    x, y, logits = keras_ref
    ref = logits.argmax(1)
    results = {}
    for q, model in converted.items():
        start = time.perf_counter()
        lite = run_litert(model, x)
        lite_wall = time.perf_counter() - start
        arena = tflm_arena_size(model, x[0])
        start = time.perf_counter()
        micro = run_tflm(model, x, arena)
        micro_wall = time.perf_counter() - start
        results[q] = (lite, micro, arena)
        # LiteRT and TFLite Micro run the same flatbuffer to the same answer.
        assert np.mean(lite["outputs"].argmax(1) == micro["outputs"].argmax(1)) >= 0.98, q
        # latency: the mean invoke time per image in ms -- N invokes fit in the call's wall time and
        # are more than 1 % of it (a figure in seconds, or per batch, would miss one bound or the other)
        for run, wall in ((lite, lite_wall), (micro, micro_wall)):
            assert wall / 100 < run["latency_ms"] * len(x) / 1e3 <= wall, (q, run["latency_ms"], wall)
    float_lite, float_micro, _ = results["float32"]
    np.testing.assert_array_equal(float_lite["outputs"].argmax(1), ref)
    np.testing.assert_array_equal(float_micro["outputs"].argmax(1), ref)
    assert np.max(np.abs(float_lite["outputs"] - logits)) < 1e-3
    for q in ("int8", "int16x8"):
        lite, micro, arena = results[q]
        # measured: 100 % in both runtimes (120 images); at most 2 of them may flip on a rounding boundary
        for run in (lite, micro):
            agree = np.mean(run["outputs"].argmax(1) == ref)
            assert agree >= 0.98, (q, agree)
        acc_q, acc_f = np.mean(lite["outputs"].argmax(1) == y), np.mean(ref == y)
        assert acc_q >= acc_f - 0.08, (q, acc_q, acc_f)
    # int8 activations need less arena than float32.
    assert results["int8"][2] < results["float32"][2]


def test_to_tflite_validates_arguments(folded):
    with pytest.raises(ValueError, match="quantization"):
        to_tflite(folded[0], "int4")
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(folded[0], "int8")


def test_export_run_writes_report_and_c_array(trained_model, fmnist, tmp_path):
    from export import ExportConfig, export_run

    x_train, _, x_test, y_test = fmnist
    out = str(tmp_path / "export")
    report = export_run(trained_model, ExportConfig(out, x_test[:80], y_test[:80], formats=("float32", "int8"),
                                                    calibration_images=x_train[-100:], num_calibration=100,
                                                    verbose=False))
    with open(os.path.join(out, "export_report.json")) as f:
        on_disk = json.load(f)
    assert on_disk["fold"]["predictions_equal"] and report["fold"]["predictions_equal"]
    assert set(on_disk["formats"]) == {"float32", "int8"}
    # the returned report is the one written: same files, sizes, ops and figures per format
    for q in ("float32", "int8"):
        mem, disk = report["formats"][q], on_disk["formats"][q]
        assert (mem["file"], mem["size_bytes"], mem["ops"]) == (disk["file"], disk["size_bytes"], disk["ops"])
        assert mem["litert"]["agreement_with_keras"] == pytest.approx(disk["litert"]["agreement_with_keras"])
        assert mem["spikes"]["elements"] == disk["spikes"]["elements"] > 0
    for q, entry in on_disk["formats"].items():
        assert os.path.getsize(os.path.join(out, entry["file"])) == entry["size_bytes"]
        assert entry["bn_residue_ops"] == 0
        assert entry["edge_only"] and entry["spikes"]["two_level"], (q, entry["ops"])
        # Runtimes round non-neuron ops differently (XNNPACK in fp32, builtin and
        # TFLM by 1 LSB at times), which moves later spikes; the neurons
        # themselves agree bit for bit wherever their inputs do.
        assert entry["spikes"]["neurons_equal_given_equal_inputs"], entry["spikes"]["runtime_agreement"]
        for runtime in ("litert", "tflm"):
            for key in ("accuracy", "agreement_with_keras", "latency_ms_per_image"):
                assert key in entry[runtime]
        assert entry["tflm"]["arena_bytes"] > 0
    assert on_disk["formats"]["float32"]["litert"]["agreement_with_keras"] == 1.0
    # The C array holds exactly the int8 flatbuffer.
    with open(os.path.join(out, "model_int8.cc")) as f:
        source = f.read()
    body = source[source.index("{") + 1:source.index("};")]
    data = bytes(int(tok, 16) for tok in body.replace(",", " ").split())
    with open(os.path.join(out, "model_int8.tflite"), "rb") as f:
        assert data == f.read()
    with open(os.path.join(out, "model_int8.h")) as f:
        header = f.read()
    assert "g_s2nn_model_int8_arena_size = %d;" % on_disk["formats"]["int8"]["tflm"]["arena_bytes"] in header
    assert "alignas(16)" in source


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--output_dir", "x"], "--model"),
    (["--model", "/nonexistent.keras", "--output_dir", "x"], "does not exist"),
    (["--model", __file__, "--output_dir", "x"], ".keras"),
    (["--model", "m.keras", "--output_dir", "x", "--formats", "int4"], "--formats"),
    (["--model", "m.keras", "--output_dir", "x", "--max_test_examples", "0"], "positive"),
    (["--model", "m.keras", "--output_dir", "x", "--dataset", "mnist"], "dataset"),
    (["--model", "m.keras", "--output_dir", "x", "--neuron", "ramp"], "--neuron"),
    (["--model", "m.keras", "--output_dir", "x", "--ethos_u", "ethos-u99"], "--ethos_u"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message):
    result = _cli(*args)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unfoldable_model_is_one_line_exit_2(tmp_path):
    import keras
    from s2nn_keras import S2Activation

    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, name="c")(inputs)
    s = keras.layers.Add(name="add")([h, h])
    h = keras.layers.BatchNormalization(name="bad_bn")(s)  # feeds a neuron and a conv: not foldable
    h = keras.layers.Add(name="join")([S2Activation(name="act")(h), keras.layers.Conv2D(4, 1, name="side")(h)])
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    path = str(tmp_path / "bad.keras")
    keras.Model(inputs, out).save(path)
    result = _cli("--model", path, "--output_dir", str(tmp_path / "o"), "--max_test_examples", "10",
                  "--num_calibration", "10")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr  # TF start-up logs are silenced too
    assert lines[0].startswith("python -m export: error") and "bad_bn" in lines[0]


def test_relu_baseline_goes_through_the_same_path(fmnist, tmp_path):
    """A model without spiking neurons: to_tflite converts it with the same
    settings (the converter folds conv+BN; the pre-activation BNs become 1x1
    depthwise convs by default, the converter's MUL + ADD with rewrites=())
    and export_run reports it without fold or spike checks."""
    import keras
    from export import ExportConfig, export_run
    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(2)
    relu = PreActResNet([1, 1], (28, 28, 1), 10, activation="relu", width=4, dropout=0.0)
    x_train, _, x_test, y_test = fmnist
    calib = x_train[-40:].astype("float32") / 255.0
    rep = lambda: ([calib[i:i + 20]] for i in range(0, 40, 20))  # noqa: E731
    ops = op_names(to_tflite(relu, "int8", rep))
    assert not COMPARE & set(ops) and "CONV_2D" in ops and "MUL" not in ops and "MEAN" not in ops, ops
    assert ops["DEPTHWISE_CONV_2D"] == 3 and ops["AVERAGE_POOL_2D"] >= 1, ops   # 3 pre-activation BNs, the GAP
    plain = op_names(to_tflite(relu, "int8", rep, rewrites=()))
    assert plain["MUL"] == 3 and plain["MEAN"] == 1 and "DEPTHWISE_CONV_2D" not in plain, plain
    result = export_run(relu, ExportConfig(str(tmp_path / "relu"), x_test[:20], y_test[:20], formats=("int8",),
                                           calibration_images=x_train[-40:], num_calibration=40,
                                           max_tflm_examples=5, c_array=False, verbose=False))
    assert not result["spiking"] and "spikes" not in result["formats"]["int8"]
    assert result["formats"]["int8"]["litert"]["agreement_with_keras"] >= 0.8
    assert not os.path.exists(str(tmp_path / "relu" / "model_folded.keras"))


@pytest.mark.slow
def test_cli_end_to_end_all_formats(trained_model, tmp_path):
    """python -m export on a saved trained model: every format in both
    runtimes over 300 test images; float32 exact, integer formats close."""
    path = str(tmp_path / "model.keras")
    trained_model.save(path)
    out = str(tmp_path / "export")
    result = _cli("--model", path, "--output_dir", out, "--max_test_examples", "300",
                  "--num_calibration", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LiteRT acc" in result.stdout and "int16x8" in result.stdout
    for chatter in ("signature_serialization", "functional_saver", "fully_quantize", "INFO: Created"):
        assert chatter not in result.stdout + result.stderr, chatter
    with open(os.path.join(out, "export_report.json")) as f:
        report = json.load(f)
    assert report["fold"]["predictions_equal"]
    fmt = report["formats"]
    assert fmt["float32"]["litert"]["agreement_with_keras"] == 1.0
    assert fmt["float32"]["tflm"]["agreement_with_keras"] == 1.0
    for q in ("int8", "int16x8"):
        assert fmt[q]["litert"]["agreement_with_keras"] >= 0.85
        assert fmt[q]["tflm"]["agreement_with_litert"] >= 0.98
    # int8 weights: a quarter of float32 plus the fixed flatbuffer overhead.
    assert fmt["int8"]["size_bytes"] < 0.75 * fmt["float32"]["size_bytes"]
    for name in ("model_folded.keras", "model_int8.cc", "model_int8.h", "model_int16x8.tflite"):
        assert os.path.isfile(os.path.join(out, name))


def test_int8_threshold_placement_keeps_the_integer_decision(folded, calibration, fmnist):
    """Half-LSB placement: on the calibrated int8 grid of each neuron's input
    the moved threshold makes exactly the decision of the original one, and
    it sits half a step away from every grid point."""
    from export.transform.calibration import tensor_ranges
    from export.transform.neurons import ThresholdNeuron
    from export.tflite.convert import int8_threshold_model
    from s2nn_keras.graph import LayerGraph

    model = folded[0]
    placed = int8_threshold_model(model, calibration)
    nodes = [n for n in LayerGraph(model).nodes if not n.is_input and isinstance(n.layer, ThresholdNeuron)]
    ranges = tensor_ranges(model, [n.inputs[0] for n in nodes], calibration)
    moved = 0
    for node in nodes:
        layer, (rmin, rmax) = node.layer, ranges[node.inputs[0]]
        new = placed.get_layer(layer.name)
        th, pol, th2 = layer.thresholds, layer.polarity, new.thresholds
        assert list(new.polarity) == list(pol)
        if np.all(th[pol != 0] == 0.0):
            np.testing.assert_array_equal(th2, th)  # thresholds in a conv bias stay exact
            continue
        rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
        scale = (rmax - rmin) / 255.0
        zp = np.clip(np.round(-128.0 - rmin / scale), -128, 127)
        grid = (np.arange(-128, 128)[:, None] - zp) * scale  # every int8 level, per channel
        for c in np.flatnonzero(pol != 0):
            old = grid[:, 0] >= th[c] if pol[c] > 0 else grid[:, 0] <= th[c]
            new_dec = grid[:, 0] >= th2[c] if pol[c] > 0 else grid[:, 0] <= th2[c]
            np.testing.assert_array_equal(old, new_dec)
            frac = (th2[c] / scale) % 1.0
            assert abs(frac - 0.5) < 1e-3
            moved += 1
    assert moved > 0
    x = fmnist[2][:100].astype("float32") / 255.0
    agree = np.mean(model.predict(x, verbose=0).argmax(1) == placed.predict(x, verbose=0).argmax(1))
    assert agree >= 0.95  # float decisions change only within one int8 step


def test_conversion_is_quiet_but_keeps_warnings(capfd):
    """TF's SavedModel INFO lines go through the absl logger, whose level
    absl resets from its --verbosity flag mid-conversion: the filter must
    hold anyway; warnings still pass; C-level chatter lines are dropped."""
    import logging
    import os as _os

    from absl import logging as absl_logging

    from export.tflite.convert import quiet_conversion

    absl_logging.use_absl_handler()
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with quiet_conversion():
            absl_logging.set_verbosity(absl_logging.INFO)  # what absl's flag update does mid-conversion
            absl_logging.info("Sharding callback duration: 3 microseconds")
            logging.getLogger("tensorflow").info("signature_serialization chatter")
            absl_logging.warning("a real warning")
            _os.write(2, b"fully_quantize: 0, inference_type: 6\n")
            _os.write(2, b"C-level error line\n")
            print("Saved artifact at /tmp/x")
    finally:
        absl_logging.set_verbosity(old)
    out, err = capfd.readouterr()
    assert "Sharding" not in err and "signature_serialization" not in err and "fully_quantize" not in err
    assert "a real warning" in err and "C-level error line" in err
    assert "Saved artifact" not in out


def test_strided_shortcut_becomes_one_strided_conv(folded, fmnist):
    """AveragePooling2D(1, 2) -> 1x1 Conv2D (the builders' training
    workaround) is exported as one strided 1x1 CONV_2D: same function, no
    AVERAGE_POOL_2D (which XNNPACK does not delegate)."""
    from export.tflite.convert import convert, merge_strided_shortcuts

    model = folded[0]
    merged = merge_strided_shortcuts(model)
    assert not any(type(l).__name__ == "AveragePooling2D" for l in merged.layers)
    assert any(type(l).__name__ == "AveragePooling2D" for l in model.layers)
    x = fmnist[2][:16].astype("float32") / 255.0
    np.testing.assert_array_equal(model.predict(x, verbose=0), merged.predict(x, verbose=0))
    # (rewrites=(): the global pool stays MEAN, so any AVERAGE_POOL_2D is a shortcut's)
    assert "AVERAGE_POOL_2D" not in op_names(convert(model, "float32", merge_shortcuts=True, rewrites=()).flatbuffer)
    assert "AVERAGE_POOL_2D" in op_names(convert(model, "float32", rewrites=()).flatbuffer)  # off by default
