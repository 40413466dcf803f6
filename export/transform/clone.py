"""Rebuilding a layer from its config: the one copy every transform (and the
TFLite conversion's graph rewrites) uses.

:func:`clone_config` -- a layer's config with its dtype policy set to
float32 (or kept) and entries changed; :func:`clone_layer` -- a new,
unconnected layer made from it (another class allowed), optionally built
and given the layer's weights; :func:`call_clone` -- in a graph replay, a
clone called on the replayed inputs and then given weights.

Example::

    from export.transform.clone import call_clone, clone_layer

    new = clone_layer(conv, copy_weights=True)         # float32, same weights, shares nothing
    qat = clone_layer(conv, QATConv2D)                  # another class from the same config

    def call(node, args, kwargs):                       # LayerGraph.replay
        return call_clone(node.layer, args, kwargs, dtype=None, strides=(1, 1))
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["clone_config", "clone_layer", "call_clone"]


def clone_config(layer, dtype: Optional[str] = "float32", **changes) -> dict:
    """``layer.get_config()`` with its ``"dtype"`` entry (where it has one)
    set to ``dtype`` (``None``: kept as it is), then ``changes`` applied."""
    config = layer.get_config()
    if dtype is not None and "dtype" in config:
        config["dtype"] = dtype
    config.update(changes)
    return config


def clone_layer(layer, cls=None, *, dtype: Optional[str] = "float32", copy_weights: bool = False,
                config: Optional[dict] = None, **changes):
    """A new layer of class ``cls`` (default: ``layer``'s) from ``config``
    (default: :func:`clone_config` ``(layer, dtype, **changes)``). With
    ``copy_weights``, it is built from ``layer``'s build config and given
    ``layer``'s weights (where ``layer`` has any), so it shares nothing
    with ``layer``; else it is built on its first call."""
    if config is None:
        config = clone_config(layer, dtype, **changes)
    new = (cls or type(layer)).from_config(config)
    if copy_weights:
        weights = layer.get_weights()
        if weights:
            build = layer.get_build_config() if hasattr(layer, "get_build_config") else None
            if build:
                new.build_from_config(build)
            new.set_weights(weights)
    return new


def call_clone(layer, args, kwargs, weights: Optional[Sequence] = None, **clone_options):
    """Calls :func:`clone_layer` ``(layer, **clone_options)`` on ``*args,
    **kwargs`` (which builds it), then sets its ``weights`` (default:
    ``layer``'s, where it has any); returns the call's output."""
    new = clone_layer(layer, **clone_options)
    out = new(*args, **kwargs)
    weights = layer.get_weights() if weights is None else weights
    if weights:
        new.set_weights(weights)
    return out
