"""Eq. B.1 FLOPs (s2nn_keras.flops) on hand-computed layers and the paper's 6.98 ratio."""

import keras
import pytest

from s2nn_keras.flops import layer_flops
from s2nn_keras.models import PreActResNet18, PreActResNet106

L = keras.layers


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
    v = L.Conv3D(2, (1, 2, 2), name="conv3d")(L.Reshape((2, 4, 8, 8), name="vol")(a))  # out 2x3x7x2
    model = keras.Model(inp, [j, e, b, k, v])
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
        "conv3d": 1 * 2 * 2 * (2 * 3 * 7) * 8 * 2,
    }
    assert dict(layer_flops(model)) == expected


def test_b1_rejects_kernel_layer_without_rule_and_subclassed_model():
    inp = keras.Input((8,))
    out = L.EinsumDense("ab,bc->ac", output_shape=4, name="einsum")(inp)
    with pytest.raises(ValueError, match="einsum"):
        layer_flops(keras.Model(inp, out))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="not a functional"):
        layer_flops(Sub())


def test_b1_nested_shared_and_sequential():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(3, name="d_in")(inner_in), name="inner")
    inp = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    out = inner(shared(shared(inp)))
    assert dict(layer_flops(keras.Model(inp, out))) == {"shared": 16, "shared#2": 16, "inner/d_in": 12}
    seq = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="c"), L.Flatten(), L.Dense(2, name="d")])
    assert dict(layer_flops(seq)) == {"c": 9 * 16 * 2 * 3, "d": 48 * 2}


def test_b1_paper_ratio_resnet106_over_resnet18():
    """§5.3: full-precision FLOPs of ResNet106 are 6.98x those of ResNet18."""
    f18 = layer_flops(PreActResNet18((32, 32, 3), 10, activation="relu", width=64))
    f106 = layer_flops(PreActResNet106((32, 32, 3), 10, activation="relu", width=64))
    # stem + 16 convs + 3 projection shortcuts + classifier
    assert len(f18) == 21 and len(f106) == 1 + 104 + 3 + 1
    assert sum(f18.values()) == 555_422_720
    assert sum(f106.values()) == 3_877_311_488
    ratio = sum(f106.values()) / sum(f18.values())
    assert round(ratio, 2) == 6.98
    assert ratio == pytest.approx(6.980830, abs=1e-6)
