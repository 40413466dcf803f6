"""The folded inference neuron: a per-channel threshold spike (paper Eq. 27).

Training puts a BatchNormalization right before every single-step neuron
(paper §4.3). At inference the BN is an affine map of the membrane
potential ``u`` per channel ``c``,

    BN(u)_c = g_c * u_c + b_c,   g_c = gamma_c / sqrt(var_c + eps),
                                 b_c = beta_c - g_c * mean_c,

and the neuron fires iff ``BN(u)_c >= u_th``. Solving for ``u`` (Eq. 27):

* ``g_c > 0``: fire iff ``u_c >= theta_c``, ``theta_c = (u_th - b_c) / g_c``;
* ``g_c < 0``: fire iff ``u_c <= theta_c`` (dividing by a negative number
  flips the inequality);
* ``g_c = 0``: the BN output is the constant ``b_c``, so the channel always
  fires (``b_c >= u_th``) or never does.

:class:`ThresholdNeuron` stores ``theta_c`` and a polarity ``p_c`` in
{+1, -1, 0} per channel (for ``p_c = 0``, ``theta_c`` is 1.0 for "always
fires" and 0.0 for "never fires") and has no weights, so the BN vanishes
from the graph.

Two formulations of the same step function are available:

``"compare"`` (float32 and int8 TFLite): only comparison and logical ops
  (``GREATER_EQUAL``, ``LESS_EQUAL``, ``LOGICAL_AND``/``LOGICAL_OR``) and one
  ``SELECT_V2`` that writes the on/off values. In an int8 model the compare
  runs in the integer domain against the threshold quantized at the
  input's scale.

``"ramp"`` (int16x8 TFLite, whose quantizer has no comparison ops): the
  per-channel affine ``z_c = p_c * (u_c - theta_c)`` (constant ``+-1`` for
  ``p_c = 0``) followed by the saturating ramp
  ``s = clip(z * gain, 0, 1)``. It equals the step wherever
  ``|u - theta| >= 1/gain``; the export uses it only where ``z`` is already the
  quantized output of a layer, so ``gain`` just has to push the smallest
  non-zero integer step of ``z`` past 1 (see docs/EXPORT.md). Exact ties
  ``z == 0`` give 0 here and 1 in ``"compare"``.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = ["ThresholdNeuron", "FORMULATIONS"]

FORMULATIONS = ("compare", "ramp")


@keras.saving.register_keras_serializable(package="s2nn_export")
class ThresholdNeuron(keras.layers.Layer):
    """Per-channel threshold spike: ``s_c = on`` iff ``p_c * (u_c - theta_c) >= 0``.

    Args:
      thresholds: ``theta_c``, one float per channel (last axis), or a scalar
        broadcast to every channel.
      polarity: ``p_c`` per channel: +1 fires on ``u >= theta``, -1 on
        ``u <= theta`` (a negative BN scale), 0 for a constant channel
        (then ``theta_c`` 1.0 = always fires, 0.0 = never fires). A scalar
        is broadcast. Defaults to all +1.
      off_value: output when not firing, 0.0 or -1.0 (``ste_b``); the
        firing output is 1.0.
      formulation: ``"compare"`` or ``"ramp"`` (see the module docstring).
      gain: slope of the ramp formulation.
      surrogate: name of the surrogate the neuron was trained with (kept
        for reports; inference does not use it).
    """

    is_spiking_neuron = True

    def __init__(self, thresholds=0.0, polarity=1, off_value=0.0, formulation="compare",
                 gain=1.0, surrogate=None, **kwargs):
        super().__init__(**kwargs)
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
        if off_value not in (0.0, -1.0):
            raise ValueError(f"off_value must be 0.0 or -1.0, got {off_value!r}")
        th = np.atleast_1d(np.asarray(thresholds, dtype=np.float32))
        pol = np.atleast_1d(np.asarray(polarity, dtype=np.int64))
        if th.ndim != 1 or pol.ndim != 1:
            raise ValueError("thresholds and polarity must be scalars or 1-D per-channel lists")
        if not np.all(np.isfinite(th)):
            raise ValueError(f"layer {self.name!r}: thresholds must be finite")
        if not np.all(np.isin(pol, (-1, 0, 1))):
            raise ValueError(f"layer {self.name!r}: polarity values must be -1, 0 or +1")
        if th.size != pol.size and 1 not in (th.size, pol.size):
            raise ValueError(
                f"layer {self.name!r}: {th.size} thresholds but {pol.size} polarities")
        n = max(th.size, pol.size)
        self._th = np.broadcast_to(th, (n,)).copy()
        self._pol = np.broadcast_to(pol, (n,)).copy()
        const = self._pol == 0
        if np.any(const & ~np.isin(self._th, (0.0, 1.0))):
            raise ValueError(
                f"layer {self.name!r}: constant channels (polarity 0) need threshold 1.0 "
                "(always fires) or 0.0 (never fires)")
        self.off_value = float(off_value)
        self.formulation = formulation
        self.gain = float(gain)
        self.surrogate = surrogate

    # -- per-channel views -------------------------------------------------
    @property
    def thresholds(self):
        return self._th.copy()

    @property
    def polarity(self):
        return self._pol.copy()

    def build(self, input_shape):
        channels = input_shape[-1]
        if self._th.size not in (1, channels):
            raise ValueError(
                f"layer {self.name!r} has {self._th.size} thresholds for {channels} channels")
        if self._th.size == 1 and channels not in (None, 1):
            self._th = np.repeat(self._th, channels)
            self._pol = np.repeat(self._pol, channels)
        super().build(input_shape)

    def _spike_bool(self, u):
        th, pol = self._th, self._pol
        pos, neg, const = pol > 0, pol < 0, pol == 0
        terms = []
        if pos.any():
            ge = tf.greater_equal(u, tf.constant(np.where(pos, th, 0.0), u.dtype))
            terms.append(ge if pos.all() else tf.logical_and(ge, tf.constant(pos)))
        if neg.any():
            le = tf.less_equal(u, tf.constant(np.where(neg, th, 0.0), u.dtype))
            terms.append(le if neg.all() else tf.logical_and(le, tf.constant(neg)))
        always = const & (th == 1.0)
        if always.any():
            if not terms:  # only constant channels: u >= -inf is True everywhere
                terms.append(tf.greater_equal(u, tf.constant(-np.inf, u.dtype)))
                terms[0] = tf.logical_and(terms[0], tf.constant(always))
            else:
                terms.append(tf.constant(always))  # broadcast by LOGICAL_OR
        if not terms:  # every channel is constant and silent: u < -inf is False
            return tf.less(u, tf.constant(-np.inf, u.dtype))
        fire = terms[0]
        for term in terms[1:]:
            fire = tf.logical_or(fire, term)
        return fire

    def _ramp(self, u):
        th, pol = self._th, self._pol
        gain = self.gain
        if np.all(pol == 1) and np.all(th == 0.0):
            # The threshold already sits in the producer's bias: z = u.
            z = u * tf.constant(gain, u.dtype) if gain != 1.0 else u
        else:
            # z = gain * p_c * (u_c - theta_c); gain * (+-1) for constant
            # channels. One per-channel affine; on 4-D inputs it is written
            # as a 1x1 depthwise convolution with a bias so TFLite keeps it
            # as a single DEPTHWISE_CONV_2D whose int16 output is z itself.
            scale = (gain * pol).astype(np.float32)
            shift = (gain * np.where(pol == 0, np.where(th == 1.0, 1.0, -1.0), -pol * th)).astype(np.float32)
            if len(u.shape) == 4:
                kernel = tf.constant(scale.reshape(1, 1, -1, 1), u.dtype)
                z = tf.nn.depthwise_conv2d(u, kernel, strides=[1, 1, 1, 1], padding="VALID")
                z = tf.nn.bias_add(z, tf.constant(shift, u.dtype))
            else:
                z = u * tf.constant(scale, u.dtype) + tf.constant(shift, u.dtype)
        s = tf.minimum(tf.nn.relu(z), tf.constant(1.0, u.dtype))
        if self.off_value != 0.0:
            s = s * 2.0 - 1.0
        return s

    def call(self, inputs):
        u = inputs if inputs.dtype.is_floating else tf.cast(inputs, tf.float32)
        if self.formulation == "ramp":
            return self._ramp(u)
        fire = self._spike_bool(u)
        return tf.where(fire, tf.constant(1.0, u.dtype), tf.constant(self.off_value, u.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "thresholds": [float(v) for v in self._th],
            "polarity": [int(v) for v in self._pol],
            "off_value": self.off_value,
            "formulation": self.formulation,
            "gain": self.gain,
            "surrogate": self.surrogate,
        })
        return config
