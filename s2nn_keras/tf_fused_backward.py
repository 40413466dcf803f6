"""TensorFlow-only acceleration of the spike's backward pass.

:func:`s2nn_keras.surrogates.spike` computes its backward pass
``dx = dy * dS/du(x)`` with ``keras.ops``, the same on every backend. On the
TensorFlow backend (only there: :mod:`s2nn_keras.surrogates` imports this
module when ``keras.backend.backend() == "tensorflow"``) it is computed by
:func:`backward` instead, with the same values:

* **Outside XLA** (eager, plain ``tf.function``) the surrogate is a chain of
  a dozen element-wise TF kernels (compare, reciprocal, sigmoid, selects,
  ...), each a full pass over the activation tensor. For the built-in
  surrogates it therefore runs as one small ``tf.function(jit_compile=True)``
  that XLA fuses into a single loop (``benchmarks/train_step.py --backward
  plain,fused``: graph-mode S2NN training step from about 1.4x to 1.15x the
  ReLU step, CPU). User-registered surrogates are not fused (nothing
  promises that their ops compile with XLA).
* **Inside XLA** (``tf.function(jit_compile=True)``, Keras
  ``compile(jit_compile=True)``) the whole step is already one XLA
  computation; in float32 the product is written
  ``where(finite(g), dy * g0, dy * 0)`` with ``g0 = where(finite(g), g, 0)``,
  bit for bit ``dy * g0`` (also for non-finite ``dy``) but ending in a
  select instead of a multiply: XLA:CPU hands the BatchNorm-backward channel
  sums over this tensor to YNNPACK only when their operand is not a
  multiply, otherwise it emits slower reduce-window trees. Multiplying by
  ``g0`` rather than ``g`` keeps XLA from rewriting ``dy * cast(mask)`` into
  a select (which would turn ``inf * 0`` into 0 instead of NaN).

Whether a trace is inside XLA is read from TensorFlow's control-flow context
(:func:`in_xla_context`); TensorFlow has no public API for it, so if that
internal function moves the plain product is used (same values) and
``tests/s2nn_keras/test_tf_fused_backward.py`` fails.
"""

from __future__ import annotations

import tensorflow as tf

from s2nn_keras import surrogates

__all__ = ["backward", "in_xla_context"]


def in_xla_context() -> bool:
    """True while tracing inside ``tf.function(jit_compile=True)`` (also in
    gradient functions and nested functions traced there)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # internal module moved: fall back to the plain form
        return False
    try:
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001 - internal API changed: plain form
        return False


def backward(entry, x, threshold, params, dy, fuse):
    """``dy * surrogate_gradient(x)`` for the spike's backward pass.

    Args:
      entry, threshold, params: the resolved surrogate.
      x: the spike's input; dy: the upstream gradient (same dtype).
      fuse: run outside XLA as one XLA-fused function (the built-in
        surrogates; user-registered ones pass False).
    """
    if in_xla_context():
        return _body(entry, x, threshold, params, dy, xla=True)
    if fuse:
        return _fused(entry.name, threshold, tuple(sorted(params.items())))(x, dy)
    return _body(entry, x, threshold, params, dy, xla=False)


def _body(entry, x, threshold, params, dy, xla):
    if xla and x.dtype == tf.float32:
        g = entry.grad_fn(x, threshold, **params)
        finite = tf.math.is_finite(g)
        g0 = tf.where(finite, g, tf.zeros_like(g))
        return tf.where(finite, dy * g0, dy * 0.0)
    return dy * surrogates._grad_in_dtype(entry, x, threshold, params)


_FUSED = {}


def _fused(name, threshold, params):
    key = (name, threshold, params)
    if key not in _FUSED:
        entry = surrogates.get_surrogate(name)
        kwargs = dict(params)

        @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
        def fused(x, dy):
            return _body(entry, x, threshold, kwargs, dy, xla=True)

        _FUSED[key] = fused
    return _FUSED[key]
