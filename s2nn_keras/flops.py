"""FLOPs of convolution and linear layers (paper Appendix B, Eq. B.1).

    FLOPs(l) = k * W * H * C_in * C_out      (convolution)
    FLOPs(l) = C_in * C_out                  (linear)

with ``k = k_h * k_w`` the kernel area and ``W x H`` the *output* feature
map; one FLOP is one multiply-accumulate, per example. Generalisations,
each reducing to B.1 in the paper's case:

* grouped convolution (``groups = g``): ``k W H (C_in / g) C_out``;
* depthwise convolution: ``k W H C_in m`` (``m`` the depth multiplier);
* separable convolution: its depthwise part plus its 1x1 pointwise part
  ``W H (C_in m) C_out`` (two entries in :func:`node_flops`);
* transposed convolution: ``k W_in H_in C_in C_out`` (each input pixel
  scatters a ``k C_out`` patch);
* 1-D / 3-D convolutions: the product of all kernel and output extents;
* Dense on a rank > 2 tensor: ``C_in C_out`` once per position.

Any other layer holding a ``kernel`` raises ``ValueError`` rather than being
left out. Projection shortcuts and the classifier count like every layer.

Example::

    from s2nn_keras.flops import layer_flops
    from s2nn_keras.models import PreActResNet18, PreActResNet106

    f18 = sum(layer_flops(PreActResNet18((32, 32, 3), 10, width=64)).values())    # 555,422,720
    f106 = sum(layer_flops(PreActResNet106((32, 32, 3), 10, width=64)).values())  # 3,877,311,488
    f106 / f18                                                                     # 6.98 (paper §5.3)
"""

from __future__ import annotations

import collections
from typing import List, NamedTuple, Optional

import keras

from s2nn_keras.graph import GraphError, LayerGraph, Node

__all__ = ["FlopsEntry", "node_flops", "layer_flops"]


class FlopsEntry(NamedTuple):
    """One FLOPs row of a layer call: ``suffix`` appended to the call's key
    (``""``, or ``":depthwise"`` / ``":pointwise"`` for a separable conv),
    ``type`` (class name, with the part for separable convs), ``flops``, and
    ``input_override`` (``"real"`` for the pointwise part of a separable
    conv, which receives the real-valued depthwise output; else ``None``)."""

    suffix: str
    type: str
    flops: int
    input_override: Optional[str]


def _prod(values):
    out = 1
    for v in values:
        if v is None:
            raise ValueError("unknown (None) spatial dimension")
        out *= int(v)
    return out


def _types(*names):
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))


def _spatial_and_channels(layer, shape):
    """``(spatial extents, channels)`` of a feature-map shape (batch first)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return shape[2:], int(shape[1])
    return shape[1:-1], int(shape[-1])


def _has_kernel(layer) -> bool:
    try:
        return any(w.path.split("/")[-1] in ("kernel", "depthwise_kernel", "pointwise_kernel")
                   for w in layer.weights)
    except Exception:  # pragma: no cover - exotic layers without variable paths
        return False


def node_flops(graph: LayerGraph, node: Node) -> Optional[List[FlopsEntry]]:
    """Eq. B.1 for one call of one layer; ``None`` if it does no
    multiply-accumulate work (activations, pooling, Add, BatchNorm, ...).

    Raises:
      ValueError: unknown spatial size, or a layer holding a kernel that
        matches no rule (the message names the layer).
    """
    layer = node.layer
    L = keras.layers
    if node.is_input or not isinstance(layer, L.Layer) or not node.inputs:
        return None
    name = type(layer).__name__
    try:
        if isinstance(layer, _types("SeparableConv1D", "SeparableConv2D")):
            in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.output(0))
            spatial, _ = _spatial_and_channels(layer, out_shape)
            _, c_in = _spatial_and_channels(layer, in_shape)
            k, m = _prod(layer.kernel_size), int(layer.depth_multiplier)
            s = _prod(spatial)
            return [FlopsEntry(":depthwise", name + "(depthwise)", k * s * c_in * m, None),
                    FlopsEntry(":pointwise", name + "(pointwise)", s * c_in * m * int(layer.filters), "real")]
        if isinstance(layer, _types("DepthwiseConv1D", "DepthwiseConv2D")):
            in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.output(0))
            spatial, _ = _spatial_and_channels(layer, out_shape)
            _, c_in = _spatial_and_channels(layer, in_shape)
            return [FlopsEntry("", name, _prod(layer.kernel_size) * _prod(spatial) * c_in
                               * int(layer.depth_multiplier), None)]
        if isinstance(layer, _types("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")):
            spatial_in, c_in = _spatial_and_channels(layer, graph.shape(node.inputs[0]))
            groups = int(getattr(layer, "groups", 1) or 1)
            return [FlopsEntry("", name, _prod(layer.kernel_size) * _prod(spatial_in) * (c_in // groups)
                               * int(layer.filters), None)]
        if isinstance(layer, _types("Conv1D", "Conv2D", "Conv3D")):
            in_shape, out_shape = graph.shape(node.inputs[0]), graph.shape(node.output(0))
            spatial, _ = _spatial_and_channels(layer, out_shape)
            _, c_in = _spatial_and_channels(layer, in_shape)
            groups = int(getattr(layer, "groups", 1) or 1)
            return [FlopsEntry("", name, _prod(layer.kernel_size) * _prod(spatial) * (c_in // groups)
                               * int(layer.filters), None)]
        if isinstance(layer, L.Dense):
            in_shape = graph.shape(node.inputs[0])
            return [FlopsEntry("", name, _prod(in_shape[1:-1]) * int(in_shape[-1]) * int(layer.units), None)]
    except (ValueError, GraphError) as err:
        raise ValueError(f"layer {node.key!r} ({name}): cannot count FLOPs: {err}") from None
    if not isinstance(layer, keras.Model) and _has_kernel(layer):
        raise ValueError(
            f"layer {node.key!r} ({name}) has a kernel but no FLOPs rule (supported: Conv1D/2D/3D, grouped, "
            "depthwise, separable and transposed convolutions, Dense)")
    return None


def layer_flops(model: keras.Model) -> "collections.OrderedDict[str, int]":
    """FLOPs(l) of Eq. B.1 for every Conv/Dense call of ``model``.

    Keys are the call keys of :class:`~s2nn_keras.graph.LayerGraph` with
    nested models expanded: ``name``, ``name#2`` for a second call of a
    shared layer, ``outer/inner`` inside a nested model. A separable
    convolution is one entry (depthwise + pointwise).

    Raises:
      ValueError: not a functional/built Sequential model, unknown spatial
        size, or a layer with a kernel and no FLOPs rule.
    """
    graph = LayerGraph(model, expand_nested=True)
    out = collections.OrderedDict()
    for node in graph.nodes:
        entries = node_flops(graph, node)
        if entries:
            out[node.key] = int(sum(e.flops for e in entries))
    return out
