"""export.config: ExportConfig's validation and the task of a model;
export.pipeline: the staged publish (nothing half-written), a regression
export, the edge-ops verdict from export.formats.EDGE_OPS; and the one
loader."""

import json
import os
import zipfile

import numpy as np
import pytest

from export.config import ExportConfig, ExportConfigError, resolve_task
from export.pipeline import ARTEFACTS, edge_verdict, publish

X = np.zeros((4, 8, 8, 1), np.uint8)
Y = np.zeros(4, np.int64)


def test_defaults_are_today_s_behaviour():
    c = ExportConfig("out", X, Y)
    assert c.formats == ("float32", "int8", "int16x8") and c.num_calibration == 500 and c.max_tflm_examples is None
    assert c.c_array and c.threshold_in_bias and c.spike_checks and c.verbose and not c.merge_shortcuts
    assert c.neuron == "saturate" and c.task == "auto" and c.qat is None and not c.allow_failed_checks
    assert ExportConfig("out", X, formats=["int8", "int8"]).formats == ("int8",)  # a list, deduplicated
    with pytest.raises(Exception):
        c.formats = ("int8",)  # frozen: dataclasses.replace validates again


@pytest.mark.parametrize("kwargs, words", [
    ({"output_dir": ""}, "output_dir must be a folder path"),
    ({"images": None}, "images is required"),
    ({"images": np.zeros((0, 8, 8, 1))}, "non-empty array"),
    ({"images": np.array(["a", "b"])}, "non-empty array"),
    ({"images": np.array([[1 + 2j]])}, "must hold numbers"),
    ({"labels": np.zeros(3, np.int64)}, "3 entries for 4 images"),
    ({"labels": np.zeros(4, np.float32)}, "integer class indices"),
    ({"formats": "int8"}, "sequence of format names"),
    ({"formats": ("int4",)}, "names among float32, int8, int16x8"),
    ({"formats": ()}, "names among"),
    ({"calibration_images": np.zeros(3)}, "calibration_images must be a non-empty array"),
    ({"num_calibration": 0}, "num_calibration must be an integer >= 1"),
    ({"num_calibration": True}, "num_calibration must be an integer >= 1"),
    ({"max_tflm_examples": 0}, "max_tflm_examples must be an integer >= 1 or None"),
    ({"c_array": "yes"}, "c_array must be True or False"),
    ({"neuron": "ramp"}, "neuron must be one of saturate, compare"),
    ({"task": "detection"}, "task must be one of auto, classification, regression"),
    ({"reporters": (object(),)}, "FormatReporter"),
    ({"qat": {"steps": 1}, "qat_images": X}, "QATConfig"),
    ({"extra": ["x"]}, "extra must be a dict"),
])
def test_every_field_is_validated_in_one_line(kwargs, words):
    base = {"output_dir": "out", "images": X, "labels": Y}
    base.update(kwargs)
    with pytest.raises(ExportConfigError) as err:
        ExportConfig(**base)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_qat_needs_its_images():
    from export.transform.qat import QATConfig

    with pytest.raises(ExportConfigError, match="qat_images"):
        ExportConfig("out", X, qat=QATConfig(steps=1))


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ExportConfigError, match="is a file, not a folder"):
        ExportConfig(str(f), X)


def test_publish_replaces_the_earlier_export_and_removes_its_leftovers(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    for name in ("export_report.json", "model_int16x8.tflite", "model_int8.tflite", "notes.txt"):
        (out / name).write_text("old")
    staging = tmp_path / ".export.partial-1"
    staging.mkdir()
    (staging / "export_report.json").write_text("new")
    (staging / "model_int8.tflite").write_text("new")
    (staging / "mcu").mkdir()
    (staging / "mcu" / "model.c").write_text("new")
    publish(str(staging), str(out))
    assert not staging.exists()
    assert sorted(os.listdir(out)) == ["export_report.json", "mcu", "model_int8.tflite", "notes.txt"]
    assert (out / "model_int8.tflite").read_text() == "new" and (out / "notes.txt").read_text() == "old"
    assert "model_int16x8.tflite" in ARTEFACTS  # a stale artefact of the earlier export: removed


def test_resolve_task():
    import keras

    def model(inp, out):
        x = keras.Input(inp)
        y = keras.layers.Dense(out[-1])(keras.layers.Flatten()(x) if len(out) == 1 else x)
        return keras.Model(x, y)

    assert resolve_task("auto", model((28, 28, 1), (10,))) == "classification"
    assert resolve_task("auto", model((640,), (640,))) == "regression"  # an autoencoder
    assert resolve_task("auto", model((28, 28, 1), (1,))) == "regression"  # one output: not top-1
    assert resolve_task("regression", model((28, 28, 1), (10,))) == "regression"
    with pytest.raises(ExportConfigError, match="task classification needs a model output of shape"):
        resolve_task("classification", model((28, 28, 1), (1,)))


def test_edge_verdict_and_summary_column_come_from_edge_ops(monkeypatch):
    """The report's edge_only / non_edge_ops and the summary's "edge ops"
    column read export.formats.EDGE_OPS (one list; the core engineer keeps it
    in line with Vela and CMSIS-NN)."""
    import export.pipeline as P

    monkeypatch.setattr(P, "inner_quantize_ops", lambda flat: {})
    ops = {"CONV_2D": 2, "MAX_POOL_2D": 1, "FULLY_CONNECTED": 1}
    monkeypatch.setattr(P, "EDGE_OPS", frozenset({"CONV_2D", "FULLY_CONNECTED"}))
    assert edge_verdict(ops, b"")["non_edge_ops"] == ["MAX_POOL_2D"] and not edge_verdict(ops, b"")["edge_only"]
    monkeypatch.setattr(P, "EDGE_OPS", frozenset({"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"}))
    assert edge_verdict(ops, b"")["edge_only"]


@pytest.fixture(scope="module")
def conv_autoencoder(fmnist):
    """A convolutional autoencoder (output = input shape): a regression model."""
    import keras
    from s2nn_keras import S2Activation

    x = fmnist[0][:600].astype("float32") / 255.0
    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="enc")(inp)
    h = keras.layers.BatchNormalization(name="enc_bn")(h)
    h = S2Activation(name="enc_act")(h)
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", name="dec")(h), name="conv_autoencoder")
    model.compile("adam", "mse")
    model.fit(x[:500], x[:500], epochs=1, batch_size=50, verbose=0)
    return model, x


def test_regression_export_is_judged_by_output_agreement(conv_autoencoder, tmp_path, capsys):
    from export import export_run

    model, x = conv_autoencoder
    out = tmp_path / "ae"
    result = export_run(model, ExportConfig(str(out), x[500:540], formats=("float32",), max_tflm_examples=5,
                                            calibration_images=x[:100]))
    report = result.report
    assert report["task"] == "regression" and report["keras"]["accuracy"] is None
    lt = report["formats"]["float32"]["litert"]
    assert lt["accuracy"] is None and lt["agreement_with_keras"] == 1.0 and lt["correlation_with_keras"] > 0.999
    assert report["fold"]["agreement"] == 1.0 and report["checks"]["passed"]
    summary = capsys.readouterr().out
    assert "(regression)" in summary and "outputs agree (RMS difference <= 1% of the output range)" in summary
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["checks"]["passed"] and on_disk["task"] == "regression"


def test_a_failed_export_leaves_nothing(conv_autoencoder, tmp_path, monkeypatch):
    """An exception half-way (here: in the conversion) deletes the staging
    folder; the output folder is never created."""
    import export.pipeline
    from export import export_run

    model, x = conv_autoencoder

    def fail(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(export.pipeline, "convert", fail)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_run(model, ExportConfig(str(tmp_path / "out"), x[:8], formats=("float32",), verbose=False))
    assert os.listdir(tmp_path) == []


def test_model_and_data_must_fit(conv_autoencoder, tmp_path):
    import keras
    from export import export_run

    model, x = conv_autoencoder
    with pytest.raises(ExportConfigError, match=r"images of shape \(14, 14, 1\) do not fit the input"):
        export_run(model, ExportConfig(str(tmp_path / "o"), x[:4, ::2, ::2]))
    two = keras.Model(model.inputs, [model.outputs[0], model.outputs[0]])
    with pytest.raises(ExportConfigError, match="one input and one output; .* has 1 inputs and 2 outputs"):
        export_run(two, ExportConfig(str(tmp_path / "o"), x[:4]))
    with pytest.raises(ExportConfigError, match="export_run takes an export.ExportConfig"):
        export_run(model, {"output_dir": "o"})
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# The one loader
# --------------------------------------------------------------------------


def test_loader_one_line_errors(tmp_path):
    from export.loader import ModelFileError, load_model

    (tmp_path / "x.keras").write_text("text")
    with zipfile.ZipFile(tmp_path / "z.keras", "w") as z:
        z.writestr("a", "b")
    cases = {str(tmp_path / "none.keras"): "does not exist",
             str(tmp_path): "is a directory",
             str(tmp_path / "x.keras"): "is not a Keras model file (not a zip archive",
             str(tmp_path / "z.keras"): "holds no config.json",
             "m.tflite": "a .tflite file goes to python -m export.energy"}
    (tmp_path / "m.tflite").write_text("x")
    cases[str(tmp_path / "m.tflite")] = cases.pop("m.tflite")
    for path, words in cases.items():
        with pytest.raises(ModelFileError) as err:
            load_model(path)
        assert words in str(err.value) and "\n" not in str(err.value), (path, err.value)
    with pytest.raises(ModelFileError, match="got an object of type int"):
        load_model(3)


def test_loader_loads_every_layer_of_the_package(conv_autoencoder, tmp_path):
    """The folded model (ThresholdNeuron) and the quantization-aware one
    (QAT layers, ActivationQuantizer) load with the one loader."""
    from export import fold_batchnorm, load_model
    from export.transform.qat import quantization_aware_model

    model, x = conv_autoencoder
    for name, m in (("folded", fold_batchnorm(model)), ("qat", quantization_aware_model(model))):
        path = str(tmp_path / f"{name}.keras")
        m.save(path)
        again = load_model(path)
        np.testing.assert_array_equal(np.asarray(again(x[:4], training=False)), np.asarray(m(x[:4], training=False)))
