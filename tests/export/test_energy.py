"""Tests of export.energy: Eq. B.1 on hand-computed layers and the paper's
6.98 ratio, Eqs. B.2-B.4 on a tiny model with known spikes, the output
files and CLI, and the Keras/TFLite agreement."""

import csv
import json
import math
import os

import keras
import numpy as np
import pytest

from export import energy
from s2nn_keras import S2Activation
from s2nn_keras.models import PreActResNet, PreActResNet18, PreActResNet106

L = keras.layers


# --------------------------------------------------------------------------
# B.1
# --------------------------------------------------------------------------


def test_b1_hand_computed_layers():
    inp = keras.Input((16, 16, 4), name="x")
    a = L.Conv2D(8, 3, strides=2, padding="same", name="conv_s2")(inp)          # out 8x8x8
    b = L.Conv2D(8, (3, 5), padding="valid", groups=2, name="grouped")(a)       # out 6x4x8
    c = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)  # out 8x8x16
    d = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=1, name="sep")(c)  # out 8x8x6
    e = L.Conv2DTranspose(5, 2, strides=2, name="tconv")(d)                     # in 8x8x6
    sc = L.Conv2D(8, 1, strides=2, name="shortcut")(inp)                       # out 8x8x8
    f = L.Add(name="add")([a, sc])
    g = L.Reshape((64, 8), name="seq")(f)
    h = L.Dense(3, name="dense_seq")(g)                                         # 64 positions
    i = L.Flatten()(h)
    j = L.Dense(10, name="logits")(i)
    k = L.Conv1D(4, 3, name="conv1d")(g)                                        # out 62x4
    model = keras.Model(inp, [j, e, b, k])
    flops = energy.layer_flops(model)
    expected = {
        "conv_s2": 3 * 3 * 8 * 8 * 4 * 8,
        "grouped": 3 * 5 * 6 * 4 * (8 // 2) * 8,
        "dw": 3 * 3 * 8 * 8 * 8 * 2,
        "sep": 3 * 3 * 8 * 8 * 16 * 1 + 8 * 8 * 16 * 6,
        "tconv": 2 * 2 * 8 * 8 * 6 * 5,
        "shortcut": 1 * 8 * 8 * 4 * 8,
        "dense_seq": 64 * 8 * 3,
        "logits": 192 * 10,
        "conv1d": 3 * 62 * 8 * 4,
    }
    assert dict(flops) == expected


def test_b1_rejects_kernel_layer_without_rule_and_subclassed_model():
    inp = keras.Input((8,))
    out = L.EinsumDense("ab,bc->ac", output_shape=4, name="einsum")(inp)
    with pytest.raises(ValueError, match="einsum"):
        energy.layer_flops(keras.Model(inp, out))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="not a functional"):
        energy.layer_flops(Sub())


def test_b1_nested_and_shared_layers():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(3, name="d_in")(inner_in), name="inner")
    inp = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    out = inner(shared(shared(inp)))
    flops = energy.layer_flops(keras.Model(inp, out))
    assert dict(flops) == {"shared": 16, "shared#2": 16, "inner/d_in": 12}


def test_b1_paper_ratio_resnet106_over_resnet18():
    """§5.3: full-precision FLOPs of ResNet106 are 6.98x those of ResNet18."""
    f18 = energy.layer_flops(PreActResNet18((32, 32, 3), 10, activation="relu", width=64))
    f106 = energy.layer_flops(PreActResNet106((32, 32, 3), 10, activation="relu", width=64))
    # stem + 16 convs + 3 projection shortcuts + classifier
    assert len(f18) == 21 and len(f106) == 1 + 104 + 3 + 1
    assert sum(f18.values()) == 555_422_720
    assert sum(f106.values()) == 3_877_311_488
    ratio = sum(f106.values()) / sum(f18.values())
    assert round(ratio, 2) == 6.98
    assert ratio == pytest.approx(6.980830, abs=1e-6)


# --------------------------------------------------------------------------
# B.2 - B.4 on known spikes
# --------------------------------------------------------------------------


def _known_spike_model(surrogate="ste_s"):
    """x (4x4x1) -> 1x1 conv with kernel [+1, -1] -> neuron (u_th 0.5):
    channel 0 fires exactly where the pixel is 1, channel 1 never does.
    The spikes feed a 3x3 conv and (through GAP) a Dense."""
    inp = keras.Input((4, 4, 1), name="image")
    conv1 = L.Conv2D(2, 1, use_bias=False, name="conv1")
    u = conv1(inp)
    s = S2Activation(surrogate, threshold=0.5, name="neuron")(u)
    c2 = L.Conv2D(3, 3, padding="same", use_bias=False, name="conv2")(s)
    pooled = L.GlobalAveragePooling2D(name="gap")(s)
    logits = L.Dense(2, name="logits")(L.Dropout(0.5, name="drop")(pooled))
    model = keras.Model(inp, [logits, c2])
    conv1.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    return model


def _known_data():
    x = np.zeros((2, 4, 4, 1), np.float32)
    x[0].flat[[0, 5, 10, 15]] = 1.0          # 4 of 16 pixels
    x[1].flat[[1, 2, 3, 4, 6, 7, 8, 9]] = 1.0  # 8 of 16 pixels
    return x


# R = (4 + 8) spikes / (2 examples * 16 pixels * 2 channels)
KNOWN_RATE = 12 / 64
FLOPS = {"conv1": 1 * 16 * 1 * 2, "conv2": 9 * 16 * 2 * 3, "logits": 2 * 2}


def test_b2_to_b4_default_convention_known_spikes():
    rep = energy.energy_report(_known_spike_model(), _known_data(), convention="default")
    rows = {r["name"]: r for r in rep["layers"]}
    assert {n: r["flops"] for n, r in rows.items()} == FLOPS
    assert rows["conv1"]["input_kind"] == "image" and rows["conv1"]["firing_rate"] is None
    assert rows["conv2"]["input_kind"] == "spikes"
    assert rows["conv2"]["firing_rate"] == pytest.approx(KNOWN_RATE, abs=1e-12)
    assert rows["logits"]["input_kind"] == "pooled_spikes"
    assert rows["logits"]["firing_rate"] == pytest.approx(KNOWN_RATE, abs=1e-12)
    assert rep["neuron_firing_rates"] == {"neuron": pytest.approx(KNOWN_RATE)}
    e_full = 4.6 * (32 + 864 + 4)                       # B.3
    e_method = 4.6 * 32 + 0.9 * 864 * KNOWN_RATE + 4.6 * 4  # image and pooled: MAC at rate 1
    assert rep["total_flops"] == 900
    assert rep["e_full_pj"] == pytest.approx(e_full, rel=1e-12)
    assert rep["e_method_pj"] == pytest.approx(e_method, rel=1e-12)
    assert rep["efficiency"] == pytest.approx(e_full / e_method, rel=1e-12)
    assert rows["conv2"]["energy_pj"] == pytest.approx(0.9 * 864 * KNOWN_RATE)
    assert sum(r["energy_share"] for r in rep["layers"]) == pytest.approx(1.0)
    assert rep["convention"] == "default" and "full rate" in rep["convention_description"]
    assert any("conv1" in n and "MAC" in n for n in rep["notes"])


def test_b4_paper_convention_known_spikes():
    rep = energy.energy_report(_known_spike_model(), _known_data(), convention="paper")
    e_method = 0.9 * (32 * 1.0 + 864 * KNOWN_RATE + 4 * KNOWN_RATE)  # Eq. B.4 literally
    assert rep["e_method_pj"] == pytest.approx(e_method, rel=1e-12)
    assert rep["efficiency"] == pytest.approx(4.6 * 900 / e_method, rel=1e-12)
    assert rep["convention"] == "paper"


def test_signed_spikes_ste_b():
    rep_d = energy.energy_report(_known_spike_model("ste_b"), _known_data(), convention="default")
    rep_p = energy.energy_report(_known_spike_model("ste_b"), _known_data(), convention="paper")
    rows = {r["name"]: r for r in rep_d["layers"]}
    assert rows["conv2"]["input_kind"] == "signed_spikes"
    assert rows["conv2"]["firing_rate"] == pytest.approx(KNOWN_RATE)  # the +1 outputs
    # default: a -1 is not silent -> every input accumulates
    assert rows["conv2"]["energy_pj"] == pytest.approx(0.9 * 864)
    rows_p = {r["name"]: r for r in rep_p["layers"]}
    assert rows_p["conv2"]["energy_pj"] == pytest.approx(0.9 * 864 * KNOWN_RATE)
    assert rows_p["logits"]["energy_pj"] == pytest.approx(0.9 * 4 * KNOWN_RATE)


def test_relu_model_is_full_precision_in_both_conventions():
    model = PreActResNet([1], (8, 8, 1), 3, activation="relu", width=4)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    for conv in ("default", "paper"):
        rep = energy.energy_report(model, x, convention=conv)
        assert rep["efficiency"] == 1.0
        assert all(r["op"] == "MAC" and r["charged_rate"] == 1.0 for r in rep["layers"])


def test_data_forms_give_the_same_report():
    model, x = _known_spike_model(), _known_data()
    import tensorflow as tf

    ref = energy.energy_report(model, x)["e_method_pj"]
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(2))).batch(1)
    assert energy.energy_report(model, ds)["e_method_pj"] == pytest.approx(ref)
    gen = ((x[i:i + 1], 0) for i in range(2))  # one-shot generator
    rep = energy.energy_report(model, gen)
    assert rep["e_method_pj"] == pytest.approx(ref) and rep["num_examples"] == 2
    assert rep["neuron_firing_rates"] == {"neuron": pytest.approx(KNOWN_RATE)}
    with pytest.raises(ValueError, match="empty"):
        energy.energy_report(model, x[:0])


def test_presets_and_user_values():
    model, x = _known_spike_model(), _known_data()
    rep = energy.energy_report(model, x, preset="45nm_int8")
    assert (rep["e_mac_pj"], rep["e_ac_pj"]) == (0.23, 0.03)
    assert "Horowitz" in rep["preset_description"]
    assert rep["e_full_pj"] == pytest.approx(0.23 * 900)
    rep = energy.energy_report(model, x, e_mac_pj=2.0, e_ac_pj=0.5)
    assert rep["preset"] == "custom" and rep["e_full_pj"] == pytest.approx(1800.0)
    assert energy.PRESETS["45nm_fp32"][:2] == (4.6, 0.9)
    assert energy.PRESETS["45nm_fp32"][0] / energy.PRESETS["45nm_fp32"][1] == pytest.approx(5.11, abs=5e-3)
    with pytest.raises(ValueError, match="unknown preset"):
        energy.energy_report(model, x, preset="7nm")
    with pytest.raises(ValueError, match="both"):
        energy.energy_report(model, x, e_mac_pj=1.0)
    with pytest.raises(ValueError, match="positive"):
        energy.energy_report(model, x, e_mac_pj=-1.0, e_ac_pj=0.1)
    with pytest.raises(ValueError, match="unknown convention"):
        energy.energy_report(model, x, convention="lee2020")


def test_max_pool_and_subsample_of_spikes_measured_on_pooled_map():
    inp = keras.Input((4, 4, 1))
    conv1 = L.Conv2D(1, 1, use_bias=False, name="c1")
    s = S2Activation("ste_s", threshold=0.5, name="n")(conv1(inp))
    mp = L.MaxPooling2D(2, name="mp")(s)
    sub = L.AveragePooling2D(pool_size=1, strides=2, name="sub")(s)
    out = L.Concatenate()([L.Conv2D(1, 1, name="after_max")(mp), L.Conv2D(1, 1, name="after_sub")(sub)])
    model = keras.Model(inp, out)
    conv1.set_weights([np.ones((1, 1, 1, 1), np.float32)])
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 0, 0] = 1.0  # one spike at (0, 0): every 2x2 max window... only the first holds it
    rows = {r["name"]: r for r in energy.energy_report(model, x)["layers"]}
    assert rows["after_max"]["input_kind"] == "spikes" and rows["after_max"]["firing_rate"] == 0.25
    assert rows["after_sub"]["input_kind"] == "spikes" and rows["after_sub"]["firing_rate"] == 0.25


# --------------------------------------------------------------------------
# Output files and CLI
# --------------------------------------------------------------------------


def test_write_energy_report_files(tmp_path, capsys):
    rep = energy.write_energy_report(_known_spike_model(), _known_data(), str(tmp_path))
    out = capsys.readouterr().out
    assert "E_Full/E_Method" in out and "conv2" in out and "convention: default" in out
    with open(tmp_path / "energy_report.json") as f:
        saved = json.load(f)
    assert saved["efficiency"] == pytest.approx(rep["efficiency"])
    names = [r["name"] for r in rep["layers"]]
    assert sorted(names) == ["conv1", "conv2", "logits"]
    assert [r["name"] for r in saved["layers"]] == names
    with open(tmp_path / "energy_layers.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == names
    assert float(rows["conv2"]["firing_rate"]) == pytest.approx(KNOWN_RATE)
    assert rows["conv1"]["firing_rate"] == "" and rows["conv1"]["op"] == "MAC"
    png = (tmp_path / "energy_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert energy.main(["--model", str(tmp_path / "missing.keras")]) == 2
    assert "no such file" in _err_line(capsys)
    with pytest.raises(SystemExit) as exc:
        energy.main(["--model", "m.keras", "--preset", "3nm"])
    assert exc.value.code == 2
    assert "invalid choice" in _err_line(capsys)
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    assert energy.main(["--model", str(bad), "--max_test_examples", "4"]) == 2
    assert "cannot load" in _err_line(capsys)
    assert energy.main(["--model", str(bad), "--e_mac_pj", "1"]) == 2
    assert "both" in _err_line(capsys)


def test_cli_subprocess_error_is_exactly_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"junk")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "export.energy", "--model", str(bad)], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m export.energy: error: cannot load"), proc.stderr


def test_cli_end_to_end_fashion_mnist(tmp_path, capsys):
    pytest.importorskip("trainers.data")
    from trainers import data as data_lib

    if data_lib.fashion_mnist_idx_dir(None) is None:
        pytest.skip("Fashion-MNIST IDX files not installed")
    model = PreActResNet([1], (28, 28, 1), 10, width=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    out_dir = tmp_path / "rep"
    assert energy.main(["--model", path, "--dataset", "fashion_mnist", "--max_test_examples", "32",
                        "--output_dir", str(out_dir), "--convention", "paper"]) == 0
    out = capsys.readouterr().out
    assert "convention: paper" in out
    saved = json.loads((out_dir / "energy_report.json").read_text())
    assert saved["num_examples"] == 32 and saved["convention"] == "paper"
    # a model whose input shape is not the dataset's is a one-line error
    other = str(tmp_path / "cifar_shaped.keras")
    PreActResNet([1], (32, 32, 3), 10, width=4).save(other)
    assert energy.main(["--model", other, "--dataset", "fashion_mnist", "--max_test_examples", "4"]) == 2
    assert "expects inputs (32, 32, 3)" in _err_line(capsys)


# --------------------------------------------------------------------------
# Keras vs TFLite
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_tiny():
    from trainers import data as data_lib

    keras.utils.set_random_seed(0)
    if data_lib.fashion_mnist_idx_dir(None) is not None:
        x, y = data_lib.load_arrays("fashion_mnist", "test", max_examples=320)
        x = data_lib.to_float(x)
    else:  # pragma: no cover
        rng = np.random.default_rng(0)
        x, y = rng.random((320, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 320)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)  # non-trivial BN statistics
    return model, x


def test_tflite_report_matches_keras(trained_tiny, tmp_path):
    from export import to_tflite
    from s2nn_keras import firing_rates

    model, x = trained_tiny
    keras_rep = energy.energy_report(model, x)
    # the neuron rates agree with s2nn_keras.firing (Fig. B.5 quantities)
    ref = firing_rates(model, x)
    assert list(keras_rep["neuron_firing_rates"]) == list(ref)
    for name, rate in ref.items():
        # (firing_rates sums float32 per-example means; the report counts in float64)
        assert keras_rep["neuron_firing_rates"][name] == pytest.approx(rate, abs=1e-6)
    f32 = to_tflite(model, "float32")
    tfl = energy.tflite_energy_report(f32, x, keras_model=model)
    assert tfl["quantization"] == "float32"
    assert [r["name"] for r in tfl["layers"]] == [r["name"] for r in keras_rep["layers"]]
    assert [r["flops"] for r in tfl["layers"]] == [r["flops"] for r in keras_rep["layers"]]
    assert [r["input_kind"] for r in tfl["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    cmp = energy.compare_rates(keras_rep, tfl)
    assert cmp["unmatched"] == [] and len(cmp["per_layer"]) == 6
    assert cmp["max_abs_diff"] <= 1e-6
    assert tfl["efficiency"] == pytest.approx(keras_rep["efficiency"], rel=1e-5)
    # some neurons fire, not all
    assert all(0.0 < r["firing_rate"] < 1.0 for r in keras_rep["layers"] if r["firing_rate"] is not None)

    # int8 is reported beside it; its spike tensors are dequantized.
    int8 = to_tflite(model, "int8", lambda: [x[:64]])
    path = tmp_path / "m_int8.tflite"
    path.write_bytes(int8)
    from export import fold_batchnorm

    rep = energy.write_energy_report(model, x, str(tmp_path / "out"), tflite_models={"float32": f32, "int8": str(path)},
                                     folded_model=fold_batchnorm(model), print_table=False, plot=False)
    assert rep["tflite"]["float32"]["rate_difference_vs_keras"]["max_abs_diff"] <= 1e-6
    # the float32 TFLite model is the folded Keras model: identical spikes
    assert rep["tflite"]["float32"]["rate_difference_vs_folded_keras"]["max_abs_diff"] == 0.0
    q = rep["tflite"]["int8"]
    assert q["quantization"] == "int8"
    assert q["rate_difference_vs_keras"]["unmatched"] == []
    assert q["rate_difference_vs_keras"]["max_abs_diff"] < 0.02
    saved = json.loads((tmp_path / "out" / "energy_report.json").read_text())
    assert set(saved["tflite"]) == {"float32", "int8"}


def test_tflite_report_int16x8(trained_tiny):
    """int16x8 builds the neurons as a ramp with a per-channel affine
    (a 1x1 DEPTHWISE_CONV_2D): those ops are not network layers and are left
    out; the spike tensors are read as spikes."""
    from export import to_tflite

    model, x = trained_tiny
    keras_rep = energy.energy_report(model, x)
    rep = energy.tflite_energy_report(to_tflite(model, "int16x8", lambda: [x[:64]]), x, keras_model=model)
    assert rep["quantization"] == "int16x8"
    assert [r["name"] for r in rep["layers"]] == [r["name"] for r in keras_rep["layers"]]
    assert [r["input_kind"] for r in rep["layers"]] == [r["input_kind"] for r in keras_rep["layers"]]
    cmp = energy.compare_rates(keras_rep, rep)
    assert cmp["unmatched"] == [] and cmp["max_abs_diff"] < 0.02
    assert any("not counted" in n for n in rep["notes"])


def test_tflite_report_standalone_cli(trained_tiny, tmp_path, capsys):
    from export import to_tflite

    model, x = trained_tiny
    path = tmp_path / "m.tflite"
    path.write_bytes(to_tflite(model, "float32"))
    out_dir = tmp_path / "tfl"
    assert energy.main(["--model", str(path), "--max_test_examples", "16", "--output_dir", str(out_dir)]) == 0
    saved = json.loads((out_dir / "energy_report.json").read_text())
    assert saved["source"] == "tflite" and saved["num_examples"] == 16
    assert math.isfinite(saved["efficiency"]) and saved["efficiency"] > 1.0
    assert os.path.isfile(out_dir / "energy_report.png")
