"""Keras layers over the pure spike functions of :mod:`s2nn_keras.surrogates`
(backend-agnostic: TensorFlow, JAX and PyTorch)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from s2nn_keras import surrogates

__all__ = ["S2Activation", "ClipConstraint", "is_spiking_neuron"]

_LAYER_KWARGS = frozenset(
    ["name", "dtype", "trainable", "activity_regularizer", "autocast", "input_shape",
     "batch_input_shape", "batch_size", "input_dim", "weights", "input_dtype"]
)


@keras.saving.register_keras_serializable(package="s2nn_keras")
class ClipConstraint(keras.constraints.Constraint):
    """Element-wise clip to ``[min_value, max_value]`` (``None``: unbounded),
    applied by the optimizer after every step; keeps learned neuron
    parameters in their valid range (e.g. s2nn's ``tau_s > 0``)."""

    def __init__(self, min_value=None, max_value=None):
        self.min_value = None if min_value is None or min_value == -math.inf else float(min_value)
        self.max_value = None if max_value is None or max_value == math.inf else float(max_value)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        lo = -np.inf if self.min_value is None else self.min_value
        hi = np.inf if self.max_value is None else self.max_value
        return ops.clip(w, lo, hi)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def _learnable_names(value):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f"learnable must be a name or a list of names, got {value!r}") from None


@keras.saving.register_keras_serializable(package="s2nn_keras")
class S2Activation(keras.layers.Layer):
    """Single-step spiking neuron as a Keras activation layer.

    Forward (paper Eq. 16): ``s = H(u - threshold)`` in {0, 1} (+-1 for
    ``ste_b``), firing when ``u >= threshold``. Backward: the surrogate named
    by ``surrogate`` (Eq. 23 for the default ``"s2nn"``:
    ``1/(tau_s u)`` above threshold, ``(1/alpha) sig_a(u)(1 - sig_a(u))``
    below). Without ``learnable`` the layer has no weights.

    **Put a BatchNormalization with ``momentum=0.9`` right before it.** The
    neuron compares the BN output with a fixed threshold (§4.3); at
    inference BN uses its moving statistics, which approach the batch
    statistics as ``1 - momentum**steps``. With Keras' default momentum 0.99
    that takes ~500 steps to 1 %: a short run (2 epochs of 2,000 images =
    126 steps leaves 28 % of the initial mean 0 / variance 1) evaluates
    neurons against a shifted threshold, and they stop firing (every
    inference firing rate 0, chance accuracy) although training accuracy is
    fine. At 0.9 the statistics settle in ~40 steps (the builders in
    :mod:`s2nn_keras.models` use 0.9). :func:`s2nn_keras.firing_rates` and
    :class:`s2nn_keras.FiringRateCallback` warn when a neuron layer never
    fires at inference.

    Args:
      surrogate: a name from :func:`s2nn_keras.available_surrogates`.
      threshold: firing threshold u_th; ``None`` uses the surrogate's default
        (paper Table 3: s2nn 1, ste_b 0, ste_s 1, sibnn 0.3, slayer 1). With
        ``"threshold"`` in ``learnable`` it is the initial value.
      learnable: names to learn, one value per channel (last axis):
        ``"threshold"`` (any surrogate) and the surrogate's
        ``learnable_params`` (s2nn: ``"tau_s"``, ``"alpha"``; sibnn:
        ``"delta"``). Gradients and the rule for shape parameters: module
        docstring of :mod:`s2nn_keras.surrogates`, "Learnable parameters":
        ``dL/du_th[c] = -sum dL/ds * g(u)`` (the surrogate g replaces the
        delta of ``dH(u - u_th)/du_th``), and for a shape parameter p the
        proxy rule of trainable STE windows (Si-BNN's Delta, Wang et al.
        2020a; PACT) ``dL/dp[c] = sum dL/ds * dPhi/dp`` with ``Phi`` the
        antiderivative of g, for s2nn ``Phi = sig((u - u_th)/alpha)`` below
        u_th and ``1/2 + ln(u/u_th)/tau_s`` above.
        Learned values are weights named like the parameter, clipped to the
        surrogate's bounds after each step.
      **params: surrogate parameters by name: ``tau_s``, ``alpha`` (s2nn),
        ``rho``, ``delta`` (sibnn), ``alpha1``, ``beta1`` (slayer), ``beta0``
        (superspike); initial values of learned ones.

    Attributes:
      threshold: the firing threshold: a float, or, once a layer with a
        learnable threshold is built, its per-channel ``keras.Variable``.
      params: the surrogate parameters as given (initial values of learned
        ones); :meth:`neuron_parameters` gives the current values.

    Example:
      >>> import keras
      >>> from s2nn_keras import S2Activation
      >>> model = keras.Sequential([
      ...     keras.Input((28, 28, 1)),
      ...     keras.layers.Conv2D(8, 3, use_bias=False),
      ...     keras.layers.BatchNormalization(momentum=0.9),
      ...     S2Activation("s2nn", tau_s=1.0, alpha=0.2, learnable=("threshold",)),
      ...     keras.layers.GlobalAveragePooling2D(),
      ...     keras.layers.Dense(10)])
    """

    def __init__(self, surrogate="s2nn", threshold=None, learnable=(), **kwargs):
        # Everything that is not a base-Layer keyword is a surrogate parameter;
        # resolve_params rejects unknown ones with the list of valid names.
        params = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LAYER_KWARGS}
        super().__init__(**kwargs)
        entry, th, merged = surrogates.resolve_params(surrogate, threshold, **params)
        names = _learnable_names(learnable)
        valid = ("threshold",) + tuple(entry.learnable_params)
        bad = [n for n in names if n not in valid]
        if bad or len(set(names)) != len(names):
            what = f"unknown learnable name(s) {', '.join(map(repr, bad))}" if bad else "learnable names repeat"
            raise ValueError(f"{what} for surrogate {surrogate!r}; valid: {', '.join(valid)}")
        self._entry = entry
        self.surrogate = surrogate
        self._initial_threshold = th
        self.threshold = th
        self.params = merged
        self.off_value = entry.off_value
        # Canonical order (threshold, then the surrogate's own order): weight
        # order in saved files does not depend on how the user listed them.
        self.learnable = tuple(n for n in valid if n in names)
        self._learned = {}

    def build(self, input_shape):
        if self.learnable:
            channels = input_shape[-1] if len(input_shape) >= 2 else None
            if channels is None:
                raise ValueError(f"{self.name}: learnable neuron parameters are per channel (last axis) and need "
                                 f"a known channel count; got input shape {tuple(input_shape)}")
            for name in self.learnable:
                init = self._initial_threshold if name == "threshold" else self.params[name]
                lo, hi = self._entry.bounds.get(name, (-math.inf, math.inf))
                var = self.add_weight(name=name, shape=(int(channels),),
                                      initializer=keras.initializers.Constant(init),
                                      constraint=ClipConstraint(lo, hi), trainable=True, dtype="float32")
                self._learned[name] = var
                if name == "threshold":
                    self.threshold = var
        super().build(input_shape)

    def call(self, inputs):
        if not self._learned:
            return surrogates._spike(inputs, self._entry, self.threshold, self.params)
        return surrogates._spike_learnable(inputs, self._entry, self._initial_threshold, self.params,
                                           dict(self._learned))

    def neuron_parameters(self):
        """Current values: ``{"threshold": ..., <param>: ...}``, floats for
        fixed values and float64 NumPy arrays (one per channel) for learned ones."""
        out = {"threshold": self._initial_threshold, **self.params}
        for name, var in self._learned.items():
            out[name] = np.asarray(ops.convert_to_numpy(var), dtype=np.float64)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"surrogate": self.surrogate, "threshold": self._initial_threshold})
        config.update(self.params)
        if self.learnable:
            config["learnable"] = list(self.learnable)
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = keras.regularizers.serialize(self.activity_regularizer)
        return config


def is_spiking_neuron(layer) -> bool:
    """True for a single-step spiking-neuron layer: an :class:`S2Activation`,
    or any layer whose class sets ``is_spiking_neuron = True`` (the export
    package's folded ``ThresholdNeuron``). The one test every module uses to
    recognise a neuron (firing rates, energy accounting, folding, export).

    A neuron layer outputs spikes: 1 where it fires and ``layer.off_value``
    (0, or -1 for ``ste_b``) elsewhere.
    """
    return isinstance(layer, S2Activation) or getattr(type(layer), "is_spiking_neuron", False) is True
