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

from typing import Callable, Sequence, Union

import keras

from s2nn_keras import surrogates
from s2nn_keras.layers import S2Activation

__all__ = ["PreActResNet", "PreActResNet18", "PreActResNet106", "make_activation"]

ActivationSpec = Union[str, Callable[[str], keras.layers.Layer]]


def make_activation(activation: ActivationSpec, name: str, **surrogate_params):
    """Builds one neuron layer named ``name``.

    ``activation`` is a surrogate name, ``"relu"``, or a factory
    ``factory(name) -> keras.layers.Layer``.
    """
    if callable(activation) and not isinstance(activation, str):
        layer = activation(name)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"activation factory must return a keras.layers.Layer, got {type(layer).__name__}"
            )
        return layer
    if activation == "relu":
        if surrogate_params:
            raise ValueError(
                f"activation 'relu' takes no surrogate parameters, got {sorted(surrogate_params)}"
            )
        return keras.layers.ReLU(name=name)
    if activation not in surrogates.available_surrogates():
        raise ValueError(
            f"unknown activation {activation!r}; valid: 'relu', "
            f"{', '.join(repr(n) for n in surrogates.available_surrogates())} or a layer factory"
        )
    return S2Activation(activation, name=name, **surrogate_params)


def _check_options(input_shape, num_classes, blocks, width, dropout, activation, surrogate_params,
                   stem_stride=1):
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if (
        not isinstance(blocks, (tuple, list))
        or not blocks
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)
    ):
        raise ValueError(f"blocks must be a non-empty list of ints >= 1, got {blocks!r}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if not isinstance(stem_stride, int) or isinstance(stem_stride, bool) or stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if isinstance(activation, str):
        # Validates the name and the surrogate parameters once, before building.
        make_activation(activation, "check", **surrogate_params)


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
                if stride != 1:
                    # A strided 1x1 conv equals subsampling then a 1x1 conv. We
                    # build it that way because TF 2.21's oneDNN kernel for the
                    # filter gradient of a strided 1x1 conv corrupts the heap
                    # on AVX-512 CPUs (double free / segfault).
                    a_sub = keras.layers.AveragePooling2D(
                        pool_size=1, strides=stride, name=f"{prefix}_shortcut_subsample")(a)
                else:
                    a_sub = a
                shortcut = conv(a_sub, filters, 1, 1, f"{prefix}_shortcut")
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
