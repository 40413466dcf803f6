"""Single-step spike function and its catalogue of surrogate gradients.

The forward pass of every surrogate is a Heaviside step (paper Eq. 16)::

    s = H(u - u_th) = 1 if u >= u_th else 0          (H(0) = 1)

``ste_b`` is the BNN baseline and outputs ``+1 / -1`` instead of ``1 / 0``.
The backward pass replaces the (zero almost everywhere) derivative of the
step by a surrogate ``dS/du`` chosen by name:

=============  ============================================================  =====
name           surrogate dS/du                                               u_th
=============  ============================================================  =====
``s2nn``       Eq. 23: 1/(tau_s*u) for u >= u_th,                             1.0
               (1/alpha) sig_a(u) (1 - sig_a(u)) below, with Eq. 21
               sig_a(u) = 1 / (1 + exp((u_th - u)/alpha))
``ste_b``      1 on |u - u_th| <= 1 (output +-1)                               0.0
``ste_s``      1 on |u - u_th| <= 1 (output 0/1)                               1.0
``sibnn``      1 on u_th - rho*delta <= u <= u_th + delta                     0.3
``slayer``     Eq. 25: alpha1 exp(-beta1 |u - u_th|)                          1.0
``superspike`` Eq. 24: (1 + beta0 |u - u_th|)^-2                              1.0
=============  ============================================================  =====

Pure functions (:func:`spike`, :func:`surrogate_gradient`) live here; the
Keras layer wrapping them is :class:`s2nn_keras.layers.S2Activation`.

Custom surrogates are added with :func:`register_surrogate`::

    import tensorflow as tf
    from s2nn_keras import register_surrogate

    def triangle(u, threshold, width):
        return tf.nn.relu(1.0 - tf.abs(u - threshold) / width) / width

    register_surrogate("triangle", triangle, threshold=1.0,
                       params={"width": 1.0})
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

__all__ = [
    "Surrogate",
    "register_surrogate",
    "get_surrogate",
    "available_surrogates",
    "resolve_params",
    "surrogate_gradient",
    "spike",
]


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A registered surrogate: its backward function and its defaults.

    Attributes:
      name: registry key.
      grad_fn: ``grad_fn(u, threshold, **params) -> dS/du`` on float32
        tensors, built from TF ops so it runs under ``tf.function`` and XLA.
      threshold: default firing threshold u_th (paper Table 3).
      params: default values of the named surrogate parameters.
      off_value: value emitted when the neuron does not fire (0, or -1 for
        the ``ste_b`` baseline).
      validate: optional ``validate(threshold, params)`` raising ValueError.
      description: one line for docs and plots.
    """

    name: str
    grad_fn: Callable[..., tf.Tensor]
    threshold: float
    params: Mapping[str, float]
    off_value: float = 0.0
    validate: Optional[Callable[[float, Dict[str, float]], None]] = None
    description: str = ""


_REGISTRY: Dict[str, Surrogate] = {}


def register_surrogate(
    name: str,
    grad_fn: Callable[..., tf.Tensor],
    *,
    threshold: float,
    params: Optional[Mapping[str, float]] = None,
    off_value: float = 0.0,
    validate: Optional[Callable[[float, Dict[str, float]], None]] = None,
    description: str = "",
    overwrite: bool = False,
) -> Surrogate:
    """Adds a surrogate to the catalogue so every API accepts ``name``.

    Args:
      name: the key users pass as ``surrogate=`` / ``activation=``.
      grad_fn: ``grad_fn(u, threshold, **params)`` returning dS/du as a
        tensor of u's shape, written with TF ops. ``u`` arrives as float32.
      threshold: default firing threshold.
      params: names and default values of the surrogate's parameters.
      off_value: output when not firing (0.0, or -1.0 for sign neurons).
      validate: optional callable raising ValueError on bad values.
      description: short human-readable formula.
      overwrite: allow replacing an existing entry.

    Returns:
      The registered :class:`Surrogate`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"surrogate name must be a non-empty string, got {name!r}")
    if name == "relu":
        raise ValueError("'relu' is reserved for the full-precision baseline")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"surrogate {name!r} is already registered; pass overwrite=True to replace it"
        )
    if not callable(grad_fn):
        raise ValueError(f"grad_fn for surrogate {name!r} must be callable")
    if off_value not in (0.0, -1.0):
        raise ValueError(f"off_value must be 0.0 or -1.0, got {off_value!r}")
    entry = Surrogate(
        name=name,
        grad_fn=grad_fn,
        threshold=float(threshold),
        params=dict(params or {}),
        off_value=float(off_value),
        validate=validate,
        description=description,
    )
    _REGISTRY[name] = entry
    return entry


def available_surrogates():
    """Sorted names of every registered surrogate."""
    return sorted(_REGISTRY)


def get_surrogate(name: str) -> Surrogate:
    """Looks up a surrogate by name; ValueError lists the valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown surrogate {name!r}; valid names: {', '.join(available_surrogates())}"
        ) from None


def _require_finite(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def resolve_params(name: str, threshold=None, **params):
    """Fills in defaults and validates; returns ``(surrogate, threshold, params)``.

    Raises:
      ValueError: unknown surrogate, unknown parameter name (the valid names
        are listed) or an invalid value.
    """
    entry = get_surrogate(name)
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        valid = ", ".join(sorted(entry.params)) or "none"
        raise ValueError(
            f"surrogate {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {valid}"
        )
    th = entry.threshold if threshold is None else _require_finite("threshold", threshold)
    merged = dict(entry.params)
    for key, value in params.items():
        if value is not None:
            merged[key] = _require_finite(key, value)
    if entry.validate is not None:
        entry.validate(th, merged)
    return entry, th, merged


def _positive(*names):
    def check(threshold, params):
        for key in names:
            if params[key] <= 0:
                raise ValueError(f"{key} must be > 0, got {params[key]}")

    return check


# --------------------------------------------------------------------------
# The built-in catalogue.
# --------------------------------------------------------------------------


def s2nn_grad(u, threshold, tau_s, alpha):
    """Eq. 23 of the paper (TSSL-BP in the single-step limit).

    dS/du = 1 / (tau_s * u)                              if u >= u_th
          = (1/alpha) * sig(u) * (1 - sig(u))            if u <  u_th
    with sig(u) = 1 / (1 + exp((u_th - u) / alpha))      (Eq. 21)

    Valid for any u_th > 0 (then u >= u_th > 0 and 1/u stays finite).
    """
    fire = u >= threshold
    # Guard the 1/u branch so the unused side of tf.where never divides by 0
    # (its NaN/inf would otherwise leak into the gradient of tf.where).
    safe_u = tf.where(fire, u, tf.ones_like(u))
    above = 1.0 / (tau_s * safe_u)
    sig = tf.sigmoid((u - threshold) / alpha)
    below = sig * (1.0 - sig) / alpha
    return tf.where(fire, above, below)


def _s2nn_validate(threshold, params):
    if threshold <= 0:
        raise ValueError(
            f"s2nn threshold must be > 0 (the 1/(tau_s*u) branch of Eq. 23 needs u >= u_th > 0), got {threshold}"
        )
    _positive("tau_s", "alpha")(threshold, params)


def ste_grad(u, threshold):
    """Straight-through estimator: 1 on |u - u_th| <= 1, else 0."""
    return tf.cast(tf.abs(u - threshold) <= 1.0, u.dtype)


def sibnn_grad(u, threshold, rho, delta):
    """Si-BNN backward window (Wang et al., AAAI 2020, "Sparsity-Inducing
    Binarized Neural Networks", Fig. 1).

    Forward: s = H(u - theta) in {0, 1}, theta = u_th (0.3 by default).
    Backward (our reading of their Fig. 1 with fixed, non-trainable theta and
    Delta): dS/du = 1 on  theta - rho*Delta <= u <= theta + Delta, else 0.
    rho in [0, 1] shortens the window on the silent side, so relatively more
    gradient flows through neurons that fire.
    """
    inside = tf.logical_and(u >= threshold - rho * delta, u <= threshold + delta)
    return tf.cast(inside, u.dtype)


def _sibnn_validate(threshold, params):
    if not 0.0 <= params["rho"] <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {params['rho']}")
    _positive("delta")(threshold, params)


def slayer_grad(u, threshold, alpha1, beta1):
    """Eq. 25 (SLAYER): alpha1 * exp(-beta1 * |u - u_th|)."""
    return alpha1 * tf.exp(-beta1 * tf.abs(u - threshold))


def superspike_grad(u, threshold, beta0):
    """Eq. 24 (SuperSpike fast sigmoid): (1 + beta0 |u - u_th|)^-2."""
    return 1.0 / tf.square(1.0 + beta0 * tf.abs(u - threshold))


register_surrogate(
    "s2nn", s2nn_grad, threshold=1.0, params={"tau_s": 1.0, "alpha": 0.2},
    validate=_s2nn_validate,
    description="S2NN Eq. 23: 1/(tau_s u) above u_th, scaled-sigmoid warm-up below",
)
register_surrogate(
    "ste_b", ste_grad, threshold=0.0, off_value=-1.0,
    description="BNN STE: output +-1, gradient 1 on |u - u_th| <= 1",
)
register_surrogate(
    "ste_s", ste_grad, threshold=1.0,
    description="STE with 0/1 output: gradient 1 on |u - u_th| <= 1",
)
register_surrogate(
    "sibnn", sibnn_grad, threshold=0.3, params={"rho": 0.3, "delta": 1.0},
    validate=_sibnn_validate,
    description="Si-BNN: gradient 1 on [u_th - rho*delta, u_th + delta]",
)
register_surrogate(
    "slayer", slayer_grad, threshold=1.0, params={"alpha1": 1.0, "beta1": 1.0},
    validate=_positive("alpha1", "beta1"),
    description="SLAYER Eq. 25: alpha1 exp(-beta1 |u - u_th|)",
)
register_surrogate(
    "superspike", superspike_grad, threshold=1.0, params={"beta0": 10.0},
    validate=_positive("beta0"),
    description="SuperSpike Eq. 24: (1 + beta0 |u - u_th|)^-2",
)

# Built-in surrogates are known to compile with XLA; their backward runs fused
# (see _backward). User-registered ones run as plain TF ops.
_BUILTIN = dict(_REGISTRY)


# --------------------------------------------------------------------------
# The spike function.
# --------------------------------------------------------------------------


def surrogate_gradient(u, surrogate="s2nn", threshold=None, **params):
    """dS/du of the named surrogate at ``u`` (computed in float32, returned
    in u's dtype, with non-finite values mapped to 0)."""
    entry, th, merged = resolve_params(surrogate, threshold, **params)
    u = tf.convert_to_tensor(u)
    return _grad_in_dtype(entry, u, th, merged)


def _grad_in_dtype(entry, u, threshold, params):
    u32 = tf.cast(u, tf.float32)
    g = entry.grad_fn(u32, threshold, **params)
    g = tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))
    if u.dtype != tf.float32:
        # float16 overflows at 65504; keep the surrogate finite in low precision.
        if u.dtype == tf.float16:
            g = tf.clip_by_value(g, -65504.0, 65504.0)
        g = tf.cast(g, u.dtype)
    return g


def spike(u, surrogate="s2nn", threshold=None, **params):
    """Single-step neuron: Heaviside forward (Eq. 16), surrogate backward.

    Args:
      u: membrane potential, any float tensor (float16/bfloat16/float32/64).
      surrogate: a registered name, see :func:`available_surrogates`.
      threshold: firing threshold u_th; ``None`` takes the surrogate default.
      **params: the surrogate's named parameters (e.g. ``tau_s``, ``alpha``).

    Returns:
      ``s`` of u's dtype: 1 where ``u >= threshold`` else 0 (-1 for ``ste_b``).

    Example:
      >>> u = tf.constant([0.0, 1.0, 3.0])
      >>> spike(u).numpy()
      array([0., 1., 1.], dtype=float32)
    """
    entry, th, merged = resolve_params(surrogate, threshold, **params)
    return _spike(tf.convert_to_tensor(u), entry, th, merged)


def _spike(u, entry, threshold, params):
    if not u.dtype.is_floating:
        u = tf.cast(u, tf.float32)

    @tf.custom_gradient
    def _heaviside(x):
        fire = x >= tf.cast(threshold, x.dtype)
        s = tf.where(fire, tf.ones_like(x), tf.fill(tf.shape(x), tf.cast(entry.off_value, x.dtype)))

        def grad(dy):
            return _backward(entry, x, threshold, params, dy)

        return s, grad

    return _heaviside(u)


def _in_xla_context():
    """True while tracing inside ``tf.function(jit_compile=True)`` (also for
    gradient functions and nested functions traced there)."""
    try:
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # internal API moved: fall back to the plain form
        return False


def _backward(entry, x, threshold, params, dy):
    """``dy * surrogate_gradient(x)`` for the spike's backward pass.

    Outside XLA the surrogate is a chain of a dozen element-wise kernels
    (compare, reciprocal, sigmoid, selects, ...), each a full pass over the
    activation tensor; for the built-in surrogates it therefore runs as one
    small ``tf.function(jit_compile=True)`` that XLA fuses into a single
    loop. Inside an XLA computation (``jit_compile=True`` training steps, and
    that fused function itself) :func:`_backward_body` is used directly.
    """
    if _BUILTIN.get(entry.name) is entry and not _in_xla_context():
        return _fused_backward(entry.name, threshold, tuple(sorted(params.items())))(x, dy)
    return _backward_body(entry, x, threshold, params, dy)


_FUSED = {}


def _fused_backward(name, threshold, params):
    key = (name, threshold, params)
    if key not in _FUSED:
        entry = _REGISTRY[name]
        kwargs = dict(params)

        @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
        def fused(x, dy):
            return _backward_body(entry, x, threshold, kwargs, dy)

        _FUSED[key] = fused
    return _FUSED[key]


def _backward_body(entry, x, threshold, params, dy):
    """``dy * _grad_in_dtype(...)``; under XLA (float32) written
    ``where(finite(g), dy * g0, dy * 0)`` with ``g0 = where(finite(g), g, 0)``:
    bit-for-bit ``dy * g0`` (also for non-finite ``dy``) but ending in a
    select instead of a multiply. XLA:CPU hands the BatchNorm-backward channel
    sums over this tensor to YNNPACK only when their operand is not a
    multiply, otherwise it emits slower reduce-window trees (about 5% of a
    PreActResNet training step). Multiplying by ``g0`` rather than ``g``
    keeps XLA from rewriting ``dy * cast(mask)`` into a select (which would
    turn ``inf * 0`` into 0 instead of NaN).
    """
    if x.dtype == tf.float32 and _in_xla_context():
        g = entry.grad_fn(x, threshold, **params)
        finite = tf.math.is_finite(g)
        g0 = tf.where(finite, g, tf.zeros_like(g))
        return tf.where(finite, dy * g0, dy * 0.0)
    return dy * _grad_in_dtype(entry, x, threshold, params)
