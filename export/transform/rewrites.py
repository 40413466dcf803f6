"""Keras-graph rewrites that fit a model to microcontroller kernels.

Each rewrite is a pure function ``keras.Model -> keras.Model`` on the
project's graph walker (:class:`s2nn_keras.graph.LayerGraph`): it returns a
new model computing the same function with fresh layers (the input model is
not touched), or the model itself when there is nothing to rewrite. They
apply before :func:`export.tflite.convert.convert` to a trained ReLU model, a
trained S2NN model, or a folded one (:func:`export.fold_batchnorm`).

* :func:`global_average_pool_as_average_pool` -- ``GlobalAveragePooling2D``
  becomes ``AveragePooling2D(pool = strides = the spatial size)`` (plus a
  ``Reshape`` to ``[C]`` unless ``keepdims``). The converter writes the
  global pool as ``MEAN``, for which TFLite Micro / CMSIS-NN have only a
  reference kernel (about 150 instructions per element on a Cortex-M55);
  the rewritten graph is ``AVERAGE_POOL_2D`` + ``RESHAPE``, which CMSIS-NN
  (and :mod:`export.mcu`) run fast. Same real function; the integer
  rounding of the two TFLite kernels differs in the last step (see the
  docstring and docs/MCU.md for the measured difference).
* :func:`runtime_forms` (always applied by the conversion) --
  ``GlobalMaxPooling2D`` as ``MaxPooling2D`` (``MAX_POOL_2D``, not
  ``REDUCE_MAX``) and ``UpSampling2D`` (nearest) as ``Resizing`` (nearest:
  ``RESIZE_NEAREST_NEIGHBOR``, not ``TILE``): the same values, in ops
  TFLite Micro runs in every format.
* :func:`batchnorm_as_depthwise` -- the BN-folded ReLU baseline
  (``"relu_bnfolded"``): a BatchNormalization right after a Conv/Dense that
  only it reads folds into that layer's kernel and bias; every other
  (pre-activation) BatchNormalization on an NHWC tensor becomes one 1x1
  ``DepthwiseConv2D`` with bias (kernel ``g = gamma / sqrt(var + eps)``,
  bias ``beta - g * mean``), with a ReLU/ReLU6 that is its only consumer
  fused into it. The converter would write such a BN as a broadcast
  ``MUL`` + ``ADD``, which CMSIS-NN hands to slow reference kernels; the
  S2NN export already writes its pre-activation BNs as depthwise neurons,
  so comparing S2NN with this baseline isolates spiking from BN folding.

:data:`BASELINES` names the two ReLU baselines the docs compare with:
``"relu"`` (the converter's own handling) and ``"relu_bnfolded"``.

Example::

    from export.transform import rewrites
    from export.tflite.convert import convert

    relu_folded = rewrites.batchnorm_as_depthwise(relu_model)          # "relu_bnfolded"
    model = rewrites.global_average_pool_as_average_pool(model)        # AVERAGE_POOL_2D, not MEAN
    conv = convert(model, "int8", representative_data)
    rewrites.apply(relu_model, ("bn_as_depthwise", "gap_as_average_pool"))   # both, in order
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import keras
import numpy as np

from export.transform.clone import call_clone
from s2nn_keras.graph import LayerGraph

__all__ = ["global_average_pool_as_average_pool", "global_max_pool_as_max_pool", "upsampling_as_resize",
           "runtime_forms", "batchnorm_as_depthwise", "apply", "REWRITES", "BASELINES", "relu_baseline"]

_FOLD_INTO = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")


def _global_pools_as_pools(model: keras.Model, pools: Dict[str, str]) -> keras.Model:
    """Every global pooling layer of ``pools`` (``{global class: pool
    class}``, 1-D or 2-D) with a static spatial size written as its pool
    class over that size, plus a ``Reshape`` to ``[C]`` unless
    ``keepdims``; the pooling layer keeps the global pool's name. ``model``
    itself when it has no such layer."""
    graph = LayerGraph(model)
    targets = {}
    for node in graph.nodes:
        if node.is_input or node.class_name not in pools:
            continue
        shape = graph.shape(node.inputs[0])
        layer = node.layer
        first = getattr(layer, "data_format", "channels_last") == "channels_first"
        spatial = tuple(shape[2:]) if first else tuple(shape[1:-1])
        if len(shape) != 2 + int(node.class_name[-2]) or any(s is None for s in spatial):
            continue
        targets[(node.name, node.call)] = (spatial, int(shape[1] if first else shape[-1]), first,
                                           bool(getattr(layer, "keepdims", False)), pools[node.class_name])
    if not targets:
        return model

    def call(node, args, kwargs):
        key = (node.name, node.call)
        if key not in targets:
            return call_clone(node.layer, args, kwargs, dtype=None)
        spatial, channels, first, keepdims, pool_class = targets[key]
        name = node.name if node.call == 0 else f"{node.name}_{node.call + 1}"
        pooled = getattr(keras.layers, pool_class)(pool_size=spatial, strides=spatial, padding="valid",
                                                   data_format="channels_first" if first else "channels_last",
                                                   name=name)(*args, **kwargs)
        if keepdims:
            return pooled
        return keras.layers.Reshape((channels,), name=f"{name}_reshape")(pooled)

    return graph.replay(call).model(name=model.name)


def global_average_pool_as_average_pool(model: keras.Model) -> keras.Model:
    """Every ``GlobalAveragePooling2D`` with a static spatial size written as
    ``AveragePooling2D`` over that size (and a ``Reshape`` to the channels
    unless ``keepdims``); the pooling layer keeps the global pool's name.

    The real function is the same (the mean over the spatial positions).
    TFLite's integer kernels round it differently: ``AVERAGE_POOL_2D`` keeps
    the input's quantization and rounds ``sum(q) / n`` half away from zero;
    ``MEAN`` computes ``(sum(q) - n zp) M + zp'`` with its own output grid and
    a fixed-point ``M ~ s_in / (n s_out)``. With equal grids and ``n`` a
    power of two they differ only on ties (``sum / n`` ending in .5 with a
    negative mean code); tests/export/test_rewrites.py measures it.

    Returns ``model`` itself when it has no such layer.
    """
    return _global_pools_as_pools(model, {"GlobalAveragePooling2D": "AveragePooling2D"})


def global_max_pool_as_max_pool(model: keras.Model) -> keras.Model:
    """Every ``GlobalMaxPooling2D`` (``1D``) with a static spatial size
    written as ``MaxPooling2D`` (``1D``) over that size (and a ``Reshape``
    unless ``keepdims``): ``MAX_POOL_2D``, which every runtime runs in every
    format, instead of the converter's ``REDUCE_MAX`` (TFLite Micro runs it
    in float32 and int8 only; no NPU). The same values exactly (a maximum
    keeps its input's values and grid; over spikes it is their OR).
    ``model`` itself when it has no such layer."""
    return _global_pools_as_pools(model, {"GlobalMaxPooling2D": "MaxPooling2D", "GlobalMaxPooling1D": "MaxPooling1D"})


def upsampling_as_resize(model: keras.Model) -> keras.Model:
    """Every ``UpSampling2D`` with ``nearest`` interpolation and a static
    input size written as ``Resizing(H sh, W sw, "nearest")`` (same name):
    ``RESIZE_NEAREST_NEIGHBOR`` (half-pixel centres, which for an integer
    factor picks source row ``floor(i / sh)``, the same as repeating each
    row ``sh`` times), instead of the converter's ``TILE`` + ``RESHAPE``
    form, which TFLite Micro has no kernel for. The same values exactly.
    ``model`` itself when it has no such layer."""
    graph = LayerGraph(model)
    targets = {}
    for node in graph.nodes:
        if node.is_input or node.class_name != "UpSampling2D" or node.layer.interpolation != "nearest":
            continue
        shape = graph.shape(node.inputs[0])
        if node.layer.data_format != "channels_last" or None in tuple(shape[1:3]):
            continue
        targets[(node.name, node.call)] = tuple(int(d) * int(f) for d, f in zip(shape[1:3], node.layer.size))
    if not targets:
        return model

    def call(node, args, kwargs):
        size = targets.get((node.name, node.call))
        if size is None:
            return call_clone(node.layer, args, kwargs, dtype=None)
        name = node.name if node.call == 0 else f"{node.name}_{node.call + 1}"
        return keras.layers.Resizing(size[0], size[1], interpolation="nearest", name=name)(*args, **kwargs)

    return graph.replay(call).model(name=model.name)


def runtime_forms(model: keras.Model) -> keras.Model:
    """The layers every target runtime runs, whatever the format:
    :func:`global_max_pool_as_max_pool` and :func:`upsampling_as_resize`
    (the converter's own forms of these, ``REDUCE_MAX`` and ``TILE``, do not
    run in TFLite Micro: in int16, resp. at all). Applied to every model
    :func:`export.tflite.convert.convert` converts (not optional: no
    baseline depends on them)."""
    return upsampling_as_resize(global_max_pool_as_max_pool(model))


def _fusable_relu(layer):
    """``"relu"`` / ``"relu6"`` if ``layer`` is a plain ReLU (or ReLU6) layer, else ``None``."""
    cls = type(layer).__name__
    if cls == "ReLU":
        if float(layer.negative_slope or 0.0) != 0.0 or float(layer.threshold or 0.0) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if cls == "Activation":
        name = getattr(layer.activation, "__name__", "")
        return name if name in ("relu", "relu6") else None
    return None


def _foldable_producer(graph, node):
    """The Conv/Dense node a BN can fold into: linear activation, one call,
    the BN its only reader."""
    src = graph.producer(node.inputs[0])
    if src.is_input or src.class_name not in _FOLD_INTO or len(graph.calls(src.name)) != 1:
        return None
    act = getattr(src.layer, "activation", None)
    if act is not None and getattr(act, "__name__", "linear") != "linear":
        return None
    return src if graph.fanout(src) == 1 else None


def batchnorm_as_depthwise(model: keras.Model) -> keras.Model:
    """The BN-folded form of a model's BatchNormalizations (module docstring).

    A BN that is called more than once, normalizes another axis than the
    last, or sits on a tensor that is not 4-D with no Conv/Dense to fold
    into is left as it is. Returns ``model`` itself when no BN changes.

    Raises:
      s2nn_keras.graph.GraphError: the model has no readable layer graph.
    """
    from export.transform.fold import fold_linear, bn_affine   # the fold's one Conv/Dense + BN arithmetic

    graph = LayerGraph(model)
    into_producer: Dict[str, str] = {}     # producer name -> BN name
    depthwise: Dict[str, str] = {}         # BN name -> fused activation ("linear", "relu", "relu6")
    fused_relus: Dict[str, str] = {}       # ReLU layer name -> BN name
    for node in graph.nodes:
        if node.is_input or node.class_name != "BatchNormalization" or len(graph.calls(node.name)) != 1:
            continue
        bn = node.layer
        shape = graph.shape(node.inputs[0])
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        if axis is None or axis not in (-1, len(shape) - 1) or len(node.inputs) != 1:
            continue
        producer = _foldable_producer(graph, node)
        if producer is not None:
            into_producer[producer.name] = node.name
            continue
        if len(shape) != 4:
            continue
        act = "linear"
        readers = graph.consumers(node)
        if len(readers) == 1 and graph.output_uses(node) == 0 and len(graph.calls(readers[0].name)) == 1:
            relu = _fusable_relu(readers[0].layer)
            if relu is not None:
                act = relu
                fused_relus[readers[0].name] = node.name
        depthwise[node.name] = act
    if not into_producer and not depthwise:
        return model
    folded_bns = set(into_producer.values())

    def call(node, args, kwargs):
        name, layer = node.name, node.layer
        if name in folded_bns or name in fused_relus:
            return args[0]     # folded into the layer before it
        if name in into_producer:
            g, b = bn_affine(graph.layer(into_producer[name]))
            config, kernel, bias = fold_linear(layer, g, b)
            return call_clone(layer, args, kwargs, [kernel, bias], config=config)
        if name in depthwise:
            g, b = bn_affine(layer)
            channels = int(g.size)
            new = keras.layers.DepthwiseConv2D(1, use_bias=True, activation=depthwise[name], name=name,
                                               dtype="float32")
            out = new(*args, **kwargs)
            new.set_weights([g.reshape(1, 1, channels, 1).astype(np.float32), b.astype(np.float32)])
            return out
        return call_clone(layer, args, kwargs, dtype=None)

    return graph.replay(call).model(name=model.name)


#: Rewrites by name, in the order :func:`apply` takes them.
REWRITES: Dict[str, Callable[[keras.Model], keras.Model]] = {
    "bn_as_depthwise": batchnorm_as_depthwise,
    "gap_as_average_pool": global_average_pool_as_average_pool,
}

#: The two ReLU baselines of S2NN-vs-ReLU figures: the converter's handling
#: of the BatchNorms, and the BN-folded (depthwise) form.
BASELINES: Dict[str, Callable[[keras.Model], keras.Model]] = {
    "relu": lambda model: model,
    "relu_bnfolded": batchnorm_as_depthwise,
}


def relu_baseline(model: keras.Model, name: str) -> keras.Model:
    """The ReLU baseline ``name`` (:data:`BASELINES`) of a ReLU model."""
    try:
        return BASELINES[name](model)
    except KeyError:
        raise ValueError(f"unknown ReLU baseline {name!r}; valid: {', '.join(BASELINES)}") from None


def apply(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """Applies the named rewrites (:data:`REWRITES`) in the given order."""
    for name in names:
        if name not in REWRITES:
            raise ValueError(f"unknown rewrite {name!r}; valid: {', '.join(REWRITES)}")
        model = REWRITES[name](model)
    return model
