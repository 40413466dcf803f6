"""MLPerf Tiny builders: layouts, parameter counts in closed form, ReLU
parity, validation, serialization."""

import inspect

import keras
import numpy as np
import pytest

from s2nn_keras import S2Activation, is_spiking_neuron
from s2nn_keras.graph import LayerGraph
from s2nn_keras.models import DSCNN, FCAutoencoder, MobileNetV1, ResNet8, mlperf_tiny


def _conv(k, cin, cout, bias=True):
    return k * cin * cout + (cout if bias else 0)


def _bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def test_parameter_counts_in_closed_form():
    resnet8 = (_conv(9, 3, 16) + _bn(16)
               + 2 * (_conv(9, 16, 16) + _bn(16))
               + _conv(9, 16, 32) + _conv(9, 32, 32) + 2 * _bn(32) + _conv(1, 16, 32)
               + _conv(9, 32, 64) + _conv(9, 64, 64) + 2 * _bn(64) + _conv(1, 32, 64)
               + _conv(1, 64, 10))
    assert resnet8 == 78666  # the MLPerf Tiny reference's count
    ds_cnn = _conv(40, 1, 64) + _bn(64) + 4 * (9 * 64 + 64 + _bn(64) + _conv(1, 64, 64) + _bn(64)) + _conv(1, 64, 12)
    widths = [8] + [f // 4 for _, f in mlperf_tiny.MOBILENET_V1_BLOCKS]
    mobilenet = _conv(9, 3, 8) + _bn(8) + sum(
        9 * cin + cin + _bn(cin) + _conv(1, cin, cout) + _bn(cout) for cin, cout in zip(widths, widths[1:]))
    mobilenet += _conv(1, 256, 2)
    dims = [640] + [128] * 4 + [8] + [128] * 4
    autoencoder = sum(_conv(1, a, b) + _bn(b) for a, b in zip(dims, dims[1:])) + _conv(1, 128, 640)
    for builder, expected in ((ResNet8, resnet8), (DSCNN, ds_cnn), (MobileNetV1, mobilenet),
                              (FCAutoencoder, autoencoder)):
        assert builder().count_params() == expected, builder.__name__
        assert builder(activation="relu").count_params() == expected, builder.__name__


@pytest.mark.parametrize("builder", [ResNet8, DSCNN, MobileNetV1, FCAutoencoder])
def test_bn_before_every_neuron_except_resnet8_post_add(builder):
    model = builder()
    graph = LayerGraph(model)
    neurons = [n for n in graph.nodes if not n.is_input and is_spiking_neuron(n.layer)]
    assert neurons and all(isinstance(n.layer, S2Activation) for n in neurons)
    for n in neurons:
        src = graph.producer(n.inputs[0])
        if n.name.startswith("stack") and n.name.endswith("_act") and "_a_" not in n.name:
            assert src.class_name == "Add", n.name          # ResNet-8: neuron right after the residual Add
        else:
            assert src.class_name == "BatchNormalization", n.name
    relu = builder(activation="relu")
    assert not any(is_spiking_neuron(l) for l in relu.layers)
    assert sum(isinstance(l, keras.layers.ReLU) for l in relu.layers) == len(neurons)


@pytest.mark.parametrize("builder, default", [(ResNet8, "zeros"), (DSCNN, "zeros"), (MobileNetV1, "threshold"),
                                              (FCAutoencoder, "threshold")])
def test_bn_before_a_neuron_starts_at_its_threshold(builder, default):
    """bn_beta_initializer="threshold" (the deep networks' default): a BN
    that feeds a neuron starts with beta = u_th, so the neuron fires where its
    normalized input is above the batch mean (half the time); every other BN
    (ResNet-8's ``_b_bn`` into the Add), the ReLU twin's and ``"zeros"``
    (the shallow networks' default) start at 0."""
    assert inspect.signature(builder).parameters["bn_beta_initializer"].default == default
    model = builder(threshold=0.7, bn_beta_initializer="threshold")
    graph = LayerGraph(model)
    feeding = set()
    for n in graph.nodes:
        if not n.is_input and is_spiking_neuron(n.layer):
            src = graph.producer(n.inputs[0])
            if src.class_name == "BatchNormalization":
                feeding.add(src.name)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert feeding
    for bn in bns:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.beta), 0.7 if bn.name in feeding else 0.0,
                                   rtol=1e-6, err_msg=bn.name)
    assert (builder is ResNet8) == (len(feeding) < len(bns))
    for other in (builder(activation="relu"), builder(bn_beta_initializer="zeros")):
        assert all(not np.any(keras.ops.convert_to_numpy(l.beta)) for l in other.layers
                   if isinstance(l, keras.layers.BatchNormalization))
    with pytest.raises(ValueError, match="bn_beta_initializer must be 'threshold' or a Keras initializer"):
        builder(bn_beta_initializer="nope")


def test_layouts():
    r8 = ResNet8()
    assert r8.output_shape == (None, 10)
    assert r8.get_layer("stack3_add").output.shape[1:] == (8, 8, 64)
    # stack 1 keeps the identity shortcut (the stem's spikes reach the Add),
    # stacks 2 and 3 a strided 1x1 conv written as subsample + 1x1 conv (oneDNN workaround)
    graph = LayerGraph(r8)
    add1 = graph.calls("stack1_add")[0]
    assert [graph.producer(r).name for r in add1.inputs] == ["stem_act", "stack1_b_bn"]
    assert r8.get_layer("stack2_shortcut_subsample").strides == (2, 2)
    assert r8.get_layer("stack2_shortcut").strides == (1, 1) and r8.get_layer("stack2_shortcut").kernel_size == (1, 1)
    assert r8.get_layer("pool").pool_size == (8, 8)

    ds = DSCNN()
    assert ds.get_layer("stem_conv").kernel_size == (10, 4) and ds.get_layer("stem_conv").strides == (2, 2)
    assert ds.get_layer("pool").pool_size == (25, 5)    # the whole map
    assert ds.output_shape == (None, 12)
    assert sum(isinstance(l, keras.layers.DepthwiseConv2D) for l in ds.layers) == 4
    assert {l.name for l in ds.layers if isinstance(l, keras.layers.Dropout)} == {"stem_dropout", "head_dropout"}

    mb = MobileNetV1()
    assert mb.output_shape == (None, 2)
    assert mb.get_layer("block13_pw_act").output.shape[1:] == (3, 3, 256)
    assert [mb.get_layer(f"block{i + 1}_dw_dw").strides[0] for i in range(13)] == [
        s for s, _ in mlperf_tiny.MOBILENET_V1_BLOCKS]
    assert MobileNetV1(alpha=0.5).get_layer("stem_conv").filters == 16

    ae = FCAutoencoder()
    assert ae.input_shape == (None, 640) and ae.output_shape == (None, 640)
    assert ae.get_layer("bottleneck_dense").units == 8
    assert ae.get_layer("reconstruction").activation.__name__ == "linear"


def test_softmax_head_and_surrogate_parameters():
    model = ResNet8(classifier_activation="softmax", threshold=0.5, tau_s=2.0)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    p = np.asarray(model(x, training=False))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    act = model.get_layer("stem_act")
    assert act.threshold == 0.5 and act.params["tau_s"] == 2.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(32, 32)), r"input_shape must be \(height, width, channels\)"),
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(filters=(16, 32)), "filters must be three ints"),
    (dict(classifier_activation="sigmoid"), "classifier_activation must be one of"),
    (dict(activation="nope"), "unknown activation 'nope'"),
    (dict(tau_s=-1.0), "tau_s"),
    (dict(bn_momentum=1.0), r"bn_momentum must be in \[0, 1\)"),
])
def test_resnet8_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet8(**kwargs)


@pytest.mark.parametrize("builder, kwargs, message", [
    (DSCNN, dict(blocks=0), "blocks must be an int >= 1"),
    (DSCNN, dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (MobileNetV1, dict(alpha=0), "alpha must be a number > 0"),
    (FCAutoencoder, dict(bottleneck=0), "bottleneck must be an int >= 1"),
    (FCAutoencoder, dict(activation="relu", tau_s=1.0), "takes no surrogate parameters"),
])
def test_other_validation(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


def test_round_trip_and_training_step(tmp_path):
    model = DSCNN(filters=8, blocks=1)
    x = np.random.default_rng(0).random((4, 49, 10, 1), dtype=np.float32)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, np.arange(4) % 12, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # gradients flow
    path = str(tmp_path / "ds_cnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))
