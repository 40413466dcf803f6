"""Backend-neutral autodiff for the library tests.

Keras fixes its backend per process (``KERAS_BACKEND``), so the library tests
run once per backend (``tests/test_backends.py`` starts the other backends in
subprocesses). These helpers differentiate on whichever backend is active and
under each backend's compilers:

* tensorflow: ``eager`` (GradientTape), ``graph`` (``tf.function``),
  ``xla`` (``tf.function(jit_compile=True)``);
* jax: ``eager`` (``jax.vjp`` op by op), ``jit`` (``jax.jit``);
* torch: ``eager`` (autograd).
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import pytest
from keras import ops

BACKEND = keras.backend.backend()
MODES = {"tensorflow": ("eager", "graph", "xla"), "jax": ("eager", "jit"), "torch": ("eager",)}[BACKEND]

tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-backend behaviour")

Result = collections.namedtuple("Result", "value grad value_dtype grad_dtype")


def to_numpy(x):
    """Any backend tensor (bfloat16 included) as a float64 NumPy array."""
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32")), dtype=np.float64)


def value_and_grad(f, u, mode="eager", dtype="float32", upstream=None):
    """``f(u)`` and its vector-Jacobian product with ``upstream`` (ones by
    default) at ``u`` (a NumPy array cast to ``dtype``), run in ``mode``.
    Returns NumPy float64 values plus the dtype names of both results."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES} on {BACKEND}")
    u = ops.cast(ops.convert_to_tensor(np.asarray(u, np.float32)), dtype)
    dy = ops.ones_like(u) if upstream is None else ops.cast(
        ops.convert_to_tensor(np.asarray(upstream, np.float32)), dtype)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(u, dy):
            with tf.GradientTape() as tape:
                tape.watch(u)
                s = f(u)
            return s, tape.gradient(s, u, output_gradients=dy)

        if mode != "eager":
            run = tf.function(run, jit_compile=(mode == "xla"))
        s, g = run(u, dy)
    elif BACKEND == "jax":
        import jax

        def run(u, dy):
            s, vjp = jax.vjp(f, u)
            return s, vjp(dy)[0]

        if mode == "jit":
            run = jax.jit(run)
        s, g = run(u, dy)
    else:
        u = u.detach().requires_grad_(True)
        s = f(u)
        s.backward(dy)
        g = u.grad
        s = s.detach()
    return Result(to_numpy(s), to_numpy(g), keras.backend.standardize_dtype(s.dtype),
                  keras.backend.standardize_dtype(g.dtype))


def loss_and_grads(model, x):
    """``mean(model(x, training=True)**2)``, its output dtype and its
    gradients with respect to ``model.trainable_variables`` (NumPy)."""
    x = ops.convert_to_tensor(x)
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = ops.mean(ops.square(ops.cast(out, "float32")))
        grads = tape.gradient(loss, variables)
    elif BACKEND == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_fn(trainable):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return ops.mean(ops.square(ops.cast(out, "float32"))), out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)([v.value for v in variables])
    else:
        out = model(x, training=True)
        loss = ops.mean(ops.square(ops.cast(out, "float32")))
        loss.backward()
        grads = [v.value.grad for v in variables]
    return (float(to_numpy(loss)), keras.backend.standardize_dtype(out.dtype),
            [None if g is None else to_numpy(g) for g in grads])
