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

Learnable parameters
--------------------

``S2Activation(..., learnable=("threshold", "tau_s", "alpha"))`` learns
per-channel values (paper §6 future work, after Wang et al. 2020a, Si-BNN,
which trains its threshold theta and window Delta). With g = dS/du the
surrogate and the upstream gradient dL/ds:

* **threshold** -- it is in the forward pass, ``s = H(u - u_th)``, whose
  exact derivatives are ``delta(u - u_th)`` and ``-delta(u - u_th)``; the
  surrogate replaces delta in both::

      dL/du = dL/ds * g(u),      dL/du_th[c] = -sum_{n,h,w} dL/ds * g(u)

* **shape parameters** (``tau_s``, ``alpha`` of s2nn; ``delta`` of sibnn)
  are not in the forward pass, so their true gradient is 0. They are learned
  by the proxy rule of trainable clipping/STE windows (PACT, Choi et al.
  2018, and our reading of Si-BNN's trainable Delta): the backward pass
  already treats ``s`` as a proxy ``Phi(u)`` with ``dPhi/du = g``, so a
  parameter p gets ``dL/dp[c] = sum dL/ds * dPhi/dp``. For s2nn
  (the antiderivative of Eq. 23, continuous at u_th)::

      Phi(u) = sig((u - u_th)/alpha)              u <  u_th     (Eq. 21)
             = 1/2 + ln(u/u_th) / tau_s           u >= u_th
      dPhi/dalpha = -((u - u_th)/alpha) g(u)  (u < u_th; 0 above)
      dPhi/dtau_s = -ln(u/u_th) / tau_s^2     (u >= u_th; 0 below)

  so ``alpha`` widens where upstream gradients say that more silent neurons
  should have moved, and ``tau_s`` sets how fast the 1/u tail of firing
  neurons decays. For Si-BNN ``Phi(u) = clip(u, u_th - rho Delta, u_th +
  Delta)`` gives ``dPhi/dDelta = -rho`` below the window, ``+1`` above, 0
  inside.

Learned values are clipped to the surrogate's ``bounds`` after every
optimizer step (s2nn's u_th, tau_s, alpha and Si-BNN's Delta stay >=
:data:`MIN_POSITIVE`). Only the threshold changes what the network computes;
folding reads it per channel (Eq. 27 with ``u_th[c]``).

Pure functions (:func:`spike`, :func:`surrogate_gradient`) live here; the
Keras layer wrapping them is :class:`s2nn_keras.layers.S2Activation`.
Everything is written with ``keras.ops`` and ``keras.ops.custom_gradient``
(``tf.custom_gradient`` on TensorFlow, ``jax.custom_gradient`` on JAX, a
``torch.autograd.Function`` on PyTorch), so the same code runs on every
Keras backend, eagerly and under ``tf.function``/XLA, ``jax.jit`` or torch.
On TensorFlow the built-in surrogates' backward pass is additionally run as
one XLA-fused kernel (:mod:`s2nn_keras.tf_fused_backward`).

Custom surrogates are added with :func:`register_surrogate`. ``grad_fn``
receives the current backend's float32 tensors, so write it with
``keras.ops`` to run on every backend (TF ops still work on TensorFlow)::

    from keras import ops
    from s2nn_keras import register_surrogate

    def triangle(u, threshold, width):
        return ops.relu(1.0 - ops.abs(u - threshold) / width) / width

    register_surrogate("triangle", triangle, threshold=1.0,
                       params={"width": 1.0})
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

__all__ = [
    "Surrogate",
    "register_surrogate",
    "get_surrogate",
    "available_surrogates",
    "resolve_params",
    "surrogate_gradient",
    "spike",
    "MIN_POSITIVE",
]


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A registered surrogate: its backward function and its defaults.

    Attributes:
      name: registry key.
      grad_fn: ``grad_fn(u, threshold, **params) -> dS/du`` on float32
        tensors of the current backend, built from ``keras.ops`` so it runs
        on every backend and under each backend's jit.
      threshold: default firing threshold u_th (paper Table 3).
      params: default values of the named surrogate parameters.
      off_value: value emitted when the neuron does not fire (0, or -1 for
        the ``ste_b`` baseline).
      validate: optional ``validate(threshold, params)`` raising ValueError.
      description: one line for docs and plots.
      param_grads: optional ``param_grads(u, threshold, **params) ->
        {name: dPhi/dname}`` for the parameters that can be learned
        (``S2Activation(learnable=...)``): the derivatives, with respect to
        the surrogate's shape parameters, of its *proxy* ``Phi`` -- the
        function whose u-derivative is ``grad_fn`` (see "Learnable
        parameters" in the module docstring).
      learnable_params: the shape parameters ``param_grads`` returns (every
        surrogate can learn its ``threshold``; these in addition).
      bounds: ``{name: (low, high)}`` kept by a learned ``threshold`` or
        shape parameter (a clip after every optimizer step; a name not
        listed is unbounded).
    """

    name: str
    grad_fn: Callable[..., Any]
    threshold: float
    params: Mapping[str, float]
    off_value: float = 0.0
    validate: Optional[Callable[[float, Dict[str, float]], None]] = None
    description: str = ""
    param_grads: Optional[Callable[..., Dict[str, Any]]] = None
    learnable_params: Tuple[str, ...] = ()
    bounds: Mapping[str, Tuple[float, float]] = dataclasses.field(default_factory=dict)


_REGISTRY: Dict[str, Surrogate] = {}


def register_surrogate(
    name: str,
    grad_fn: Callable[..., Any],
    *,
    threshold: float,
    params: Optional[Mapping[str, float]] = None,
    off_value: float = 0.0,
    validate: Optional[Callable[[float, Dict[str, float]], None]] = None,
    description: str = "",
    param_grads: Optional[Callable[..., Dict[str, Any]]] = None,
    learnable_params: Sequence[str] = (),
    bounds: Optional[Mapping[str, Tuple[float, float]]] = None,
    overwrite: bool = False,
) -> Surrogate:
    """Adds a surrogate to the catalogue so every API accepts ``name``.

    Args:
      name: the key users pass as ``surrogate=`` / ``activation=``.
      grad_fn: ``grad_fn(u, threshold, **params)`` returning dS/du as a
        tensor of u's shape. ``u`` arrives as a float32 tensor of the current
        Keras backend; write it with ``keras.ops`` (backend-specific ops,
        e.g. ``tf.*`` on TensorFlow, work on that backend only). ``threshold``
        and the params arrive as Python floats.
      threshold: default firing threshold.
      params: names and default values of the surrogate's parameters.
      off_value: output when not firing (0.0, or -1.0 for sign neurons).
      validate: optional callable raising ValueError on bad values.
      description: short human-readable formula.
      param_grads: optional ``param_grads(u, threshold, **params)`` returning
        ``{name: dPhi/dname}`` for each of ``learnable_params``, where
        ``Phi`` is the proxy whose u-derivative is ``grad_fn`` (the rule of
        "Learnable parameters" in the module docstring); ``threshold`` and
        the params then arrive as float32 tensors broadcasting against u.
      learnable_params: shape parameters ``S2Activation(learnable=...)`` may
        learn (each needs ``param_grads``); the threshold is always learnable.
      bounds: ``{name: (low, high)}`` a learned value is clipped to after every
        optimizer step (``"threshold"`` or a learnable parameter).
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
    learnable_params = tuple(learnable_params)
    unknown = sorted(set(learnable_params) - set(params or {}))
    if unknown:
        raise ValueError(f"learnable_params {unknown} are not parameters of surrogate {name!r}")
    if learnable_params and not callable(param_grads):
        raise ValueError(f"surrogate {name!r}: learnable_params need a param_grads function")
    bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in dict(bounds or {}).items()}
    bad = sorted(set(bounds) - {"threshold", *learnable_params})
    if bad:
        raise ValueError(f"bounds {bad} name nothing learnable (valid: threshold, {', '.join(learnable_params)})")
    entry = Surrogate(
        name=name,
        grad_fn=grad_fn,
        threshold=float(threshold),
        params=dict(params or {}),
        off_value=float(off_value),
        validate=validate,
        description=description,
        param_grads=param_grads,
        learnable_params=learnable_params,
        bounds=bounds,
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

#: Lower bound kept by learned parameters that must stay > 0 (s2nn's u_th,
#: tau_s and alpha, Si-BNN's Delta): the 1/(tau_s u) branch of Eq. 23 is at
#: most 1/(tau_s u_th) <= 1e4.
MIN_POSITIVE = 1e-2


def s2nn_grad(u, threshold, tau_s, alpha):
    """Eq. 23 of the paper (TSSL-BP in the single-step limit).

    dS/du = 1 / (tau_s * u)                              if u >= u_th
          = (1/alpha) * sig(u) * (1 - sig(u))            if u <  u_th
    with sig(u) = 1 / (1 + exp((u_th - u) / alpha))      (Eq. 21)

    Valid for any u_th > 0 (then u >= u_th > 0 and 1/u stays finite).
    """
    fire = ops.greater_equal(u, threshold)
    # Guard the 1/u branch so the unused side of the select never divides by
    # 0 (its NaN/inf would otherwise leak into the gradient of the select).
    safe_u = ops.where(fire, u, ops.ones_like(u))
    above = 1.0 / (tau_s * safe_u)
    sig = ops.sigmoid((u - threshold) / alpha)
    below = sig * (1.0 - sig) / alpha
    return ops.where(fire, above, below)


def s2nn_param_grads(u, threshold, tau_s, alpha):
    """Derivatives of the s2nn proxy ``Phi`` (the antiderivative of Eq. 23
    that is continuous at u_th, see the module docstring)::

        Phi(u) = sig((u - u_th)/alpha)                    u <  u_th
               = 1/2 + ln(u / u_th) / tau_s               u >= u_th

        dPhi/dalpha = -((u - u_th)/alpha) * dS/du   below, 0 above
        dPhi/dtau_s = -ln(u / u_th) / tau_s^2       above, 0 below
    """
    fire = ops.greater_equal(u, threshold)
    safe_u = ops.where(fire, u, threshold * ops.ones_like(u))
    sig = ops.sigmoid((u - threshold) / alpha)
    below = sig * (1.0 - sig) / alpha
    zero = ops.zeros_like(u)
    return {
        "alpha": ops.where(fire, zero, -((u - threshold) / alpha) * below),
        "tau_s": ops.where(fire, -ops.log(safe_u / threshold) / ops.square(tau_s), zero),
    }


def _s2nn_validate(threshold, params):
    if threshold <= 0:
        raise ValueError(
            f"s2nn threshold must be > 0 (the 1/(tau_s*u) branch of Eq. 23 needs u >= u_th > 0), got {threshold}"
        )
    _positive("tau_s", "alpha")(threshold, params)


def ste_grad(u, threshold):
    """Straight-through estimator: 1 on |u - u_th| <= 1, else 0."""
    return ops.cast(ops.less_equal(ops.abs(u - threshold), 1.0), u.dtype)


def sibnn_grad(u, threshold, rho, delta):
    """Si-BNN backward window (Wang et al., AAAI 2020, "Sparsity-Inducing
    Binarized Neural Networks", Fig. 1).

    Forward: s = H(u - theta) in {0, 1}, theta = u_th (0.3 by default).
    Backward (our reading of their Fig. 1 with fixed, non-trainable theta and
    Delta): dS/du = 1 on  theta - rho*Delta <= u <= theta + Delta, else 0.
    rho in [0, 1] shortens the window on the silent side, so relatively more
    gradient flows through neurons that fire.
    """
    inside = ops.logical_and(
        ops.greater_equal(u, threshold - rho * delta), ops.less_equal(u, threshold + delta))
    return ops.cast(inside, u.dtype)


def sibnn_param_grads(u, threshold, rho, delta):
    """Derivative of the Si-BNN proxy, the clip whose u-derivative is the
    window, ``Phi(u) = clip(u, u_th - rho*Delta, u_th + Delta)``::

        dPhi/dDelta = -rho  for u < u_th - rho*Delta
                    = +1    for u > u_th + Delta
                    =  0    inside the window
    """
    lower = ops.less(u, threshold - rho * delta)
    upper = ops.greater(u, threshold + delta)
    zero = ops.zeros_like(u)
    return {"delta": ops.where(lower, -rho * ops.ones_like(u), ops.where(upper, ops.ones_like(u), zero))}


def _sibnn_validate(threshold, params):
    if not 0.0 <= params["rho"] <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {params['rho']}")
    _positive("delta")(threshold, params)


def slayer_grad(u, threshold, alpha1, beta1):
    """Eq. 25 (SLAYER): alpha1 * exp(-beta1 * |u - u_th|)."""
    return alpha1 * ops.exp(-beta1 * ops.abs(u - threshold))


def superspike_grad(u, threshold, beta0):
    """Eq. 24 (SuperSpike fast sigmoid): (1 + beta0 |u - u_th|)^-2."""
    return 1.0 / ops.square(1.0 + beta0 * ops.abs(u - threshold))


register_surrogate(
    "s2nn", s2nn_grad, threshold=1.0, params={"tau_s": 1.0, "alpha": 0.2},
    validate=_s2nn_validate,
    description="S2NN Eq. 23: 1/(tau_s u) above u_th, scaled-sigmoid warm-up below",
    param_grads=s2nn_param_grads, learnable_params=("tau_s", "alpha"),
    bounds={"threshold": (MIN_POSITIVE, math.inf), "tau_s": (MIN_POSITIVE, math.inf),
            "alpha": (MIN_POSITIVE, math.inf)},
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
    param_grads=sibnn_param_grads, learnable_params=("delta",),
    bounds={"delta": (MIN_POSITIVE, math.inf)},
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

# The built-in entries (known to compile with XLA; see _backward).
_BUILTIN = dict(_REGISTRY)


# --------------------------------------------------------------------------
# The spike function.
# --------------------------------------------------------------------------


def _as_float_tensor(u):
    """``u`` as a backend tensor; non-float inputs become float32."""
    u = ops.convert_to_tensor(u)
    if not keras.backend.is_float_dtype(keras.backend.standardize_dtype(u.dtype)):
        u = ops.cast(u, "float32")
    return u


def surrogate_gradient(u, surrogate="s2nn", threshold=None, **params):
    """dS/du of the named surrogate at ``u`` (computed in float32, returned
    in u's dtype, with non-finite values mapped to 0; float16 results are
    clipped to +-65504 so they stay finite). Returns a backend tensor."""
    entry, th, merged = resolve_params(surrogate, threshold, **params)
    return _grad_in_dtype(entry, _as_float_tensor(u), th, merged)


def _finite32(entry_fn, u32, threshold, params):
    g = ops.convert_to_tensor(entry_fn(u32, threshold, **params))
    return ops.where(ops.isfinite(g), g, ops.zeros_like(g))


def _grad_in_dtype(entry, u, threshold, params):
    dtype = keras.backend.standardize_dtype(u.dtype)
    g = _finite32(entry.grad_fn, ops.cast(u, "float32"), threshold, params)
    if dtype != "float32":
        # float16 overflows at 65504; keep the surrogate finite in low precision.
        if dtype == "float16":
            g = ops.clip(g, -65504.0, 65504.0)
        g = ops.cast(g, dtype)
    return g


def spike(u, surrogate="s2nn", threshold=None, **params):
    """Single-step neuron: Heaviside forward (Eq. 16), surrogate backward.

    Forward ``s = H(u - u_th)``: 1 where ``u >= threshold`` (compared in u's
    dtype), else 0 (-1 for ``ste_b``). Backward: ``ds/du = dS/du`` of the
    named surrogate, i.e. the upstream gradient times
    :func:`surrogate_gradient` at ``u``.

    Args:
      u: membrane potential, a tensor or array of any float dtype
        (float16/bfloat16/float32/64; integers are cast to float32).
      surrogate: a registered name, see :func:`available_surrogates`.
      threshold: firing threshold u_th; ``None`` takes the surrogate default.
      **params: the surrogate's named parameters (e.g. ``tau_s``, ``alpha``).

    Returns:
      ``s``, a backend tensor of u's dtype.

    Example:
      >>> import numpy as np, keras
      >>> s = spike(np.array([0.0, 1.0, 3.0], "float32"))
      >>> keras.ops.convert_to_numpy(s)
      array([0., 1., 1.], dtype=float32)
    """
    entry, th, merged = resolve_params(surrogate, threshold, **params)
    return _spike(_as_float_tensor(u), entry, th, merged)


def _spike(u, entry, threshold, params):
    """:func:`spike` on a float tensor with resolved parameters (the layer's
    entry point)."""
    dtype = keras.backend.standardize_dtype(u.dtype)
    if not keras.backend.is_float_dtype(dtype):
        u, dtype = ops.cast(u, "float32"), "float32"

    @ops.custom_gradient
    def _heaviside(x):
        s = _step(x, threshold, entry.off_value, dtype)

        def grad(*args, upstream=None):
            # TF and JAX call grad(upstream); Keras' torch backend calls
            # grad(x, upstream=upstream).
            if upstream is None:
                (upstream,) = args
            return _backward(entry, x, threshold, params, upstream)

        return s, grad

    return _heaviside(u)


def _step(x, threshold, off_value, dtype):
    """The forward pass: 1 where ``x >= threshold`` (a Python float, or a
    per-channel tensor), else ``off_value``, in ``dtype``."""
    if isinstance(threshold, float):
        # The native comparison with a Python float compares in x's dtype on
        # every backend (TF converts the scalar to x's dtype, JAX treats it
        # as weakly typed, torch as a wrapped number) and creates no tensor
        # on the device; ops.greater_equal would promote float16 x to float32.
        fire = x >= threshold
    else:
        fire = ops.greater_equal(x, ops.cast(threshold, dtype))
    if off_value == 0.0:
        return ops.cast(fire, dtype)
    return ops.where(fire, ops.ones_like(x), ops.full_like(x, off_value))


def _spike_learnable(u, entry, threshold, params, learned):
    """:func:`_spike` where some values are learned per channel (the
    ``S2Activation(learnable=...)`` entry point).

    Args:
      u: float tensor ``[..., C]``.
      threshold, params: the fixed values (Python floats).
      learned: ``{name: tensor [C]}`` for ``"threshold"`` and/or learnable
        shape parameters; they replace the fixed values.

    Forward: ``s = H(u - u_th[c])``, compared in u's dtype. Backward (module
    docstring, "Learnable parameters"): ``ds/du = g(u)``, ``ds/du_th = -g(u)``
    and ``ds/dp = dPhi/dp`` for a shape parameter, summed over every axis
    but the channel axis; ``g`` and ``Phi`` in float32. The TensorFlow fused
    backward is not used here (it is specialised on fixed values).
    """
    dtype = keras.backend.standardize_dtype(u.dtype)
    if not keras.backend.is_float_dtype(dtype):
        u, dtype = ops.cast(u, "float32"), "float32"
    names = tuple(learned)
    # A copy, not the variable itself: tf.custom_gradient must see tensors only.
    values = [ops.copy(ops.convert_to_tensor(learned[n])) for n in names]

    @ops.custom_gradient
    def _heaviside(x, *vals):
        th = vals[names.index("threshold")] if "threshold" in names else threshold
        s = _step(x, th, entry.off_value, dtype)

        def grad(*args, upstream=None):
            if upstream is None:
                upstream = args[0]
            return _learnable_backward(entry, x, threshold, params, names, vals, upstream)

        return s, grad

    return _heaviside(u, *values)


def _learnable_backward(entry, x, threshold, params, names, vals, dy):
    """``(dL/du, dL/d value for each learned name)`` of :func:`_spike_learnable`."""
    th, resolved = threshold, dict(params)
    for name, value in zip(names, vals):
        if name == "threshold":
            th = ops.cast(value, "float32")
        else:
            resolved[name] = ops.cast(value, "float32")
    dx = dy * _grad_in_dtype(entry, x, th, resolved)
    x32, dy32 = ops.cast(x, "float32"), ops.cast(dy, "float32")
    axes = tuple(range(len(x.shape) - 1))
    shape_grads = None
    out = [dx]
    for name, value in zip(names, vals):
        if name == "threshold":
            local = -_finite32(entry.grad_fn, x32, th, resolved)
        else:
            if shape_grads is None:
                shape_grads = entry.param_grads(x32, th, **resolved)
            local = ops.convert_to_tensor(shape_grads[name])
            local = ops.where(ops.isfinite(local), local, ops.zeros_like(local))
        total = ops.sum(dy32 * local, axis=axes) if axes else dy32 * local
        out.append(ops.cast(ops.reshape(total, ops.shape(value)), keras.backend.standardize_dtype(value.dtype)))
    return tuple(out)


def _backward(entry, x, threshold, params, dy):
    """``dy * surrogate_gradient(x)``: the spike's backward pass. On the
    TensorFlow backend the built-in surrogates' one runs XLA-fused
    (:mod:`s2nn_keras.tf_fused_backward`)."""
    if _TF_BACKWARD is not None and _BUILTIN.get(entry.name) is entry:
        return _TF_BACKWARD(entry, x, threshold, params, dy, _grad_in_dtype)
    return dy * _grad_in_dtype(entry, x, threshold, params)


_TF_BACKWARD = None
if keras.backend.backend() == "tensorflow":
    from s2nn_keras import tf_fused_backward as _tf_fused_backward

    _TF_BACKWARD = _tf_fused_backward.backward
