"""Quantization-aware fine-tuning (export.transform.qat): the Keras model rounds where
the int8 model rounds, on the grids the export writes, so the int8 TFLite
model reproduces it."""

import json
import os

import numpy as np
import pytest

import keras

from export.transform.edge import GridQuantize, fake_quantize_kernel, quantization_params
from export.transform.qat import (ActivationQuantizer, QATConfig, QATConv2D, QATDense, QATError, calibrate,
                        fake_quantize_per_channel, fine_tune, inference_model, quantization_aware_model,
                        spike_average_grid)
from s2nn_keras import S2Activation


def _tiny(activation="s2nn", seed=0):
    """PreActResNet [1, 1] width 4 on 28x28x1 with BN statistics measured on
    real images (40 training-mode passes), so neurons fire about as trained ones do."""
    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(seed)
    return PreActResNet([1, 1], (28, 28, 1), 10, activation=activation, width=4, dropout=0.1)


def _warm_bn(model, x):
    for i in range(40):
        model(x[(i * 32) % len(x):][:32], training=True)
    return model


@pytest.fixture(scope="module")
def data(fmnist):
    x_train, y_train, x_test, y_test = fmnist
    return (x_train[:2000].astype("float32") / 255.0, x_train[-200:].astype("float32") / 255.0,
            x_test[:200].astype("float32") / 255.0, y_test[:200])


@pytest.fixture(scope="module")
def tiny(data):
    return _warm_bn(_tiny(), data[0])


def test_fake_quantize_per_channel_rounds_half_away_and_passes_gradients():
    import tensorflow as tf

    w = np.array([[127.0, 1.0], [2.5, 0.0], [-2.5, 0.0], [1.5, 0.0]], np.float32)  # channel 1: zero but one
    q = np.asarray(fake_quantize_per_channel(w))
    np.testing.assert_array_equal(q[:, 0], [127.0, 3.0, -3.0, 2.0])   # s = 1: ties away from zero
    np.testing.assert_allclose(q[:, 1], [1.0, 0.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.1, (3, 3, 4, 5)).astype(np.float32)
    kernel[..., 2] = 0.0   # all-zero channel stays zero
    fq = np.asarray(fake_quantize_per_channel(kernel))
    np.testing.assert_allclose(fq, fake_quantize_kernel(kernel), rtol=1e-6, atol=1e-9)
    steps = np.max(np.abs(kernel.reshape(-1, 5)), axis=0) / 127.0
    codes = fq.reshape(-1, 5) / np.where(steps > 0, steps, 1.0)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)   # on the int8 grid
    assert np.all(np.abs(codes) <= 127.0 + 1e-4) and np.all(fq[..., 2] == 0)
    v = tf.Variable(kernel)
    c = rng.normal(size=kernel.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fake_quantize_per_channel(v) * c)
    np.testing.assert_allclose(tape.gradient(loss, v), c)   # straight through


def test_activation_quantizer_rounds_like_grid_quantize():
    import tensorflow as tf

    scale, zp = 0.0373744, -13
    x = np.random.default_rng(1).uniform(-8, 8, (4, 1000)).astype(np.float32)
    q = ActivationQuantizer(scale, zp)
    np.testing.assert_array_equal(np.asarray(q(x)), x)         # inactive: identity
    q.set_grid(scale, zp)
    out = np.asarray(q(x))
    np.testing.assert_array_equal(out, np.asarray(GridQuantize(scale, zp)(x)))
    codes = out / scale + zp
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.min() >= -128 - 1e-3 and codes.max() <= 127 + 1e-3
    t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = tf.reduce_sum(q(t))
    inside = (x >= (-128 - zp) * scale) & (x <= (127 - zp) * scale)
    np.testing.assert_array_equal(np.asarray(tape.gradient(y, t)), inside.astype(np.float32))


@pytest.mark.parametrize("count", [1, 49, 196, 255, 256, 784, 1023])
@pytest.mark.parametrize("off", [0.0, -1.0])
def test_spike_average_grid_is_exact_or_tie_free(count, off):
    scale, zp = spike_average_grid(count, off)
    k = np.arange(count + 1)
    values = k / count if off == 0.0 else (2 * k - count) / count
    steps = values / scale                       # in grid steps
    frac = np.abs(steps - np.floor(steps) - 0.5)
    if count <= (255 if off == 0.0 else 127):
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)   # every average on the grid
    assert frac.min() >= 0.05                    # never near a tie
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    assert lo <= values.min() + 1e-6 and values.max() <= hi + 1e-6   # never clipped


def test_qat_model_quantizes_exactly_what_the_int8_model_rounds(tiny):
    qat = quantization_aware_model(tiny)
    quantizers = {l.name for l in qat.layers if isinstance(l, ActivationQuantizer)}
    assert quantizers == {"image_quant", "stem_conv_quant", "stage1_block1_conv2_quant", "stage1_block1_add_quant",
                          "stage2_block1_shortcut_quant", "stage2_block1_conv2_quant", "stage2_block1_add_quant",
                          "gap_quant", "logits_quant"}
    # conv1 feeds BN -> neuron only: fused into the int8 neuron, never rounded
    assert "stage1_block1_conv1_quant" not in quantizers
    assert isinstance(qat.get_layer("stage1_block1_conv1"), QATConv2D)
    assert isinstance(qat.get_layer("logits"), QATDense)
    assert all(not l.trainable for l in qat.layers if isinstance(l, keras.layers.BatchNormalization))
    assert qat.name == tiny.name and len(qat.trainable_weights) == len(
        [l for l in tiny.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]) + 1  # + logits bias


def test_qat_rejects_what_it_cannot_simulate():
    with pytest.raises(QATError, match="spiking"):
        quantization_aware_model(_tiny("relu"))
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.LayerNormalization(name="norm")(inputs)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(S2Activation(name="act")(h)))
    with pytest.raises(QATError, match="norm.*weights.*without --qat_epochs"):
        quantization_aware_model(keras.Model(inputs, out))
    h = keras.layers.Conv2DTranspose(2, 3, name="up")(inputs)   # simulated: QATConv2DTranspose
    out = keras.layers.Dense(2)(keras.layers.Flatten()(S2Activation(name="act")(h)))
    assert type(quantization_aware_model(keras.Model(inputs, out)).get_layer("up")).__name__ == "QATConv2DTranspose"
    h = keras.layers.Multiply(name="mul")([inputs, inputs])
    out = keras.layers.Dense(2)(keras.layers.Flatten()(S2Activation(name="act")(h)))
    with pytest.raises(QATError, match="mul"):
        quantization_aware_model(keras.Model(inputs, out))


def test_qat_simulates_depthwise_kernels_and_merges():
    """A DepthwiseConv2D becomes QATDepthwiseConv2D (kernel on its int8 grid per
    output channel), a Concatenate gets its output rounded like an Add."""
    from export.transform.layers import QATDepthwiseConv2D

    inputs = keras.Input((8, 8, 2))
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inputs)
    h = keras.layers.Concatenate(name="cat")([h, h])
    out = keras.layers.Dense(2)(keras.layers.Flatten()(S2Activation(name="act")(h)))
    qat = quantization_aware_model(keras.Model(inputs, out))
    dw = qat.get_layer("dw")
    assert isinstance(dw, QATDepthwiseConv2D)
    assert isinstance(qat.get_layer("cat_quant"), ActivationQuantizer)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype("float32")
    kernel = dw.get_weights()[0]
    np.testing.assert_allclose(np.asarray(fake_quantize_per_channel(kernel, (-2, -1))),
                               fake_quantize_kernel(kernel, "DepthwiseConv2D"), rtol=1e-6, atol=1e-7)
    plain = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    plain.build((None, 8, 8, 2))
    plain.set_weights([fake_quantize_kernel(kernel, "DepthwiseConv2D"), dw.get_weights()[1]])
    np.testing.assert_allclose(np.asarray(dw(x)), np.asarray(plain(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count", [1, 2, 4, 9, 16, 49, 196, 255, 256, 300])
def test_average_pool_of_spikes_rounds_as_tflite_average_pool(count):
    """Closed form of TFLite's int8 AVERAGE_POOL_2D on k of ``count`` spikes
    (codes -128 / 127): ``acc = 255 k - 128 count``, ``(acc +- count // 2) /
    count`` truncated (half away from zero); every k checked."""
    from export.transform.layers import average_pool_of_spikes

    k = np.arange(count + 1)
    acc = 255 * k - 128 * count
    code = np.sign(acc) * ((np.abs(acc) + count // 2) // count)
    x = (k / count).astype(np.float32)
    got = np.asarray(average_pool_of_spikes(x, count, 1 / 255, -128))
    np.testing.assert_array_equal(np.round(got.astype(np.float64) * 255).astype(int) - 128, code)
    if count == 300:
        # A fake-quant op rounds the ties (acc / count ending in .5) by float
        # noise: on 300 spikes it misses 11 of them (k = 170: acc / 300 = 16.5,
        # TFLite 17, fake quant 16), so the exact form is needed.
        fq = np.asarray(ActivationQuantizer(1 / 255, -128, fixed=True)(x)).astype(np.float64)
        assert np.sum(np.round(fq * 255).astype(int) - 128 != code) > 0


def test_calibration_is_a_fixed_point_of_the_quantized_model(tiny, data):
    _, calib, _, _ = data
    qat = quantization_aware_model(tiny)
    result = calibrate(qat, calib)
    assert result["settled"] and result["rounds"] >= 2
    quantizers = [l for l in qat.layers if isinstance(l, ActivationQuantizer) and not l.fixed]
    # The export writes the global average pool as AVERAGE_POOL_2D (default
    # rewrite), which keeps the spike grid and rounds 196 spikes its own way.
    gap = qat.get_layer("gap_quant")
    assert gap.fixed and gap.grid == pytest.approx((1 / 255, -128), rel=1e-6) and gap.average_count == 14 * 14
    # Without that rewrite it is a MEAN, on its own tie-free grid.
    mean = quantization_aware_model(tiny, rewrites=()).get_layer("gap_quant")
    assert mean.grid == spike_average_grid(14 * 14) and mean.average_count == 0
    assert "gap_quant" in result["grids"]
    probe = keras.Model(qat.inputs[0], [q.input for q in quantizers])
    for q, v in zip(quantizers, probe(calib, training=False)):
        v = np.asarray(v)
        assert q.active
        assert q.grid == pytest.approx(quantization_params(v.min(), v.max(), "int8"), rel=1e-6), q.name
    assert qat.get_layer("image_quant").grid == pytest.approx((1 / 255, -128), rel=1e-6)


def test_inference_model_is_the_qat_model_with_int8_kernels(tiny, data, tmp_path):
    _, calib, x, _ = data
    qat = quantization_aware_model(tiny)
    calibrate(qat, calib)
    deployed = inference_model(qat)
    assert not any(isinstance(l, (ActivationQuantizer, QATConv2D, QATDense)) for l in deployed.layers)
    for layer in deployed.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = layer.get_weights()[0]
            np.testing.assert_allclose(fake_quantize_kernel(kernel), kernel, rtol=1e-6, atol=1e-9)
        if isinstance(layer, GridQuantize):
            assert (layer.scale, layer.zero_point) == qat.get_layer(layer.name).grid
    a, b = np.asarray(qat(x, training=False)), np.asarray(deployed(x, training=False))
    # the same function; only a float tie at a rounding boundary (the kernel is
    # a computed tensor in one, a constant in the other: summation order) may differ
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.99 and np.mean(np.all(a == b, axis=1)) >= 0.98
    path = str(tmp_path / "qat.keras")
    deployed.save(path)
    from export import load_model

    np.testing.assert_array_equal(np.asarray(load_model(path)(x, training=False)), b)


def test_fine_tune_distils_without_touching_batchnorm(tiny, data):
    x_train, calib, _, _ = data
    qat = quantization_aware_model(tiny)
    calibrate(qat, calib)
    bn_before = [w.copy() for l in qat.layers if isinstance(l, keras.layers.BatchNormalization)
                 for w in l.get_weights()]
    kernel_before = qat.get_layer("stem_conv").get_weights()[0].copy()
    out = fine_tune(qat, tiny, x_train, QATConfig(epochs=0.05, batch_size=25, learning_rate=1e-3, train_examples=1000))
    assert out["steps"] == 2 and out["images_seen"] == 50 and out["train_examples"] == 1000
    assert np.isfinite(out["loss"])
    bn_after = [w for l in qat.layers if isinstance(l, keras.layers.BatchNormalization) for w in l.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(bn_before, bn_after))
    assert not np.array_equal(kernel_before, qat.get_layer("stem_conv").get_weights()[0])
    assert fine_tune(qat, tiny, x_train, QATConfig(steps=0))["steps"] == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "epochs"), ({"steps": 1.5}, "steps"), ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"), ({"train_examples": 0}, "train_examples"),
])
def test_qat_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QATConfig(**kwargs)


def test_int8_export_of_the_qat_model_reproduces_it(tiny, data, fmnist, tmp_path):
    """export_run(qat=...): the converter writes every grid the fine-tuned
    model prescribes (conv outputs, sums, the pooled spikes scaled by the 6 of
    the {0, 6} levels, logits, input), and the int8 model agrees with it."""
    from export import ExportConfig, QATConfig as Exported, export_run
    from export.tflite.flatbuffer import read_model

    assert Exported is QATConfig
    x_train, _, x_test, y_test = fmnist
    result = export_run(tiny, ExportConfig(str(tmp_path / "out"), x_test[:150], y_test[:150], formats=("int8",),
                                           calibration_images=x_train[-200:], num_calibration=200,
                                           max_tflm_examples=10, c_array=False, verbose=False,
                                           qat=QATConfig(steps=3, batch_size=32), qat_images=x_train[:2000]))
    report = result.report
    assert report["keras"]["model"] == "qat" and report["qat"]["steps"] == 3
    assert set(report["qat"]) >= {"accuracy", "float_accuracy", "agreement_with_float", "grids", "calibration_match"}
    assert report["float"]["accuracy"] == report["qat"]["float_accuracy"]
    assert os.path.isfile(str(tmp_path / "out" / "model_qat.keras"))
    qat_model = keras.models.load_model(str(tmp_path / "out" / "model_qat.keras"))
    grids = {l.name: (l.scale, l.zero_point) for l in qat_model.layers if isinstance(l, GridQuantize)}
    graph = read_model(result.conversions["int8"].flatbuffer).main
    found = {}
    for op in graph.operators:
        t = graph.tensors[op.outputs[0]]
        for name in grids:
            base = name[:-len("_quant")]
            if f"/{base}_1/" in t.name.split(";")[0] or f"/{base}/" in t.name.split(";")[0]:
                found[name] = (float(t.quantization.scales[0]), int(t.quantization.zero_points[0]))
    for name, index in (("image_quant", graph.inputs[0]), ("logits_quant", graph.outputs[0])):
        q = graph.tensors[index].quantization
        found[name] = (float(q.scales[0]), int(q.zero_points[0]))
    expect = dict(grids, gap_quant=(grids["gap_quant"][0] * 6, grids["gap_quant"][1]))
    assert set(found) == set(expect), (found, expect)
    for name, (scale, zp) in expect.items():
        assert found[name][1] == zp and found[name][0] == pytest.approx(scale, rel=1e-6), name
    int8 = report["formats"]["int8"]
    assert int8["edge_only"]
    assert int8["litert"]["agreement_with_keras"] >= 0.99
    assert int8["spikes"]["end_to_end_agreement"] >= 0.999 and int8["spikes"]["two_level"]
    assert int8["spikes"]["local_mismatches"] == int8["spikes"]["local_mismatches_within_one_step"]
    assert "agreement_with_float" in int8["litert"] and "accuracy_drop_pp_vs_float" in int8
    with open(str(tmp_path / "out" / "export_report.json")) as f:
        assert json.load(f)["qat"]["steps"] == 3


def test_export_run_qat_arguments(tiny, data):
    from export import ExportConfig, export_run

    _, calib, x, y = data
    with pytest.raises(ValueError, match="qat_images"):
        ExportConfig("unused", x[:5], y[:5], qat=QATConfig(steps=1))
    with pytest.raises(ValueError, match="spiking"):
        export_run(_tiny("relu"), ExportConfig("unused", x[:5], y[:5], qat=QATConfig(steps=1), qat_images=calib))
    with pytest.raises(ValueError, match="QATConfig"):
        ExportConfig("unused", x[:5], y[:5], qat={"steps": 1}, qat_images=calib)


def test_converter_bias_scale_is_read_back_and_compensated(data):
    """A prescribed grid wider than the calibrated range: the converter
    quantizes the depthwise neuron's bias with its own calibrated input
    scale; convert() reads it back, rescales the bias and converts again,
    and the neuron is the exact decision on its input grid."""
    from export.tflite.flatbuffer import read_model
    from export.transform.fold import fold_batchnorm
    from export.tflite.spikes import run_spikes
    from export.tflite.convert import convert

    _, calib, x, _ = data
    keras.utils.set_random_seed(3)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    lo, hi = -1.0, 1.0
    grid = quantization_params(lo * 4, hi * 4, "int8")
    h = GridQuantize(*grid, name="stem_grid")(h)
    a = S2Activation(name="act")(keras.layers.BatchNormalization(name="bn")(h))
    out = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D(name="gap")(a))
    model = _warm_bn(keras.Model(inputs, out), calib)
    folded = fold_batchnorm(model)
    rep = lambda: ([calib[i:i + 50]] for i in range(0, len(calib), 50))
    conv = convert(folded, "int8", rep)
    g = conv.grids["act"]
    assert g["grid_equal"] and g["equal"] and conv.conversions == 2
    assert abs(g["bias_input_scale"] - grid[0]) > 1e-3 * grid[0]    # the converter's own calibration
    graph = read_model(conv.flatbuffer).main
    op = next(o for o in graph.operators if o.outputs[0] == conv.spike_tensors["act"])
    _, spikes = run_spikes(conv.flatbuffer, dict(conv.spike_tensors, x_in=op.inputs[0]), x[:20], "litert_builtin")
    xv = (spikes["x_in"].astype(np.float64) - grid[1]) * grid[0]
    neuron = folded.get_layer("act")
    th, pol = neuron.thresholds.astype(np.float64), neuron.polarity
    fire = np.where(pol > 0, xv >= th, np.where(pol < 0, xv <= th, th == 1.0))
    assert np.array_equal(spikes["act"] == 127, fire)


@pytest.mark.parametrize("args, message", [
    (["--qat_epochs", "-1"], "--qat_epochs"),
    (["--qat_epochs", "x"], "--qat_epochs"),
    (["--qat_epochs", "1", "--qat_learning_rate", "0"], "--qat_learning_rate"),
    (["--qat_train_examples", "10"], "need --qat_epochs"),
])
def test_cli_bad_qat_flags_are_one_line_exit_2(args, message, tmp_path):
    from tests.export.test_tflite import _cli

    path = str(tmp_path / "m.keras")
    open(path, "w").close()
    result = _cli("--model", path, "--output_dir", str(tmp_path / "o"), *args)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.slow
def test_cli_qat_end_to_end_meets_the_bounds(trained_model, tmp_path):
    """python -m export --qat_epochs on a trained model: int8 agrees with
    the quantization-aware Keras model on >= 99 % of 300 test images, spike
    maps on >= 99.9 % of neuron outputs, every local difference within one step."""
    from tests.export.test_tflite import _cli

    path = str(tmp_path / "model.keras")
    trained_model.save(path)
    out = str(tmp_path / "export")
    result = _cli("--model", path, "--output_dir", out, "--max_test_examples", "300", "--num_calibration", "300",
                  "--max_tflm_examples", "50", "--formats", "int8", "--qat_epochs", "0.05",
                  "--qat_train_examples", "4000", "--no_c_array")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quantization-aware model" in result.stdout
    with open(os.path.join(out, "export_report.json")) as f:
        report = json.load(f)
    int8 = report["formats"]["int8"]
    assert report["qat"]["steps"] == 4     # ceil(0.05 * 4000 / 64)
    assert int8["litert"]["agreement_with_keras"] >= 0.99 and int8["tflm"]["agreement_with_keras"] >= 0.99
    assert int8["spikes"]["end_to_end_agreement"] >= 0.999
    assert int8["spikes"]["local_mismatches"] == int8["spikes"]["local_mismatches_within_one_step"]
