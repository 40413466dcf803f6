"""What a model takes as input, and its own input scaling.

A model that starts with ``Rescaling`` and/or ``Normalization`` layers
(a chain of them right after its one input; :func:`input_scaling`) scales
its input itself: it was trained on the raw values (pixels 0..255), so the
export feeds it those. :func:`model_inputs` is the export's one rule for
turning data into a model's input:

* ``uint8`` data are cast to float32 *as they are* for a model that scales
  its input itself, and divided by 255 for any other model (the project's
  convention: models take images in [0, 1]);
* any other numbers are taken as they are (already the model's input).

:func:`check_inputs` refuses floats within [-1, 1] for a model whose own
scaling divides by 100 or more (a ``Rescaling(1/255)`` fed pixels already
divided by 255: the silent double division).

In the TFLite models the scaling costs nothing (:func:`fold_input_scaling`,
applied by :func:`export.tflite.convert.convert`): the chain ``y = a x + b``
(per channel ``c`` of the last axis) is removed and every Conv/Depthwise/
Dense reading ``y`` computes ``W (a x + b) + c`` from ``x`` itself, with the
kernel ``a_c W`` and the bias ``c + sum(W b)`` (exact for ``b = 0``; a
nonzero ``b`` needs ``padding="valid"`` or a Dense, since zero padding of
``y`` is not zero padding of ``x``). Where no such layer reads ``y`` the
chain is one 1x1 ``DEPTHWISE_CONV_2D`` (weight ``a``, bias ``b``; a tensor
that is not 4-D is reshaped to ``[N, 1, P, C]`` around it). The TFLite
models therefore take the same raw values as the Keras model, in every
format; the int8 model's input grid is prescribed as scale 1, zero point
-128 when the calibration inputs are integers in [0, 255] (zero point 0 for
[-128, 127]): firmware passes ``pixel - 128`` (``pixel`` as an int8)
without any arithmetic (:func:`raw_input_grid`).

Example::

    from export.transform.inputs import input_scaling, model_inputs

    input_scaling(model)            # InputScaling(layers=('rescale',), scale=[0.00392], offset=[0.]) or None
    x = model_inputs(uint8_images, model)   # raw pixels as float32 for that model, / 255 for others
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import keras
import numpy as np

from export.errors import InputError
from export.transform.clone import call_clone, clone_config
from s2nn_keras.datasets import as_model_input
from s2nn_keras.graph import GraphError, LayerGraph

__all__ = ["SCALING_LAYERS", "InputScaling", "InputScalingError", "input_scaling", "model_inputs", "check_inputs",
           "absorbing_layers", "fold_input_scaling", "raw_input_grid", "channel_affine"]

#: The layers of an input scaling chain.
SCALING_LAYERS = ("Rescaling", "Normalization")
_ABSORBING = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")


class InputScalingError(InputError, ValueError):
    """An input scaling the export cannot fold, or data that do not fit it
    (one line naming the layer)."""


@dataclasses.dataclass(frozen=True)
class InputScaling:
    """A model's own input scaling ``y = scale * x + offset`` (per channel
    of the last axis, or one value for all).

    Attributes:
      layers: the chain's layer names, in order.
      scale, offset: float64 arrays of one value or one per channel.
      first: the node the chain reads (the model input, or a
        ``GridQuantize`` right after it in a quantization-aware model).
    """

    layers: Tuple[str, ...]
    scale: np.ndarray
    offset: np.ndarray
    first: str

    def summary(self) -> dict:
        return {"layers": list(self.layers), "scale": self.scale.tolist(), "offset": self.offset.tolist()}


def _affine(node, channels):
    """``(scale, offset)`` of one chain layer, as vectors of 1 or ``channels``."""
    layer = node.layer
    if node.class_name == "Rescaling":
        a, b = np.asarray(layer.scale, np.float64).reshape(-1), np.asarray(layer.offset, np.float64).reshape(-1)
    else:
        mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float64)
        var = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float64)
        if mean.size not in (1, channels) or (mean.size > 1 and mean.shape[-1] != channels):
            raise InputScalingError(
                f"Normalization {node.name!r} normalizes axis {layer.axis}; the export folds an input "
                "normalization per channel (axis=-1) or over everything (axis=None) only: change its axis")
        std = np.maximum(np.sqrt(var.reshape(-1)), keras.backend.epsilon())
        mean = mean.reshape(-1)
        a, b = (std, mean) if layer.invert else (1.0 / std, -mean / std)
    for v in (a, b):
        if v.size not in (1, channels):
            raise InputScalingError(f"{node.class_name} {node.name!r} has {v.size} values for {channels} channels")
    return a, b


def input_scaling(model) -> Optional[InputScaling]:
    """The chain of ``Rescaling``/``Normalization`` layers right after the
    model's one input (each the only reader of the tensor before it; a
    ``GridQuantize`` of a quantization-aware model may sit first), as one
    :class:`InputScaling`; ``None`` when the model has none (or no layer
    graph).

    Raises:
      InputScalingError: a ``Normalization`` over another axis than the channels.
    """
    try:
        graph = LayerGraph(model)
    except GraphError:
        return None
    if len(graph.input_refs) != 1:
        return None
    node = graph.producer(graph.input_refs[0])
    readers = graph.consumers(node)
    if len(readers) == 1 and readers[0].class_name == "GridQuantize" and not graph.output_uses(node):
        node = readers[0]
        readers = graph.consumers(node)
    first = node.name
    channels = graph.shape(node.output())[-1]
    layers, scale, offset = [], np.ones(1), np.zeros(1)
    while (len(readers) == 1 and not graph.output_uses(node) and readers[0].class_name in SCALING_LAYERS
           and len(graph.calls(readers[0].name)) == 1):
        node = readers[0]
        a, b = _affine(node, channels)
        scale, offset = scale * a, offset * a + b
        layers.append(node.name)
        readers = graph.consumers(node)
    if not layers:
        return None
    return InputScaling(tuple(layers), scale, offset, first)


def model_inputs(images, model=None) -> np.ndarray:
    """``images`` as ``model``'s input, float32 (module docstring): ``uint8``
    as they are for a model that scales its input itself
    (:func:`input_scaling`), else divided by 255; other numbers as they are.

    Example:
      >>> model_inputs(np.array([0, 255], np.uint8)).tolist()
      [0.0, 1.0]
    """
    images = np.asarray(images)
    if images.dtype == np.uint8 and model is not None and input_scaling(model) is not None:
        return images.astype(np.float32)
    return as_model_input(images)


def check_inputs(images, model, what: str = "the inputs") -> None:
    """Refuses float inputs within [-1, 1] for a model whose own input
    scaling divides by 100 or more: the data were scaled already.

    Raises:
      InputScalingError: naming the layer and the values to give.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8 or images.size == 0:
        return
    scaling = input_scaling(model)
    if scaling is None or np.max(np.abs(scaling.scale)) > 0.01:
        return
    if float(np.max(np.abs(images))) <= 1.0:
        layer = scaling.layers[0]
        raise InputScalingError(
            f"model {model.name!r} scales its input itself ({layer!r}: x {float(np.max(np.abs(scaling.scale))):.4g}),"
            f" so it takes raw values, but {what} are floats within [-1, 1] (scaled already?): give the raw "
            "values (uint8, or floats such as 0..255)")


def absorbing_layers(graph, scaling):
    """The names of the layers that absorb the input scaling ``scaling`` of
    the model of ``graph`` (:class:`s2nn_keras.graph.LayerGraph`) when
    every reader of the chain's output is an unshared channels-last
    Conv/Depthwise/Dense (with valid padding where the offset is not 0);
    ``None`` when the chain is written as its own op."""
    last = graph.calls(scaling.layers[-1])[0]
    readers = graph.consumers(last)
    if not readers or graph.output_uses(last):
        return None
    offset = bool(np.any(scaling.offset != 0))
    for node in readers:
        layer = node.layer
        if (node.class_name not in _ABSORBING or len(graph.calls(node.name)) > 1
                or getattr(layer, "data_format", "channels_last") != "channels_last"
                or getattr(layer, "groups", 1) != 1 or (offset and getattr(layer, "padding", "valid") != "valid")):
            return None
    return {n.name for n in readers}


def _absorbed(layer, scaling):
    """``(kernel, bias)`` of a Conv/Depthwise/Dense reading ``x`` instead of
    ``a x + b`` (input channel on the kernel's axis -2)."""
    weights = layer.get_weights()
    kernel = np.asarray(weights[0], np.float64)
    a, b = scaling.scale.reshape(-1, 1), scaling.offset.reshape(-1, 1)
    depthwise = type(layer).__name__.startswith("DepthwiseConv")
    spatial = tuple(range(kernel.ndim - 2))
    shift = (kernel * b).sum(axis=spatial).reshape(-1) if depthwise else (kernel * b).sum(axis=spatial + (kernel.ndim - 2,))
    bias = (np.asarray(weights[1], np.float64) if layer.use_bias else np.zeros(shift.size)) + shift
    return (kernel * a).astype(np.float32), bias.astype(np.float32)


def channel_affine(x, scale, offset, name):
    """``scale x + offset`` per channel (last axis; one value or one per
    channel) of the KerasTensor ``x`` as one 1x1 ``DepthwiseConv2D`` named
    ``name`` (reshaped to ``[N, 1, P, C]`` around it unless ``x`` is 4-D):
    ``DEPTHWISE_CONV_2D``, an edge op, in every format."""
    shape = tuple(int(d) for d in x.shape[1:])
    channels = shape[-1]
    dw = keras.layers.DepthwiseConv2D(1, use_bias=True, name=name, dtype="float32")
    y = x if len(shape) == 3 else keras.layers.Reshape((1, int(np.prod(shape[:-1])), channels),
                                                       name=f"{name}_to_4d")(x)
    y = dw(y)
    dw.set_weights([np.broadcast_to(scale, (channels,)).reshape(1, 1, channels, 1).astype(np.float32),
                    np.broadcast_to(offset, (channels,)).astype(np.float32)])
    return y if len(shape) == 3 else keras.layers.Reshape(shape, name=f"{name}_from_4d")(y)


def fold_input_scaling(model):
    """``model`` without its input scaling chain (module docstring): the
    layers reading the chain absorb it, else it is one 1x1 depthwise conv;
    the model takes the same raw inputs and computes the same function (up
    to float rounding). ``model`` itself when it has no chain."""
    scaling = input_scaling(model)
    if scaling is None:
        return model
    graph = LayerGraph(model)
    absorbers = absorbing_layers(graph, scaling)

    def call(node, args, kwargs):
        if node.name in scaling.layers:
            if node.name != scaling.layers[-1] or absorbers is not None:
                return args[0]
            return channel_affine(args[0], scaling.scale, scaling.offset, node.name)
        if absorbers is not None and node.name in absorbers:
            kernel, bias = _absorbed(node.layer, scaling)
            return call_clone(node.layer, args, kwargs, [kernel, bias],
                              config=clone_config(node.layer, dtype=None, use_bias=True))
        return call_clone(node.layer, args, kwargs, dtype=None)

    return graph.replay(call).model(name=model.name)


def raw_input_grid(model, representative_data):
    """For an int8 model that scales its input itself: ``model`` with its
    input's grid prescribed (a ``GridQuantize`` right after the input) as
    scale 1, zero point -128 when every calibration input is an integer in
    [0, 255] (zero point 0 for [-128, 127]), so the int8 input is the raw
    value minus 128 (resp. the value). ``model`` itself otherwise, or when
    the input's grid is prescribed already."""
    if input_scaling(model) is None:
        return model
    from export.transform.calibration import batches_of

    graph = LayerGraph(model)
    node = graph.producer(graph.input_refs[0])
    if any(r.class_name == "GridQuantize" for r in graph.consumers(node)):
        return model
    lo, hi, integer = np.inf, -np.inf, True
    for batch in batches_of(representative_data):
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
        integer = integer and bool(np.all(batch == np.round(batch)))
    if not integer or lo < -128 or hi > 255:
        return model
    zero_point = 0 if lo < 0 else -128
    if zero_point == 0 and hi > 127:
        return model
    from export.transform.layers import GridQuantize

    first = node.name

    def call(n, args, kwargs):
        return call_clone(n.layer, args, kwargs, dtype=None)

    inputs = keras.Input(batch_shape=graph.node(first).input_spec["batch_shape"], name=first)
    gridded = GridQuantize(1.0, zero_point, name=f"{first}_grid")(inputs)
    return keras.Model(inputs, graph.replay(call, inputs=[gridded]).outputs[0], name=model.name)
