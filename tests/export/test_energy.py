"""export.energy: the energy report's files and CLI, and the agreement of the
TFLite report with the Keras one (float32 exact against the folded model,
int8 and int16x8 within quantization), in every neuron formulation the
export offers. The Keras-side equations are tested in
tests/s2nn_keras/test_energy.py and test_flops.py."""

import csv
import importlib
import inspect
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from export import energy
from export.cli import energy as energy_cli
from s2nn_keras import S2Activation
from s2nn_keras import datasets
from s2nn_keras.models import PreActResNet

L = keras.layers
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _known_spike_model():
    inp = keras.Input((4, 4, 1), name="image")
    conv1 = L.Conv2D(2, 1, use_bias=False, name="conv1")
    s = S2Activation("ste_s", threshold=0.5, name="neuron")(conv1(inp))
    c2 = L.Conv2D(3, 3, padding="same", use_bias=False, name="conv2")(s)
    logits = L.Dense(2, name="logits")(L.GlobalAveragePooling2D(name="gap")(s))
    model = keras.Model(inp, [logits, c2])
    conv1.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    return model


def _known_data():
    x = np.zeros((2, 4, 4, 1), np.float32)
    x[0].flat[[0, 5, 10, 15]] = 1.0
    x[1].flat[[1, 2, 3, 4, 6, 7, 8, 9]] = 1.0
    return x


KNOWN_RATE = 12 / 64


def test_compat_names_stay_importable_from_export_energy():
    from s2nn_keras import energy as lib_energy
    from s2nn_keras.flops import layer_flops

    assert energy.energy_report is lib_energy.energy_report and energy.layer_flops is layer_flops
    assert energy.PRESETS is lib_energy.PRESETS and energy.CONVENTIONS is lib_energy.CONVENTIONS
    # every public name resolves to the object of the module the table names, and nothing is left out
    assert set(energy.__all__) == set(energy._WHERE)
    for name, module in energy._WHERE.items():
        assert getattr(energy, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        energy.nope


# --------------------------------------------------------------------------
# Output files and CLI
# --------------------------------------------------------------------------


def test_write_energy_report_files(tmp_path, capsys):
    rep = energy.write_energy_report(_known_spike_model(), _known_data(), str(tmp_path))
    out = capsys.readouterr().out
    assert "E_Full/E_Method" in out and "conv2" in out and "convention: default" in out
    saved = json.loads((tmp_path / "energy_report.json").read_text())
    assert saved["efficiency"] == pytest.approx(rep["efficiency"])
    names = [r["name"] for r in rep["layers"]]
    assert sorted(names) == ["conv1", "conv2", "logits"]
    assert [r["name"] for r in saved["layers"]] == names
    with open(tmp_path / "energy_layers.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == names
    assert float(rows["conv2"]["firing_rate"]) == pytest.approx(KNOWN_RATE)
    assert rows["conv1"]["firing_rate"] == "" and rows["conv1"]["op"] == "MAC"
    png = tmp_path / "energy_report.png"
    if importlib.util.find_spec("matplotlib") is None:  # the CSV/JSON asserts above still ran
        assert not png.exists() and any("matplotlib is not installed" in n for n in saved["notes"])
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert not any("matplotlib" in n for n in saved["notes"])


def test_without_matplotlib_the_plot_is_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rep = energy.write_energy_report(_known_spike_model(), _known_data(), str(tmp_path), print_table=False)
    assert not (tmp_path / "energy_report.png").exists()
    assert any("matplotlib is not installed" in n for n in rep["notes"])
    saved = json.loads((tmp_path / "energy_report.json").read_text())
    assert any("matplotlib is not installed" in n for n in saved["notes"])


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert energy_cli.main(["--model", str(tmp_path / "missing.keras")]) == 2
    assert "does not exist" in _err_line(capsys)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    assert energy_cli.main(["--model", str(bad), "--max_test_examples", "4"]) == 2
    assert "is not a Keras model file (not a zip archive" in _err_line(capsys)
    good = str(tmp_path / "m.keras")
    _known_spike_model().save(good)
    assert energy_cli.main(["--model", good, "--e_mac_pj", "1"]) == 2
    assert "both" in _err_line(capsys)
    assert energy_cli.main(["--model", good, "--preset", "3nm"]) == 2
    assert "--preset: invalid choice '3nm'" in _err_line(capsys)
    assert energy_cli.main(["--model", good, "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in _err_line(capsys)
    assert energy_cli.main(["--model", good, "--data", str(tmp_path / "none.npz")]) == 2
    assert "--data" in _err_line(capsys)


def test_cli_subprocess_error_is_exactly_one_line(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"junk")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "export.energy", "--model", str(bad)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m export.energy: error: --model:"), proc.stderr
    assert "is not a Keras model file" in lines[0]


def test_cli_end_to_end_fashion_mnist(tmp_path, capsys):
    if datasets.fashion_mnist_idx_dir(None) is None:
        pytest.skip("Fashion-MNIST IDX files not installed")
    model = PreActResNet([1], (28, 28, 1), 10, width=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    out_dir = tmp_path / "rep"
    assert energy_cli.main(["--model", path, "--dataset", "fashion_mnist", "--max_test_examples", "32",
                        "--output_dir", str(out_dir), "--convention", "paper"]) == 0
    out = capsys.readouterr().out
    assert "convention: paper" in out and "wrote" in out
    saved = json.loads((out_dir / "energy_report.json").read_text())
    assert saved["num_examples"] == 32 and saved["convention"] == "paper"
    other = str(tmp_path / "cifar_shaped.keras")
    PreActResNet([1], (32, 32, 3), 10, width=4).save(other)
    assert energy_cli.main(["--model", other, "--dataset", "fashion_mnist", "--max_test_examples", "4"]) == 2
    assert "takes inputs of shape (32, 32, 3), fashion_mnist has (28, 28, 1)" in _err_line(capsys)
    # the same model on its own inputs (--data): measured
    npz = str(tmp_path / "cifar_shaped.npz")
    np.savez(npz, test_images=np.random.default_rng(0).random((6, 32, 32, 3), dtype=np.float32))
    assert energy_cli.main(["--model", other, "--data", npz, "--output_dir", str(tmp_path / "rep32")]) == 0
    assert json.loads((tmp_path / "rep32" / "energy_report.json").read_text())["num_examples"] == 6


# --------------------------------------------------------------------------
# Keras vs TFLite
# --------------------------------------------------------------------------


def _formulations():
    from export.tflite import convert as tflite

    params = inspect.signature(tflite.to_tflite).parameters
    if "neuron" not in params:
        return [None]
    from export.formats import NEURON_FORMULATIONS

    return list(NEURON_FORMULATIONS)


def _convert(model, quantization, data=None, neuron=None, **kwargs):
    from export import to_tflite

    if neuron is not None:
        kwargs["neuron"] = neuron
    return to_tflite(model, quantization, data, **kwargs)


@pytest.fixture(scope="module")
def trained_tiny():
    keras.utils.set_random_seed(0)
    if datasets.fashion_mnist_idx_dir(None) is not None:
        x, y = datasets.load_arrays("fashion_mnist", "test", max_examples=320)
        x = datasets.to_float(x)
    else:  # pragma: no cover
        rng = np.random.default_rng(0)
        x, y = rng.random((320, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 320)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)  # non-trivial BN statistics
    from export import fold_batchnorm

    return model, x, energy.energy_report(model, x), energy.energy_report(fold_batchnorm(model), x)


@pytest.mark.parametrize("neuron", _formulations())
def test_tflite_float32_matches_keras(trained_tiny, neuron):
    from s2nn_keras import firing_rates

    model, x, keras_rep, folded_rep = trained_tiny
    ref = firing_rates(model, x)
    assert keras_rep["neuron_firing_rates"] == pytest.approx(dict(ref), abs=1e-12)
    tfl = energy.tflite_energy_report(_convert(model, "float32", neuron=neuron), x, keras_model=model)
    assert tfl["quantization"] == "float32"
    assert [r["name"] for r in tfl["layers"]] == [r["name"] for r in keras_rep["layers"]]
    assert [r["flops"] for r in tfl["layers"]] == [r["flops"] for r in keras_rep["layers"]]
    assert [r["input_kind"] for r in tfl["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    cmp = energy.compare_rates(keras_rep, tfl)
    assert cmp["unmatched"] == [] and len(cmp["per_layer"]) == 6
    assert cmp["max_abs_diff"] <= 1e-6
    assert energy.compare_rates(folded_rep, tfl)["max_abs_diff"] <= 1e-6
    assert tfl["efficiency"] == pytest.approx(keras_rep["efficiency"], rel=1e-5)
    assert all(0.0 < r["firing_rate"] < 1.0 for r in keras_rep["layers"] if r["firing_rate"] is not None)


@pytest.mark.parametrize("neuron", _formulations())
def test_tflite_float32_with_merged_shortcuts_matches_keras(trained_tiny, neuron):
    """merge_shortcuts=True writes the builders' AveragePooling2D(1, 2) ->
    1x1 conv as one strided 1x1 CONV_2D reading the neuron map directly;
    its R is read at the positions it reads (the Keras side measures the
    pooling's output), so float32 still matches Keras to 1e-6."""
    from export.tflite import flatbuffer

    model, x, keras_rep, folded_rep = trained_tiny
    content = _convert(model, "float32", neuron=neuron, merge_shortcuts=True)
    graph = flatbuffer.read_model(content).main
    # The shortcut's AveragePooling2D(1, 2) is gone; the one AVERAGE_POOL_2D
    # left is the global average pool (the default gap_as_average_pool rewrite),
    # whose window is the whole 14x14 map.
    pools = [op for op in graph.operators if op.name == "AVERAGE_POOL_2D"]
    assert [(op.options.filterHeight, op.options.filterWidth) for op in pools] == [(14, 14)]
    strided = [op for op in graph.operators if op.name == "CONV_2D" and op.options.strideH == 2
               and tuple(graph.tensors[op.inputs[1]].shape[1:3]) == (1, 1)]
    assert len(strided) == 1
    tfl = energy.tflite_energy_report(content, x, keras_model=model)
    assert [r["name"] for r in tfl["layers"]] == [r["name"] for r in keras_rep["layers"]]
    assert [r["input_kind"] for r in tfl["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    shortcut = next(r for r in tfl["layers"] if r["tflite_op"] == strided[0].index)
    assert shortcut["name"] == "stage2_block1_shortcut"
    assert "positions the strided 1x1 CONV_2D reads" in shortcut["input_source"]
    cmp = energy.compare_rates(keras_rep, tfl)
    assert cmp["unmatched"] == [] and len(cmp["per_layer"]) == 6
    assert cmp["max_abs_diff"] <= 1e-6, cmp
    assert energy.compare_rates(folded_rep, tfl)["max_abs_diff"] <= 1e-6
    assert tfl["efficiency"] == pytest.approx(keras_rep["efficiency"], rel=1e-5)
    # the whole neuron map (what the merged conv's input tensor holds) has another rate
    block_input = next(r for r in keras_rep["layers"] if r["name"] == "stage2_block1_conv1")
    assert abs(block_input["firing_rate"] - shortcut["firing_rate"]) > 1e-5


@pytest.mark.parametrize("neuron", _formulations())
def test_tflite_int8_and_report_files(trained_tiny, tmp_path, neuron):
    model, x, keras_rep, _ = trained_tiny
    int8 = _convert(model, "int8", lambda: [x[:64]], neuron=neuron)
    path = tmp_path / "m_int8.tflite"
    path.write_bytes(int8)
    from export import fold_batchnorm

    rep = energy.write_energy_report(model, x, str(tmp_path / "out"), tflite_models={"int8": str(path)},
                                     folded_model=fold_batchnorm(model), print_table=False, plot=False)
    q = rep["tflite"]["int8"]
    assert q["quantization"] == "int8"
    assert [r["input_kind"] for r in q["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    assert q["rate_difference_vs_keras"]["unmatched"] == []
    assert q["rate_difference_vs_keras"]["max_abs_diff"] < 0.02
    assert "rate_difference_vs_folded_keras" in q
    assert all(r["spike_levels"][0] == 0.0 for r in q["layers"] if r["input_kind"] == "spikes")
    saved = json.loads((tmp_path / "out" / "energy_report.json").read_text())
    assert set(saved["tflite"]) == {"int8"}


@pytest.mark.parametrize("neuron", _formulations())
def test_tflite_report_int16x8(trained_tiny, neuron):
    model, x, keras_rep, _ = trained_tiny
    rep = energy.tflite_energy_report(_convert(model, "int16x8", lambda: [x[:64]], neuron=neuron), x,
                                      keras_model=model)
    assert rep["quantization"] == "int16x8"
    assert [r["name"] for r in rep["layers"]] == [r["name"] for r in keras_rep["layers"]]
    assert [r["input_kind"] for r in rep["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    cmp = energy.compare_rates(keras_rep, rep)
    assert cmp["unmatched"] == [] and cmp["max_abs_diff"] < 0.02


def test_tflite_report_standalone_cli(trained_tiny, tmp_path):
    model, x, keras_rep, _ = trained_tiny
    path = tmp_path / "m.tflite"
    path.write_bytes(_convert(model, "int8", lambda: [x[:64]]))
    out_dir = tmp_path / "tfl"
    assert energy_cli.main(["--model", str(path), "--max_test_examples", "16", "--output_dir", str(out_dir)]) == 0
    saved = json.loads((out_dir / "energy_report.json").read_text())
    assert saved["source"] == "tflite" and saved["num_examples"] == 16
    # rows named by the Keras layers (read from the converter's tensor names), not by 200-character tensor names
    # (in the flatbuffer's op order, which may differ from the Keras layer order)
    assert sorted(r["name"] for r in saved["layers"]) == sorted(r["name"] for r in keras_rep["layers"])
    assert all(len(r["input_source"]) < 120 for r in saved["layers"]), [r["input_source"] for r in saved["layers"]]
    assert [r["input_kind"] for r in saved["layers"]][:2] == ["image", "spikes"]
    assert saved["layers"][-1]["input_kind"] == "pooled_spikes"
    assert math.isfinite(saved["efficiency"]) and saved["efficiency"] > 1.0
