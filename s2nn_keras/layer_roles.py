"""What a Keras layer does to the values passing through it: the one layer table.

Every module that walks a model and asks "does this layer keep spikes
spikes?", "can a kernel absorb a factor here?" or "does the int8 model store
a new tensor here?" reads the answer from :data:`ROLES` (by the serialized
class name, as :class:`s2nn_keras.graph.LayerGraph` gives it) through
:func:`role`:

==============  =====================================================  ======  ===========
role            layers                                                 values  homogeneous
==============  =====================================================  ======  ===========
``kernel``      Conv1D/2D/3D, DepthwiseConv1D/2D, Dense: ``y = W x + b``  new     no (``b``)
``rearrange``   Dropout, SpatialDropout*, Reshape, Flatten, Permute,    kept    yes
                Identity, Cropping* (inference: the values move)
``pad``         ZeroPadding*: the values, plus zeros                    kept+0  yes
``repeat``      UpSampling1D, UpSampling2D/3D (``nearest``), RepeatVector kept    yes
``max_pool``    MaxPooling*, GlobalMaxPooling*                         kept    yes
``subsample``   AveragePooling* with a window of one element            kept    yes
``average``     AveragePooling*, GlobalAveragePooling*, UpSampling     new     yes
                (``bilinear``, ...)
``merge``       Add, Subtract, Average, Maximum, Minimum, Concatenate   new     yes
==============  =====================================================  ======  ===========

* *values kept*: every output value is one of the input values (``pad``:
  or 0), so a two-level spike map stays two-level (for {0, 1} spikes,
  0 being a level, also through ``pad``) and an int8 tensor keeps its grid;
* *homogeneous*: ``f(a x) = a f(x)`` for every ``a > 0`` (``max`` commutes
  with a positive factor; a merge needs its inputs to share the factor), so
  a per-tensor positive factor passes through;
* a ``kernel`` can absorb any per-channel factor of its input into ``W``
  and choose the factor of its output through ``W`` and ``b``.

Layers not in the table (activations, custom layers, spiking neurons --
recognised by :func:`s2nn_keras.layers.is_spiking_neuron` -- ...) have no
role: callers treat them as they must.

Example:
  >>> from s2nn_keras import layer_roles
  >>> layer_roles.role("MaxPooling2D"), layer_roles.keeps_values("Flatten")
  ('max_pool', True)
  >>> layer_roles.is_homogeneous("GlobalAveragePooling2D"), layer_roles.is_kernel("Dense")
  (True, True)
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["ROLES", "KERNEL_LAYERS", "DEPTHWISE_LAYERS", "role", "is_kernel", "is_depthwise", "keeps_values",
           "is_homogeneous", "is_rate_transparent", "pool_is_subsample", "spike_source"]


def _dims(prefix, dims=(1, 2, 3)):
    return tuple(f"{prefix}{d}D" for d in dims)


#: ``{class name: role}`` (module docstring). The roles ``subsample`` and
#: ``repeat``/``average`` of UpSampling depend on the layer's settings
#: (:func:`role`).
ROLES: Dict[str, str] = {
    **{name: "kernel" for name in _dims("Conv") + _dims("DepthwiseConv", (1, 2)) + ("Dense",)},
    **{name: "rearrange" for name in ("Dropout", "Reshape", "Flatten", "Permute", "Identity")
       + _dims("SpatialDropout") + _dims("Cropping")},
    **{name: "pad" for name in _dims("ZeroPadding")},
    **{name: "repeat" for name in _dims("UpSampling") + ("RepeatVector",)},
    **{name: "max_pool" for name in _dims("MaxPooling") + _dims("GlobalMaxPooling")},
    **{name: "average" for name in _dims("AveragePooling") + _dims("GlobalAveragePooling")},
    **{name: "merge" for name in ("Add", "Subtract", "Average", "Maximum", "Minimum", "Concatenate")},
}

#: Layers with a kernel (``y = W x + b``): what a BatchNormalization after
#: them folds into, and what absorbs a per-channel factor of their input.
KERNEL_LAYERS = tuple(name for name, r in ROLES.items() if r == "kernel")
#: Kernel layers whose output channel ``c`` is ``in_channel * multiplier + m``.
DEPTHWISE_LAYERS = _dims("DepthwiseConv", (1, 2))

_KEEP = frozenset({"rearrange", "pad", "repeat", "max_pool", "subsample"})
_HOMOGENEOUS = _KEEP | {"average", "merge"}
_RATE_TRANSPARENT = frozenset({"rearrange", "pad", "repeat"})


def pool_is_subsample(layer) -> bool:
    """True for an (average) pooling layer whose window is one element: it
    only picks positions (``AveragePooling2D(1, strides=2)``, the builders'
    strided-shortcut workaround), so it keeps values."""
    size = getattr(layer, "pool_size", None)
    return size is not None and all(int(s) == 1 for s in np.atleast_1d(size))


def role(class_name: str, layer=None) -> Optional[str]:
    """The role of a layer (module docstring), ``None`` for a layer not in
    the table. ``layer`` (the live layer) refines it: an average pooling
    with a one-element window is ``subsample``, an UpSampling2D/3D that
    does not interpolate ``nearest`` is ``average``."""
    r = ROLES.get(class_name)
    if layer is not None:
        if r == "average" and class_name.startswith("AveragePooling") and pool_is_subsample(layer):
            return "subsample"
        if r == "repeat" and class_name in ("UpSampling2D", "UpSampling3D") and \
                getattr(layer, "interpolation", "nearest") != "nearest":
            return "average"
    return r


def is_kernel(class_name: str) -> bool:
    """Conv/DepthwiseConv/Dense (:data:`KERNEL_LAYERS`)."""
    return ROLES.get(class_name) == "kernel"


def is_depthwise(class_name: str) -> bool:
    """DepthwiseConv1D/2D (:data:`DEPTHWISE_LAYERS`)."""
    return class_name in DEPTHWISE_LAYERS


def keeps_values(class_name: str, layer=None) -> bool:
    """Every output value is an input value (or, for ``pad``, 0)."""
    return role(class_name, layer) in _KEEP


def is_homogeneous(class_name: str, layer=None) -> bool:
    """A positive per-tensor factor of the input(s) passes to the output."""
    return role(class_name, layer) in _HOMOGENEOUS


def is_rate_transparent(class_name: str, layer=None) -> bool:
    """Keeps the values and (up to padding and duplication) their
    frequency: a firing rate measured before it holds after it."""
    return role(class_name, layer) in _RATE_TRANSPARENT


def spike_source(graph, ref):
    """The neuron node whose spikes the tensor ``ref`` of a
    :class:`s2nn_keras.graph.LayerGraph` holds unchanged -- directly, or
    through layers that keep values (:func:`keeps_values`; zero padding only
    for {0, 1} spikes, where 0 is the off level) -- else ``None``. Such a
    tensor is two-level (its values are the neuron's on and off values)."""
    from s2nn_keras.layers import is_spiking_neuron

    node = graph.producer(ref)
    padded = False
    while not node.is_input:
        if is_spiking_neuron(node.layer):
            if padded and float(getattr(node.layer, "off_value", 0.0)) != 0.0:
                return None
            return node
        if len(node.inputs) != 1 or not keeps_values(node.class_name, node.layer):
            return None
        padded = padded or role(node.class_name, node.layer) == "pad"
        node = graph.producer(node.inputs[0])
    return None
