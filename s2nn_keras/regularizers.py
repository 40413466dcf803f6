"""Firing-rate regularizer for spiking neurons (beyond the paper).

Energy per inference falls with the firing rate (paper Eq. B.4,
``E_Method = E_AC sum_l FLOPs(l) R(l)``), so penalising spikes trades
accuracy for energy. :class:`FiringRateRegularizer` is a Keras activity
regularizer for the output ``s`` of a neuron layer (``S2Activation`` or the
``activity_regularizer`` argument of :func:`s2nn_keras.models.PreActResNet`).

For one example ``i`` with ``N`` neurons, let the fired indicator be
``f = (s - off) / (1 - off)``, with ``off = min(0, min s)`` (treated as a
constant): ``f = s`` for {0, 1} spikes and ``f = (s + 1) / 2`` for the
{-1, +1} ``ste_b`` neuron, linear in ``s`` so the surrogate gradient flows
through it. With ``r_i = mean_j f_ij`` (the example's firing rate, Eq. B.2)
the regularizer returns, summed over the batch::

    sum_i [ l1 * r_i + strength * (r_i - target_rate)^2 ]

(the second term only when ``target_rate`` is set). Keras 3 divides an
activity regularizer's value by the batch size, so the loss added per
layer is ``l1 * R + strength * mean_i (r_i - target)^2`` with ``R`` the
batch firing rate: an L1 penalty on spikes normalised by the number of
neurons (so ``l1`` means the same for every layer size), and a quadratic
pull toward a target rate.

Example:
  >>> from s2nn_keras.models import PreActResNet
  >>> from s2nn_keras.regularizers import FiringRateRegularizer
  >>> model = PreActResNet([1, 1], (28, 28, 1), 10, width=8,
  ...                      activity_regularizer=FiringRateRegularizer(l1=0.1))
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["FiringRateRegularizer"]


def _check(name, value, low=0.0, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="s2nn_keras")
class FiringRateRegularizer(keras.regularizers.Regularizer):
    """L1 penalty on spikes and/or a quadratic penalty toward a target rate.

    Args:
      l1: weight of the firing rate ``R`` (>= 0).
      target_rate: optional target rate in [0, 1].
      strength: weight of ``(r_i - target_rate)^2`` (>= 0); used only with
        ``target_rate``.

    Raises:
      ValueError: a negative weight, a target outside [0, 1], or nothing to
        penalise (``l1 = 0`` and no target).
    """

    def __init__(self, l1=0.0, target_rate=None, strength=1.0):
        self.l1 = _check("l1", l1)
        self.target_rate = None if target_rate is None else _check("target_rate", target_rate, 0.0, 1.0)
        self.strength = _check("strength", strength)
        if self.l1 == 0.0 and (self.target_rate is None or self.strength == 0.0):
            raise ValueError("FiringRateRegularizer penalises nothing: set l1 > 0 or target_rate with strength > 0")

    def __call__(self, x):
        x = ops.cast(x, "float32")
        off = ops.stop_gradient(ops.minimum(ops.min(x), 0.0))
        fired = (x - off) / (1.0 - off)
        batch = ops.shape(fired)[0]
        rates = ops.mean(ops.reshape(fired, (batch, -1)), axis=1)  # r_i
        value = 0.0
        if self.l1:
            value = value + self.l1 * ops.sum(rates)
        if self.target_rate is not None and self.strength:
            value = value + self.strength * ops.sum(ops.square(rates - self.target_rate))
        return value

    def get_config(self):
        return {"l1": self.l1, "target_rate": self.target_rate, "strength": self.strength}
