"""PreActResNet builders: topology, parameter parity, validation."""

import keras
import numpy as np
import pytest

from s2nn_keras import S2Activation
from s2nn_keras.models import PreActResNet, PreActResNet18, PreActResNet106


def _inbound(model):
    """{layer_name: [input layer names]} from the functional model config."""
    graph = {}
    for entry in model.get_config()["layers"]:
        names = []

        def walk(obj):
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    names.append(obj["config"]["keras_history"][0])
                else:
                    for v in obj.values():
                        walk(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v)

        walk(entry.get("inbound_nodes", []))
        graph[entry["name"]] = names
    return graph


def test_resnet18_layout():
    model = PreActResNet18((32, 32, 3), 10, width=16)
    graph = _inbound(model)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    # stem + 8 blocks x 2 convs + 3 projection shortcuts
    assert len(convs) == 1 + 16 + 3
    neurons = [l for l in model.layers if isinstance(l, S2Activation)]
    assert len(neurons) == 8 * 2 + 1
    # BN immediately before every neuron.
    for neuron in neurons:
        (src,) = graph[neuron.name]
        assert isinstance(model.get_layer(src), keras.layers.BatchNormalization), neuron.name
    # Stem: 3x3, stride 1, no max-pool; CIFAR resolution kept in stage 1.
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not any(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers)
    assert model.get_layer("stage1_block2_add").output.shape[1:] == (32, 32, 16)
    assert model.get_layer("stage4_block2_add").output.shape[1:] == (4, 4, 128)
    # Projection shortcut from the activated input, through a pure subsample.
    assert graph["stage2_block1_shortcut_subsample"] == ["stage2_block1_act1"]
    assert graph["stage2_block1_shortcut"] == ["stage2_block1_shortcut_subsample"]
    # Identity shortcut elsewhere: the add takes the previous add.
    assert "stage1_block1_add" in graph["stage1_block2_add"]
    # Head: BN -> neuron -> GAP -> dropout -> Dense.
    assert graph["gap"] == ["final_act"] and graph["dropout"] == ["gap"] and graph["logits"] == ["dropout"]
    assert model.get_layer("dropout").rate == 0.1


def test_strided_shortcut_equals_strided_conv():
    model = PreActResNet([1, 1], (8, 8, 1), 3, width=4)
    act = model.get_layer("stage2_block1_act1")
    shortcut = model.get_layer("stage2_block1_shortcut")
    probe = keras.Model(model.input, [act.output, shortcut.output])
    spikes, out = probe(np.random.rand(2, 8, 8, 1).astype("float32"))
    expected = keras.ops.conv(spikes, shortcut.kernel, strides=2, padding="same")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(expected), atol=1e-6)
    # Built as subsample + 1x1 conv (TF 2.21's oneDNN strided-1x1 filter gradient corrupts the heap).
    assert shortcut.strides == (1, 1) and shortcut.kernel_size == (1, 1)
    assert model.get_layer("stage2_block1_shortcut_subsample").strides == (2, 2)


def test_relu_and_spiking_have_identical_parameter_counts():
    for blocks in ([2, 2, 2, 2], [1, 3]):
        counts = {act: PreActResNet(blocks, (32, 32, 3), 10, activation=act, width=8).count_params()
                  for act in ("relu", "s2nn", "ste_b", "sibnn")}
        assert len(set(counts.values())) == 1, counts


def test_stem_stride_two_halves_every_stage():
    one = PreActResNet([1, 1, 1], (28, 28, 1), 10, width=8)
    two = PreActResNet([1, 1, 1], (28, 28, 1), 10, width=8, stem_stride=2)
    assert two.get_layer("stem_conv").strides == (2, 2)
    assert one.count_params() == two.count_params()
    for name, half in [("stage1_block1_add", (14, 14, 8)), ("stage2_block1_add", (7, 7, 16)),
                       ("stage3_block1_add", (4, 4, 32))]:
        assert two.get_layer(name).output.shape[1:] == half
    assert one.get_layer("stage1_block1_add").output.shape[1:] == (28, 28, 8)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    stem = keras.Model(two.input, two.get_layer("stem_conv").output)(x)
    expected = keras.ops.conv(x, two.get_layer("stem_conv").kernel, strides=2, padding="same")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stem), keras.ops.convert_to_numpy(expected), atol=1e-6)


def test_resnet106_has_52_blocks():
    model = PreActResNet106((32, 32, 3), 10, width=4)
    adds = [l for l in model.layers if isinstance(l, keras.layers.Add)]
    assert len(adds) == 52
    assert model.name == "preact_resnet106"


def test_activation_factory_and_surrogate_params():
    model = PreActResNet([1], (8, 8, 1), 3, width=4,
                         activation=lambda name: keras.layers.Activation("tanh", name=name))
    assert model.get_layer("final_act").activation.__name__ == "tanh"
    model = PreActResNet([1], (8, 8, 1), 3, width=4, activation="s2nn", threshold=0.5, alpha=0.3)
    neuron = model.get_layer("final_act")
    assert neuron.threshold == 0.5 and neuron.params["alpha"] == 0.3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(blocks=[]), "blocks must be"),
        (dict(blocks=[2, 0]), "blocks must be"),
        (dict(width=0), "width must be"),
        (dict(stem_stride=3), "stem_stride must be 1 or 2"),
        (dict(stem_stride=True), "stem_stride must be 1 or 2"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(num_classes=1), "num_classes must be"),
        (dict(input_shape=(32, 32)), "input_shape must be"),
        (dict(activation="tanh"), "valid: 'relu', .*'s2nn'"),
        (dict(activation="relu", alpha=0.1), "relu' takes no surrogate parameters"),
        (dict(activation="s2nn", threshold=0.0), "threshold must be > 0"),
        (dict(activation="slayer", tau_s=1.0), "valid parameters: alpha1, beta1"),
        (dict(activation=lambda name: "nope"), "must return a keras.layers.Layer"),
    ],
)
def test_invalid_options(kwargs, message):
    args = dict(blocks=[1], input_shape=(8, 8, 1), num_classes=3, width=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PreActResNet(**args)
