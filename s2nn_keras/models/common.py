"""What every model builder shares: the neuron factory and option checks.

``make_activation`` turns an ``activation`` argument (a surrogate name,
``"relu"`` or a layer factory) into one layer; the ``check_*`` functions
validate the keyword options of the builders in :mod:`s2nn_keras.models`
and raise ``ValueError`` naming the option and what is valid.

Example:
  >>> from s2nn_keras.models.common import make_activation
  >>> make_activation("s2nn", "act1", tau_s=1.0).name
  'act1'
"""

from __future__ import annotations

from typing import Callable, Union

import keras

from s2nn_keras import surrogates
from s2nn_keras.layers import S2Activation

__all__ = ["ActivationSpec", "make_activation", "check_activation", "check_shape", "check_num_classes",
           "check_positive_int", "check_rate", "check_classifier_activation", "CLASSIFIER_ACTIVATIONS",
           "strided_pointwise_conv"]

ActivationSpec = Union[str, Callable[[str], keras.layers.Layer]]

#: What a classifier head may end in: ``None`` (logits, what the trainers
#: and the export use) or ``"softmax"`` (probabilities, as the MLPerf Tiny
#: reference models).
CLASSIFIER_ACTIVATIONS = (None, "softmax")


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


def check_activation(activation: ActivationSpec, surrogate_params) -> None:
    """Validates ``activation`` and the surrogate parameters once, before a
    model is built (a factory is checked when it is called)."""
    if isinstance(activation, str):
        make_activation(activation, "check", **surrogate_params)
    elif not callable(activation):
        raise ValueError(f"activation must be a surrogate name, 'relu' or a layer factory, got {activation!r}")


def check_shape(input_shape, rank: int, what: str = "input_shape") -> tuple:
    """``input_shape`` as a tuple of ``rank`` positive ints."""
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != rank
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        names = {1: "(features,)", 3: "(height, width, channels)"}.get(rank, f"{rank} dimensions")
        raise ValueError(f"{what} must be {names} of positive ints, got {input_shape!r}")
    return tuple(input_shape)


def check_num_classes(num_classes) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


def check_positive_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return value


def check_rate(value, what: str = "dropout") -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def check_classifier_activation(value):
    if value not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(f"classifier_activation must be one of {CLASSIFIER_ACTIVATIONS}, got {value!r}")
    return value


def strided_pointwise_conv(x, filters: int, strides: int, *, name: str, **conv_kwargs):
    """A 1x1 convolution with stride ``strides``, built as
    ``AveragePooling2D(pool_size=1, strides) -> Conv2D(filters, 1)``
    (layers ``<name>_subsample`` and ``<name>``; stride 1 is the conv alone).

    The two are the same function (a 1x1 pool only subsamples). The builders
    write it this way because TF 2.21's oneDNN kernel for the filter
    gradient of a strided 1x1 conv corrupts the heap on AVX-512 CPUs
    (double free / segfault). ``export.tflite.convert.merge_strided_shortcuts``
    merges the pair back into one strided conv for inference.
    ``conv_kwargs`` go to the ``Conv2D`` (``use_bias``, initializers, ...).
    """
    if strides != 1:
        x = keras.layers.AveragePooling2D(pool_size=1, strides=strides, name=f"{name}_subsample")(x)
    return keras.layers.Conv2D(filters, 1, strides=1, padding="same", name=name, **conv_kwargs)(x)
