"""TensorFlow-only acceleration of the built-in surrogates' backward pass.

:func:`s2nn_keras.surrogates.spike` computes its backward pass
``dx = dy * dS/du(x)`` with ``keras.ops``, the same on every backend. On the
TensorFlow backend (only there: :mod:`s2nn_keras.surrogates` imports this
module when ``keras.backend.backend() == "tensorflow"``) the built-in
surrogates' backward runs as :func:`backward` instead, with the same values:
one small ``tf.function(jit_compile=True)`` per surrogate and parameters.

* **Outside XLA** (eager, plain ``tf.function``) the surrogate would be a
  chain of a dozen element-wise TF kernels (compare, reciprocal, sigmoid,
  selects, ...), each a full pass over the activation tensor; the XLA-fused
  function is one loop.
* **Inside XLA** (``tf.function(jit_compile=True)``, Keras
  ``compile(jit_compile=True)``) TensorFlow inlines the nested function into
  the step's XLA computation (the optimized HLO of a PreActResNet training
  step is the same as with the body written in place). There the float32
  product is written ``where(finite(g), dy * g0, dy * 0)`` with
  ``g0 = where(finite(g), g, 0)``: bit for bit ``dy * g0`` (also for
  non-finite ``dy``) but ending in a select instead of a multiply, because
  XLA:CPU hands the BatchNorm-backward channel sums over this tensor to
  YNNPACK only when their operand is not a multiply (otherwise it emits
  slower reduce-window trees). Multiplying by ``g0`` rather than ``g`` keeps
  XLA from rewriting ``dy * cast(mask)`` into a select (which would turn
  ``inf * 0`` into 0 instead of NaN).

Measured with ``python -m benchmarks.train_step --activations relu,s2nn
--backward plain,fused --modes eager,graph,xla --rounds 21 --steps 3``
(``benchmarks/results/train_step_backward.json``; 2-core CPU shared with
other jobs, load 8-11): per-round CPU time of the S2NN training step, fused
over plain, median 0.885 eager, 0.893 graph, 0.958 XLA (fused cheaper in
20/21, 18/21, 15/21 rounds). User-registered surrogates keep the plain
``keras.ops`` backward: nothing promises their ops compile with XLA. Layers
with learned values (``S2Activation(learnable=...)``) do not use it either:
their backward also returns per-channel parameter gradients and takes the
values as tensors (:func:`s2nn_keras.surrogates._spike_learnable`; tested in
``tests/s2nn_keras/test_learnable.py``).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["backward"]


def backward(entry, x, threshold, params, dy, grad_in_dtype):
    """``dy * surrogate_gradient(x)`` of a built-in surrogate, computed by
    one XLA-compiled function (see the module docstring).

    Args:
      entry, threshold, params: the resolved surrogate.
      x: the spike's input; dy: the upstream gradient (same dtype).
      grad_in_dtype: ``(entry, x, threshold, params) -> dS/du`` in x's dtype,
        the surrogate module's rule for inputs other than float32 (computed
        in float32, kept finite, cast back), fused the same way. Passed in
        so that this module does not import :mod:`s2nn_keras.surrogates`.
    """
    return _fused(entry, threshold, tuple(sorted(params.items())), grad_in_dtype)(x, dy)


def _body(entry, x, threshold, params, dy, grad_in_dtype):
    if x.dtype == tf.float32:
        g = entry.grad_fn(x, threshold, **params)
        finite = tf.math.is_finite(g)
        g0 = tf.where(finite, g, tf.zeros_like(g))
        return tf.where(finite, dy * g0, dy * 0.0)
    return dy * grad_in_dtype(entry, x, threshold, params)


_FUSED = {}


def _fused(entry, threshold, params, grad_in_dtype):
    key = (id(entry), threshold, params, grad_in_dtype)  # the built-in entries live as long as the module
    if key not in _FUSED:
        kwargs = dict(params)

        @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
        def fused(x, dy):
            return _body(entry, x, threshold, kwargs, dy, grad_in_dtype)

        _FUSED[key] = fused
    return _FUSED[key]
