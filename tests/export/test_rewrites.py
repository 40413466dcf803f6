"""export.transform.rewrites: global average pooling as AVERAGE_POOL_2D, and the
BN-folded (depthwise) ReLU baseline -- the same function (Keras), what they
change in TFLite ops, and the measured rounding difference of MEAN and
AVERAGE_POOL_2D in each format."""

import keras
import numpy as np
import pytest

from export.transform import rewrites
from export.tflite.flatbuffer import op_counts
from export.tflite.convert import convert


def _randomize_batchnorms(model, seed=0):
    """Non-trivial inference statistics (a fresh BN is the identity)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(-1.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, c).astype("float32"))
    return model


def _count(model, cls):
    return sum(1 for l in model.layers if type(l).__name__ == cls)


@pytest.fixture(scope="module")
def relu_resnet():
    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(3)
    return _randomize_batchnorms(PreActResNet([1, 1], (28, 28, 1), 10, width=8, dropout=0.0, activation="relu"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 1, (64, 28, 28, 1)).astype("float32")


def test_bn_as_depthwise_is_the_same_function(relu_resnet, images):
    """Pre-activation BNs become 1x1 depthwise convs with the ReLU fused,
    conv -> BN folds into the conv; predictions equal, logits to float
    rounding."""
    model = relu_resnet
    folded = rewrites.batchnorm_as_depthwise(model)
    assert _count(folded, "BatchNormalization") == 0
    preact = _count(model, "BatchNormalization") - 2     # the two conv1 -> bn2 pairs fold into the convs
    assert _count(folded, "DepthwiseConv2D") == preact
    fused = [l for l in folded.layers if type(l).__name__ == "DepthwiseConv2D"]
    assert all(l.activation.__name__ == "relu" for l in fused)
    assert _count(folded, "ReLU") == _count(model, "ReLU") - preact
    a, b = model.predict(images, verbose=0), folded.predict(images, verbose=0)
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert rewrites.relu_baseline(model, "relu") is model
    assert rewrites.batchnorm_as_depthwise(folded) is folded     # nothing left to rewrite


def test_bn_as_depthwise_tflite_ops(relu_resnet, images):
    """What it changes in the int8 flatbuffer: the converter's broadcast
    MUL + ADD per pre-activation BN become one DEPTHWISE_CONV_2D with a
    fused RELU; nothing else changes."""
    rep = lambda: [[images[:32]]]     # noqa: E731
    before = op_counts(convert(relu_resnet, "int8", rep, rewrites=()).flatbuffer)
    after = op_counts(convert(rewrites.batchnorm_as_depthwise(relu_resnet), "int8", rep, rewrites=()).flatbuffer)
    preact = _count(relu_resnet, "BatchNormalization") - 2
    assert before["MUL"] == preact and "MUL" not in after
    assert after["DEPTHWISE_CONV_2D"] == preact and "DEPTHWISE_CONV_2D" not in before
    assert before["ADD"] - after["ADD"] == preact
    same = {k: v for k, v in before.items() if k not in ("MUL", "ADD")}
    assert {k: v for k, v in after.items() if k in same} == same


@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder"])
def test_bn_as_depthwise_on_mlperf_tiny_relu_twins(name):
    """The MLPerf Tiny ReLU twins (post-activation conv -> BN -> ReLU, Dense
    -> BN -> ReLU): every BN folds into its conv or Dense; the function is
    the same."""
    from tests import zoo

    model = _randomize_batchnorms(zoo.build(name, "relu"), seed=4)
    folded = rewrites.batchnorm_as_depthwise(model)
    assert _count(folded, "BatchNormalization") == 0
    x = np.random.default_rng(2).uniform(0, 1, (8,) + zoo.ZOO[name].input_shape).astype("float32")
    a, b = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(np.abs(a).max(), 1e-6))


def test_bn_left_where_it_has_no_form():
    """A BN on a rank-2 tensor after a layer it cannot fold into stays."""
    inputs = keras.Input((12,))
    x = keras.layers.Dense(6, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = _randomize_batchnorms(keras.Model(inputs, keras.layers.Dense(3)(x)))
    assert rewrites.batchnorm_as_depthwise(model) is model


def _gap_model(keepdims=False):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((9, 7, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(keepdims=keepdims, name="gap")(x)
    if keepdims:
        x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.mark.parametrize("keepdims", [False, True])
def test_gap_as_average_pool_is_the_same_function(keepdims):
    model = _gap_model(keepdims)
    rewritten = rewrites.global_average_pool_as_average_pool(model)
    assert _count(rewritten, "GlobalAveragePooling2D") == 0 and _count(rewritten, "AveragePooling2D") == 1
    assert rewritten.get_layer("gap").pool_size == (9, 7)
    x = np.random.default_rng(0).normal(size=(16, 9, 7, 3)).astype("float32")
    np.testing.assert_allclose(rewritten.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert rewrites.global_average_pool_as_average_pool(rewritten) is rewritten


def test_gap_as_average_pool_in_tflite(folded, calibration, fmnist):
    """On the trained, folded S2NN: MEAN becomes AVERAGE_POOL_2D (the
    reshape folds into FULLY_CONNECTED), the export stays edge-only with
    two-level spikes. float32 logits are bit-identical in TFLite Micro;
    int8 and int16x8 round differently (MEAN rounds (sum - n zp) / n + zp,
    AVERAGE_POOL_2D rounds sum / n, both half away from zero, so ties fall
    on different sides): measured here, at most one output step, the same
    predictions."""
    from export.formats import EDGE_OPS
    from export.tflite.runtimes import run_tflm

    model = folded[0]
    rewritten = rewrites.global_average_pool_as_average_pool(model)
    x = fmnist[2][:120].astype("float32") / 255.0
    np.testing.assert_array_equal(rewritten.predict(x, verbose=0), model.predict(x, verbose=0))
    for fmt in ("float32", "int8", "int16x8"):
        rep = calibration if fmt != "float32" else None
        a, b = convert(model, fmt, rep, rewrites=()), convert(rewritten, fmt, rep, rewrites=())
        ops_a, ops_b = op_counts(a.flatbuffer), op_counts(b.flatbuffer)
        assert ops_a.get("MEAN") == 1 and "MEAN" not in ops_b
        assert ops_b["AVERAGE_POOL_2D"] == ops_a.get("AVERAGE_POOL_2D", 0) + 1 and set(ops_b) <= EDGE_OPS
        oa, ob = run_tflm(a.flatbuffer, x)["outputs"], run_tflm(b.flatbuffer, x)["outputs"]
        assert np.array_equal(oa.argmax(1), ob.argmax(1)), fmt
        if fmt == "float32":
            assert np.array_equal(oa, ob)
        else:
            from export.tflite.flatbuffer import read_model

            g = read_model(b.flatbuffer).main
            step = float(g.tensors[g.outputs[0]].quantization.scales[0])
            assert np.abs(oa - ob).max() <= 1.0001 * step, fmt


def test_rewrite_names_are_the_formats_list():
    """The CLI validates --rewrites against export.formats (no TensorFlow); the
    functions are export.transform.rewrites'; the two name the same rewrites in the same order."""
    from export import formats
    from export.transform import rewrites

    assert tuple(rewrites.REWRITES) == formats.REWRITES == formats.DEFAULT_REWRITES


def test_runtime_forms_are_the_same_values_in_ops_tflite_micro_runs():
    """GlobalMaxPooling2D/1D as MAX_POOL_2D (not REDUCE_MAX, which TFLite Micro
    runs in float32 and int8 only) and UpSampling2D (nearest) as
    RESIZE_NEAREST_NEIGHBOR (not TILE, which it has no kernel for): the
    same values in Keras, and the int16x8 model runs in TFLite Micro."""
    from export.tflite.flatbuffer import read_model
    from export.tflite.runtimes import run_litert, run_tflm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 7, 3))
    up = keras.layers.UpSampling2D((2, 2), name="up")(inputs)
    pooled = keras.layers.GlobalMaxPooling2D(name="gmp")(keras.layers.Conv2D(4, 3, name="conv")(up))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(pooled))
    x = np.random.default_rng(2).uniform(0, 1, (16, 5, 7, 3)).astype("float32")
    rewritten = rewrites.runtime_forms(model)
    assert {type(l).__name__ for l in rewritten.layers} >= {"Resizing", "MaxPooling2D"}
    assert np.array_equal(rewritten.predict(x, verbose=0), model.predict(x, verbose=0))
    assert rewrites.runtime_forms(rewritten) is rewritten
    conv = convert(model, "int16x8", lambda: ([x[i:i + 8]] for i in range(0, 16, 8)))
    ops = op_counts(conv.flatbuffer)
    assert ops.get("RESIZE_NEAREST_NEIGHBOR") == 1 and ops.get("MAX_POOL_2D") == 1, ops
    assert not {"TILE", "REDUCE_MAX"} & set(ops), ops
    # TFLite Micro's and LiteRT's int16 kernels may round a tie differently: at most one output step apart.
    graph = read_model(conv.flatbuffer).main
    step = float(graph.tensors[graph.outputs[0]].quantization.scales[0])
    np.testing.assert_allclose(run_tflm(conv.flatbuffer, x[:2])["outputs"], run_litert(conv.flatbuffer, x[:2])["outputs"],
                               rtol=0, atol=1.001 * step)
    series = keras.Input((9, 3))
    model = keras.Model(series, keras.layers.GlobalMaxPooling1D(name="gmp1")(keras.layers.Conv1D(4, 3)(series)))
    x = np.random.default_rng(3).uniform(0, 1, (4, 9, 3)).astype("float32")
    assert np.array_equal(rewrites.runtime_forms(model).predict(x, verbose=0), model.predict(x, verbose=0))
    assert op_counts(convert(model).flatbuffer).get("MAX_POOL_2D") == 1
