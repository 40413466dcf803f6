"""Pre-activation ResNet builders (paper §4, Fig. 3), functional API.

Layout (CIFAR-style, He et al. 2016 pre-activation):

* stem: 3x3 conv, stride ``stem_stride`` (default 1), ``width`` channels, no
  max-pool;
* stages ``i = 0..len(blocks)-1`` with ``width * 2**i`` channels, stride 1 in
  the first stage and 2 in the others, each a stack of ``blocks[i]`` basic
  blocks: ``BN -> neuron -> 3x3 conv -> BN -> neuron -> 3x3 conv`` plus a
  shortcut; where the shape changes the shortcut is a 1x1 (strided) conv of
  the *activated* input, else the identity of the block input;
* head: ``BN -> neuron -> global average pool -> dropout -> Dense logits``.

A BatchNormalization sits immediately before every neuron (§4.3), which is
what lets the export fold each BN into a conv kernel or a per-channel
firing threshold (Eq. 27). Convolutions carry no bias (the following BN has
one). ``activation="relu"`` gives the full-precision baseline with exactly
the same parameters.

Example:
  >>> from s2nn_keras.models import PreActResNet18
  >>> model = PreActResNet18((32, 32, 3), 10, activation="s2nn", width=16)
"""

from __future__ import annotations

from typing import Sequence

import keras

from s2nn_keras.models.common import (ActivationSpec, check_activation, check_num_classes, check_positive_int,
                                      check_rate, check_shape, make_activation, strided_pointwise_conv)

__all__ = ["PreActResNet", "PreActResNet18", "PreActResNet106"]


def _check_options(input_shape, num_classes, blocks, width, dropout, activation, surrogate_params,
                   stem_stride=1):
    check_shape(input_shape, 3)
    check_num_classes(num_classes)
    if (
        not isinstance(blocks, (tuple, list))
        or not blocks
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)
    ):
        raise ValueError(f"blocks must be a non-empty list of ints >= 1, got {blocks!r}")
    check_positive_int(width, "width")
    if not isinstance(stem_stride, int) or isinstance(stem_stride, bool) or stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    check_rate(dropout)
    check_activation(activation, surrogate_params)


def PreActResNet(
    blocks: Sequence[int],
    input_shape=(32, 32, 3),
    num_classes: int = 10,
    *,
    activation: ActivationSpec = "s2nn",
    width: int = 64,
    stem_stride: int = 1,
    dropout: float = 0.1,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    activity_regularizer=None,
    name: str = None,
    **surrogate_params,
) -> keras.Model:
    """General pre-activation ResNet of basic blocks.

    Args:
      blocks: number of basic blocks per stage, e.g. ``[2, 2, 2, 2]``.
      input_shape: ``(height, width, channels)``.
      num_classes: number of logits.
      activation: surrogate name (``"s2nn"``, ``"ste_b"``, ...), ``"relu"``
        or a factory ``factory(layer_name) -> Layer``.
      width: channels of the stem and the first stage (doubles each stage).
      stem_stride: stride of the stem conv, 1 (the paper's CIFAR layout) or
        2 (every stage at half the resolution: about a quarter of the
        FLOPs, for small inputs such as 28x28 on a CPU).
      dropout: dropout rate before the classifier, in [0, 1).
      bn_momentum, bn_epsilon: BatchNormalization settings.
      kernel_initializer, kernel_regularizer: for every conv and dense.
      activity_regularizer: optional regularizer attached to every spiking
        neuron layer (e.g. a firing-rate penalty); ignored for ``"relu"``.
      name: model name; defaults to ``preact_resnet<depth>``.
      **surrogate_params: ``threshold`` and the surrogate's own parameters
        (``tau_s``, ``alpha``, ...), applied to every neuron.

    Returns:
      An uncompiled functional ``keras.Model`` producing logits.
    """
    _check_options(input_shape, num_classes, blocks, width, dropout, activation, surrogate_params,
                   stem_stride)
    depth = 2 + 2 * sum(blocks)
    name = name or f"preact_resnet{depth}"

    def conv(x, filters, kernel, stride, layer_name):
        return keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False,
            kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer,
            name=layer_name,
        )(x)

    def bn(x, layer_name):
        return keras.layers.BatchNormalization(
            momentum=bn_momentum, epsilon=bn_epsilon, name=layer_name)(x)

    def act(x, layer_name):
        extra = {}
        if activity_regularizer is not None and isinstance(activation, str) and activation != "relu":
            extra["activity_regularizer"] = activity_regularizer
        return make_activation(activation, layer_name, **surrogate_params, **extra)(x)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = conv(inputs, width, 3, stem_stride, "stem_conv")
    in_channels = width
    for stage, n_blocks in enumerate(blocks):
        filters = width * 2 ** stage
        for block in range(n_blocks):
            stride = 2 if (stage > 0 and block == 0) else 1
            prefix = f"stage{stage + 1}_block{block + 1}"
            a = act(bn(x, f"{prefix}_bn1"), f"{prefix}_act1")
            if stride != 1 or in_channels != filters:
                shortcut = strided_pointwise_conv(
                    a, filters, stride, name=f"{prefix}_shortcut", use_bias=False,
                    kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer)
            else:
                shortcut = x
            h = conv(a, filters, 3, stride, f"{prefix}_conv1")
            h = act(bn(h, f"{prefix}_bn2"), f"{prefix}_act2")
            h = conv(h, filters, 3, 1, f"{prefix}_conv2")
            x = keras.layers.Add(name=f"{prefix}_add")([shortcut, h])
            in_channels = filters
    x = act(bn(x, "final_bn"), "final_act")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer="glorot_uniform",
        kernel_regularizer=kernel_regularizer, name="logits", dtype="float32",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def PreActResNet18(input_shape=(32, 32, 3), num_classes=10, activation="s2nn", width=64, dropout=0.1, **kwargs):
    """PreActResNet18: blocks ``[2, 2, 2, 2]`` (see :func:`PreActResNet`)."""
    kwargs.setdefault("name", "preact_resnet18")
    return PreActResNet([2, 2, 2, 2], input_shape, num_classes, activation=activation,
                        width=width, dropout=dropout, **kwargs)


def PreActResNet106(input_shape=(32, 32, 3), num_classes=10, activation="s2nn", width=64, dropout=0.1, **kwargs):
    """PreActResNet106: 52 basic blocks, ``[13, 13, 13, 13]``.

    With 32x32x3 inputs its full-precision FLOPs are 6.98x those of
    PreActResNet18 (paper §5.3).
    """
    kwargs.setdefault("name", "preact_resnet106")
    return PreActResNet([13, 13, 13, 13], input_shape, num_classes, activation=activation,
                        width=width, dropout=dropout, **kwargs)
