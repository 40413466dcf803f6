"""The models a new user builds (tests/user_models.py, the export issue's
table) through the export: each one exports with edge ops only and
two-level spikes, or ends in one error line naming the layer.

Default set: the export feeds a model that starts with ``Rescaling`` the
raw pixels it was trained on (the silent double division), folds its
scaling into the first layers and gives the int8 model a raw-pixel input
grid; every new pattern's int8 model (its op list, two-level spikes in
LiteRT and TFLite Micro, the fold); a TFLite Micro op without a kernel is
one error naming the op and the Keras layer. Slow: each model through
``python -m export`` (every format, ``--data``), quantization-aware
fine-tuning and the Ethos-U55.
"""

import numpy as np
import pytest

from tests import user_models, zoo
from tests.export.test_cli import outcome, run_cli

N_CALIBRATION = 64
N_VERIFY = 16
N_TFLM = 2
#: The patterns the issue found broken (the others are in the slow set).
NEW_PATTERNS = ("mlp", "conv1d_timeseries", "rescaling_raw_pixels", "separable_after_neuron", "concatenate_branches",
                "strided_pools", "upsampling_autoencoder", "transpose_autoencoder")
#: Ops every model may have; the pattern's own are in user_models.EXPECTED_OPS.
COMMON_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "RESHAPE", "AVERAGE_POOL_2D", "MEAN"}


def _arrays(name):
    """``(x_train, x_test, y_test)`` as a user has them: raw models' pixels as uint8."""
    x_train, _, x_test, y_test = zoo.data(name)
    if zoo.entry(name).raw:
        x_train, x_test = x_train.astype(np.uint8), x_test.astype(np.uint8)
    return x_train, x_test, y_test


def _data(name):
    """``(trained model, x_train, x_test, y_test)`` (:func:`_arrays`)."""
    return (zoo.trained(name),) + _arrays(name)


def _representative(x):
    return lambda: ([x[i:i + 32]] for i in range(0, len(x), 32))


# --------------------------------------------------------------------------
# The model's own input scaling
# --------------------------------------------------------------------------


def test_export_feeds_a_rescaling_model_the_raw_pixels_it_was_trained_on(tmp_path):
    """A model that starts with Rescaling(1/255), given uint8 images: the
    export's Keras accuracy is the model's own on the raw pixels (it was
    computed on pixels divided by 255 twice), the TFLite models take the raw
    pixels too (no MUL: the scaling is in the first conv's weights) and the
    int8 input grid is the raw pixel minus 128."""
    from export import ExportConfig, export_run
    from export.tflite.runtimes import Session

    model, x_train, x_test, y_test = _data("rescaling_raw_pixels")
    x, y = x_test[:100], y_test[:100]
    own = float(np.mean(model.predict(x.astype(np.float32), verbose=0).argmax(1) == y))
    divided = float(np.mean(model.predict(x.astype(np.float32) / 255, verbose=0).argmax(1) == y))
    assert abs(own - divided) >= 0.05, (own, divided)   # the double division shows in the accuracy
    result = export_run(model, ExportConfig(tmp_path / "out", x, y, formats=("float32", "int8"),
                                            calibration_images=x_train[-N_CALIBRATION:], max_tflm_examples=N_TFLM,
                                            c_array=False, verbose=False))
    assert result["keras"]["accuracy"] == own
    for fmt in ("float32", "int8"):
        entry = result["formats"][fmt]
        assert entry["edge_only"] and "MUL" not in entry["ops"], entry["ops"]
        assert entry["litert"]["agreement_with_keras"] >= 0.9
    session = Session(result.conversions["int8"].flatbuffer, "litert")
    assert session.inputs[0]["quantization"] == (1.0, -128)
    np.testing.assert_array_equal(session.quantize_input(x[:2]), x[:2].astype(np.int16) - 128)


def test_model_inputs_and_the_scaled_data_error():
    from export.transform.inputs import InputScalingError, check_inputs, input_scaling, model_inputs

    rescaling, plain = zoo.trained("rescaling_raw_pixels"), zoo.trained("neuron_without_bn")
    pixels = np.array([[0, 51, 255]], np.uint8)
    assert model_inputs(pixels, rescaling).tolist() == [[0.0, 51.0, 255.0]]
    np.testing.assert_array_equal(model_inputs(pixels, plain), pixels.astype(np.float32) / 255)
    assert model_inputs(pixels / 255, rescaling).dtype == np.float32
    scaling = input_scaling(rescaling)
    assert scaling.layers == ("rescale",) and np.allclose(scaling.scale, 1 / 255) and not scaling.offset.any()
    assert input_scaling(plain) is None
    check_inputs(pixels, rescaling)
    check_inputs(pixels / 255, plain)
    with pytest.raises(InputScalingError, match="'rescale': x 0.003922.* takes raw values, but the inputs are floats "
                                                "within \\[-1, 1\\]"):
        check_inputs(pixels / 255, rescaling)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_input_normalization_is_folded_into_the_first_layer_or_one_depthwise(padding):
    """A per-channel Normalization (mean and variance per channel) before a
    conv: absorbed into its weights when the padding is valid (zero padding
    of the raw input is not zero padding of the normalized one), else one
    1x1 DEPTHWISE_CONV_2D; the float32 model computes the Keras model's
    outputs from the raw inputs either way."""
    import keras

    from export.tflite.convert import convert, op_names
    from export.tflite.runtimes import run_litert
    from export.transform.inputs import fold_input_scaling

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    y = keras.layers.Normalization(mean=[100.0, 50.0, 10.0], variance=[900.0, 400.0, 25.0], name="norm")(inputs)
    y = keras.layers.Conv2D(4, 3, padding=padding, name="conv")(y)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(y)))
    x = np.random.default_rng(0).uniform(0, 255, (8, 6, 6, 3)).astype(np.float32)
    folded = fold_input_scaling(model)
    assert ("norm" in [l.name for l in folded.layers]) == (padding == "same")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-3)
    flat = convert(model, "float32").flatbuffer
    assert op_names(flat).get("DEPTHWISE_CONV_2D", 0) == (padding == "same") and "SUB" not in op_names(flat)
    np.testing.assert_allclose(run_litert(flat, x)["outputs"], model.predict(x, verbose=0), rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------
# Every new pattern's int8 model
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_PATTERNS)
def test_pattern_exports_int8_with_edge_ops_and_two_level_spikes(name):
    """Fold exact, int8 edge ops only (no inner QUANTIZE) with the pattern's
    own ops, spikes two-level and bit-equal across LiteRT and TFLite Micro,
    each neuron the folded model's decision on >= 98 % of its outputs."""
    from export.formats import EDGE_OPS
    from export.metrics import agreement_fraction
    from export.pipeline import edge_verdict
    from export.tflite.convert import convert, op_names
    from export.tflite.runtimes import run_litert
    from export.tflite.verify import verify_fold, verify_spikes
    from export.transform.fold import fold_batchnorm
    from export.transform.inputs import model_inputs

    model, x_train, x_test, _ = _data(name)
    calibration, x = model_inputs(x_train[-N_CALIBRATION:], model), model_inputs(x_test[:N_VERIFY], model)
    folded = fold_batchnorm(model)
    fold = verify_fold(model, folded, x)
    assert fold["total_spike_mismatches"] == 0 and fold["max_logit_abs_diff"] < 1e-3, fold["spike_mismatches"]
    conv = convert(folded, "int8", _representative(calibration))
    ops = op_names(conv.flatbuffer)
    assert edge_verdict(ops, conv.flatbuffer)["edge_only"], ops
    assert set(ops) - COMMON_OPS == user_models.EXPECTED_OPS.get(name, set()), ops
    assert set(ops) <= EDGE_OPS
    spikes = verify_spikes(conv, folded, x, max_tflm_examples=N_TFLM)
    assert spikes["two_level"] and spikes["neurons_equal_given_equal_inputs"], spikes["nonbinary_values"]
    assert spikes["local_agreement"] >= 0.98, spikes["per_neuron"]
    if name == "mlp":   # its first neuron was placed on the grid of the Dense's input: int8 at chance
        agreement = agreement_fraction(model.predict(x, verbose=0), run_litert(conv.flatbuffer, x)["outputs"],
                                       "classification")
        assert agreement >= 0.9 and conv.grids["dense1_act"]["actual"][0] > 1.5 / 255, (agreement, conv.grids)


def test_separable_conv_is_a_depthwise_reading_spikes_and_a_pointwise_neuron():
    from export.transform.fold import fold_batchnorm_with_report

    folded, report = fold_batchnorm_with_report(zoo.trained("separable_after_neuron"))
    kinds = {l.name: type(l).__name__ for l in folded.layers}
    assert kinds["sep_depthwise"] == "DepthwiseConv2D" and kinds["sep"] == "Conv2D"
    assert report["batchnorm"]["sep_bn"]["folded_into"] == "sep"
    assert report["neurons"]["sep_act"]["threshold_from"] == "bias of sep"


# --------------------------------------------------------------------------
# TFLite Micro without a kernel: the op and the layer, not the arena
# --------------------------------------------------------------------------


def test_an_op_tflite_micro_cannot_run_is_named_with_its_keras_layer():
    import keras

    from export.tflite.runtimes import TFLMError, tflm_arena_size
    from tests.export.helpers import plain_tflite

    inputs = keras.Input((6, 6, 2), name="x")
    y = keras.layers.Conv2D(3, 3, name="conv")(keras.layers.UpSampling2D(2, name="up")(inputs))
    model = keras.Model(inputs, y)
    flat = plain_tflite(model)    # the converter's own UpSampling2D: TILE
    with pytest.raises(TFLMError, match=r"cannot run op TILE \(Keras layer 'up' \(UpSampling2D\)\): it has no "
                                        r"kernel for this op") as err:
        tflm_arena_size(flat, layer_names={l.name: type(l).__name__ for l in model.layers})
    assert err.value.op == "TILE" and err.value.layers == ("up",)


def test_cli_names_the_op_and_layer_tflite_micro_cannot_run(tmp_path):
    """Without the runtime forms (the converter's TILE for UpSampling2D) the
    command ends in one line naming the op and the Keras layer, exit 2 --
    not "a bug" about a 2 GiB arena."""
    import os
    import subprocess
    import sys

    import keras

    from tests.export.test_cli import REPO

    inputs = keras.Input((6, 6, 1), name="x")
    y = keras.layers.Conv2D(2, 3, padding="same", name="conv")(keras.layers.UpSampling2D(2, name="up")(inputs))
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(y))).save(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 1, (8, 6, 6, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", test_images=x, train_images=x)
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--formats", "float32",
            "--output_dir", str(out), "--task", "regression"]
    script = ("import sys; from export.cli import export as e; from export.tflite import quiet; "
              "quiet.import_tensorflow_quietly(); import export.transform.rewrites as r; "
              "r.runtime_forms = lambda model: model; sys.exit(e.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    kind, line = outcome(proc, "export", out)
    assert kind == "error" and proc.returncode == 2, line
    assert line == ("python -m export: error: the float32 model does not run in TensorFlow Lite Micro: TFLite "
                    "Micro cannot run op TILE (Keras layer 'up' (UpSampling2D)): it has no kernel for this op; "
                    "replace that layer, or leave float32 out of the formats (--formats)"), line


# --------------------------------------------------------------------------
# Slow: the command line, fine-tuning, the NPU
# --------------------------------------------------------------------------


def _npz(path, name, n_test=100, n_train=300):
    x_train, x_test, y_test = _arrays(name)
    arrays = {"test_images": x_test[:n_test], "train_images": x_train[-n_train:]}
    if zoo.entry(name).task == "classification":
        arrays["test_labels"] = y_test[:n_test]
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(user_models.MODELS))
def test_cli_exports_every_user_model_in_every_format(tmp_path, name):
    """``python -m export --data`` (uint8 pixels for the raw models): rc 0,
    every format edge ops only with two-level spikes."""
    model = tmp_path / f"{name}.keras"
    zoo.trained(name, epochs=3).save(model)
    out = tmp_path / "out"
    proc = run_cli("export", "--model", model, "--data", _npz(tmp_path / "data.npz", name), "--output_dir", out,
                   "--max_tflm_examples", "20", "--no_c_array")
    kind, report = outcome(proc, "export", out)
    assert kind == "ok", report
    for fmt, entry in report["formats"].items():
        assert entry["edge_only"] and entry["spikes"]["two_level"], (fmt, entry["ops"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(user_models.MODELS))
def test_user_model_quantization_aware_int8_agrees_and_runs_on_the_u55(name):
    pytest.importorskip("ethosu.vela")
    from export.metrics import agreement_report, model_logits
    from export.tflite.convert import convert
    from export.tflite.runtimes import run_litert
    from export.tflite.vela import compile_for_ethos_u
    from export.transform.inputs import model_inputs
    from export.transform.qat import QATConfig, quantization_aware_fine_tune

    model, x_train, x_test, _ = _data(name)
    task = zoo.entry(name).task
    result = quantization_aware_fine_tune(model, x_train, x_train[-300:], QATConfig(epochs=1.0, task=task))
    calibration, x = model_inputs(x_train[-300:], model), model_inputs(x_test, model)
    conv = convert(result.model, "int8", _representative(calibration))
    lite = agreement_report(model_logits(result.model, x), run_litert(conv.flatbuffer, x)["outputs"], task)
    assert lite["agreement"] >= 0.98, lite
    u55 = compile_for_ethos_u(conv.flatbuffer, "ethos-u55-128")
    assert u55["npu_op_fraction"] == 1.0 and not u55["cpu_fallback"], u55["cpu_fallback"]
