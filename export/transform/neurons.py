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

Three formulations of the same step function are available:

``"saturate"`` (the default export, every format): a saturating clamp of a
  large per-channel multiple of the distance to the threshold,

      z_c = G_c * p_c * (u_c - theta_c)        (z_c = +-G_c for p_c = 0)
      s   = clip(z, off, on)                   (one stage), or
      s   = clip(G2 * clip(z, -1, 1), off, on) (two stages, int16x8)

  with spike levels ``(off, on) = (0, 6)`` (``relu6``) for {0, 1} neurons and
  ``(-1, 1)`` (``RELU_N1_TO_1``) for ``ste_b``. It equals the step (scaled to
  the levels) wherever ``|u - theta| >= (on - off) / G``. The clamps are
  activations TFLite fuses into the convolution before them: when the
  neuron's input comes from a Conv/Dense used only by it, ``G``, ``theta``
  and ``p`` live in that layer's weights and bias (``gain = 1``,
  ``thresholds = 0``: the layer is just the clamp); otherwise the affine is
  one 1x1 depthwise convolution with a bias inside this layer. The
  ``{0, 6}`` levels are 6 times the trained ones, a factor every reader of
  the spikes absorbs (:func:`export.transform.edge.edge_model`). Why the integer models get exactly
  two levels and the exact integer decision: docs/EXPORT.md.

``"compare"`` (the ablation, float32 and int8 TFLite): only comparison and
  logical ops (``GREATER_EQUAL``, ``LESS_EQUAL``, ``LOGICAL_AND``/``LOGICAL_OR``)
  and one ``SELECT_V2`` that writes the on/off values. In an int8 model the
  compare runs in the integer domain against the threshold quantized at the
  input's scale.

``"ramp"`` (the int16x8 ablation, whose quantizer has no comparison ops):
  the per-channel affine ``z_c = p_c * (u_c - theta_c)`` (constant ``+-1``
  for ``p_c = 0``) followed by the saturating ramp ``s = clip(z * gain, 0, 1)``.
  It equals the step wherever ``|u - theta| >= 1/gain``. Exact ties
  ``z == 0`` give 0 here and 1 in ``"compare"``.

The formulations, their levels and ops are registered in
:mod:`export.transform.formulations`. TensorFlow is imported only when the layer
runs, so importing this module (what registers the layer for
``keras.saving.load_model``, see :mod:`export.transform.layers`) stays cheap.
"""

from __future__ import annotations

import keras
import numpy as np

from export.transform.formulations import available_formulations, get_formulation

__all__ = ["ThresholdNeuron"]


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
      off_value: output when not firing, 0.0 or -1.0 (``ste_b``).
      formulation: ``"compare"``, ``"ramp"`` or ``"saturate"`` (module
        docstring).
      gain: slope of the ramp / saturate formulations; a scalar, or one
        value per channel for ``"saturate"``.
      on_value: output when firing: 1.0, or for ``"saturate"`` 6.0 with
        ``off_value`` 0 (the RELU6 levels) and 1.0 with ``off_value`` -1.
      level_gain: ``"saturate"`` only: ``None`` for one stage, or the gain
        ``G2`` of the second stage ``clip(G2 * clip(z, -1, 1), off, on)``.
      surrogate: name of the surrogate the neuron was trained with (kept
        for reports; inference does not use it).

    Example:
      >>> import numpy as np
      >>> n = ThresholdNeuron([0.5, -0.2], [1, -1])
      >>> np.asarray(n(np.array([[0.5, 0.0]], np.float32))).tolist()
      [[1.0, 0.0]]
    """

    is_spiking_neuron = True

    def __init__(self, thresholds=0.0, polarity=1, off_value=0.0, formulation="compare",
                 gain=1.0, surrogate=None, on_value=None, level_gain=None, **kwargs):
        super().__init__(**kwargs)
        if formulation not in available_formulations():
            raise ValueError(f"formulation must be one of {available_formulations()}, got {formulation!r}")
        if off_value not in (0.0, -1.0):
            raise ValueError(f"off_value must be 0.0 or -1.0, got {off_value!r}")
        levels = get_formulation(formulation).levels_for(off_value)
        if on_value is None:
            on_value = levels[1]
        if (float(off_value), float(on_value)) != levels:
            raise ValueError(f"layer {self.name!r}: the {formulation} formulation writes the levels {levels} for "
                             f"off_value {off_value}, got on_value {on_value!r}")
        if level_gain is not None and (formulation != "saturate" or not level_gain > 0):
            raise ValueError(f"level_gain must be None or > 0 (saturate formulation only), got {level_gain!r}")
        th = np.atleast_1d(np.asarray(thresholds, dtype=np.float32))
        pol = np.atleast_1d(np.asarray(polarity, dtype=np.int64))
        g = np.atleast_1d(np.asarray(gain, dtype=np.float64))
        if th.ndim != 1 or pol.ndim != 1 or g.ndim != 1:
            raise ValueError("thresholds, polarity and gain must be scalars or 1-D per-channel lists")
        if not np.all(np.isfinite(th)):
            raise ValueError(f"layer {self.name!r}: thresholds must be finite")
        if not np.all(np.isin(pol, (-1, 0, 1))):
            raise ValueError(f"layer {self.name!r}: polarity values must be -1, 0 or +1")
        if not np.all(np.isfinite(g) & (g > 0)):
            raise ValueError(f"layer {self.name!r}: gain must be finite and > 0")
        if g.size > 1 and formulation != "saturate":
            raise ValueError(f"layer {self.name!r}: a per-channel gain needs the saturate formulation")
        sizes = {th.size, pol.size, g.size} - {1}
        if len(sizes) > 1:
            raise ValueError(
                f"layer {self.name!r}: {th.size} thresholds, {pol.size} polarities and {g.size} gains")
        n = max(th.size, pol.size, g.size)
        self._th = np.broadcast_to(th, (n,)).copy()
        self._pol = np.broadcast_to(pol, (n,)).copy()
        self._gain = np.broadcast_to(g, (n,)).copy()
        const = self._pol == 0
        if np.any(const & ~np.isin(self._th, (0.0, 1.0))):
            raise ValueError(
                f"layer {self.name!r}: constant channels (polarity 0) need threshold 1.0 "
                "(always fires) or 0.0 (never fires)")
        self.off_value = float(off_value)
        self.on_value = float(on_value)
        self.formulation = formulation
        self.level_gain = None if level_gain is None else float(level_gain)
        self.surrogate = surrogate

    # -- per-channel views -------------------------------------------------
    @property
    def thresholds(self):
        return self._th.copy()

    @property
    def polarity(self):
        return self._pol.copy()

    @property
    def gains(self):
        """Per-channel gain ``G_c`` (float64)."""
        return self._gain.copy()

    @property
    def gain(self):
        """The gain as a float when all channels share it, else the per-channel array."""
        return float(self._gain[0]) if np.all(self._gain == self._gain[0]) else self._gain.copy()

    @property
    def levels(self):
        """``(off_value, on_value)``: the two output values."""
        return (self.off_value, self.on_value)

    @property
    def affine_in_producer(self):
        """True when the neuron is only the clamp: gain, threshold and
        polarity live in the producing layer (saturate formulation)."""
        return bool(np.all(self._th == 0.0) and np.all(self._pol == 1) and np.all(self._gain == 1.0))

    def build(self, input_shape):
        channels = input_shape[-1]
        if self._th.size not in (1, channels):
            raise ValueError(
                f"layer {self.name!r} has {self._th.size} thresholds for {channels} channels")
        if self._th.size == 1 and channels not in (None, 1):
            self._th = np.repeat(self._th, channels)
            self._pol = np.repeat(self._pol, channels)
            self._gain = np.repeat(self._gain, channels)
        super().build(input_shape)

    def _spike_bool(self, u):
        import tensorflow as tf

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

    @staticmethod
    def _as_4d(u):
        """``u`` as ``[N, positions, 1, C]`` (a RESHAPE in TFLite) and the
        function that restores its shape; 4-D inputs pass unchanged."""
        import tensorflow as tf

        if len(u.shape) == 4:
            return u, lambda t: t
        shape = tf.shape(u)
        positions = int(np.prod([int(d) for d in u.shape[1:-1]])) if len(u.shape) > 2 else 1
        return tf.reshape(u, [-1, positions, 1, int(u.shape[-1])]), lambda t: tf.reshape(t, shape)

    @staticmethod
    def _depthwise(x, scale, shift=None):
        """``x * scale + shift`` per channel of a 4-D ``x`` as one 1x1
        depthwise convolution with a bias: TFLite keeps it as a single
        DEPTHWISE_CONV_2D and fuses the clamp that follows into it."""
        import tensorflow as tf

        kernel = tf.constant(np.asarray(scale, np.float32).reshape(1, 1, -1, 1), x.dtype)
        z = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")
        if shift is not None:
            z = tf.nn.bias_add(z, tf.constant(np.asarray(shift, np.float32), x.dtype))
        return z

    def _clamp(self, z, low, high):
        import tensorflow as tf

        if (low, high) == (0.0, 6.0):   # the RELU6 levels: written as relu6, which TFLite fuses
            return tf.nn.relu6(z)
        return tf.clip_by_value(z, low, high)

    def depthwise_stage(self):
        """``(kernel, bias)`` of the neuron's per-channel affine
        ``z = G p (u - theta)`` (``+-G`` for a constant channel) as the
        float32 1x1 depthwise kernel ``[1, 1, C, 1]`` and bias ``[C]`` the
        converter quantizes (``saturate``: ``G`` per channel; ``ramp``: one
        gain), or ``None`` when the affine lives in the producer."""
        th, pol = self._th, self._pol
        fires = np.where(th == 1.0, 1.0, -1.0)
        if self.formulation == "saturate":
            if self.affine_in_producer:
                return None
            g = self._gain
            # constant channels: kernel 0, bias +-G (G >= the level range, so the clamp saturates)
            scale, shift = g * pol, np.where(pol == 0, g * fires, -g * pol * th)
        elif self.formulation == "ramp":
            if np.all(pol == 1) and np.all(th == 0.0):
                return None
            gain = float(self._gain[0])
            scale, shift = gain * pol, gain * np.where(pol == 0, fires, -pol * th)
        else:
            raise ValueError(f"the {self.formulation} formulation has no depthwise stage")
        return (np.asarray(scale, np.float32).reshape(1, 1, -1, 1), np.asarray(shift, np.float32))

    def _saturate(self, u):
        import tensorflow as tf

        th = self._th
        if self.affine_in_producer:
            if self.level_gain is None:
                return self._clamp(u, self.off_value, self.on_value)
            # The sign stage's clamp goes right after the producer (fused
            # into it), before any reshape to 4-D.
            z, restore = self._as_4d(tf.clip_by_value(u, -1.0, 1.0))
        else:
            x, restore = self._as_4d(u)
            kernel, bias = self.depthwise_stage()
            z = self._depthwise(x, kernel, bias)
            if self.level_gain is not None:
                z = tf.clip_by_value(z, -1.0, 1.0)
        if self.level_gain is not None:
            z = self._depthwise(z, np.full(th.size, self.level_gain))
        return restore(self._clamp(z, self.off_value, self.on_value))

    def _ramp(self, u):
        import tensorflow as tf

        stage = self.depthwise_stage()
        gain = float(self._gain[0])
        if stage is None:
            # The threshold already sits in the producer's bias: z = u.
            z = u * tf.constant(gain, u.dtype) if gain != 1.0 else u
        else:
            # z = gain * p_c * (u_c - theta_c); gain * (+-1) for constant
            # channels. One per-channel affine; on 4-D inputs it is written
            # as a 1x1 depthwise convolution with a bias so TFLite keeps it
            # as a single DEPTHWISE_CONV_2D whose int16 output is z itself.
            kernel, shift = stage
            if len(u.shape) == 4:
                z = self._depthwise(u, kernel, shift)
            else:
                z = u * tf.constant(kernel.reshape(-1), u.dtype) + tf.constant(shift, u.dtype)
        s = tf.minimum(tf.nn.relu(z), tf.constant(1.0, u.dtype))
        if self.off_value != 0.0:
            s = s * 2.0 - 1.0
        return s

    def call(self, inputs):
        import tensorflow as tf

        u = inputs if inputs.dtype.is_floating else tf.cast(inputs, tf.float32)
        if self.formulation == "ramp":
            return self._ramp(u)
        if self.formulation == "saturate":
            return self._saturate(u)
        fire = self._spike_bool(u)
        return tf.where(fire, tf.constant(1.0, u.dtype), tf.constant(self.off_value, u.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        gain = self.gain
        config.update({
            "thresholds": [float(v) for v in self._th],
            "polarity": [int(v) for v in self._pol],
            "off_value": self.off_value,
            "on_value": self.on_value,
            "formulation": self.formulation,
            "gain": [float(v) for v in gain] if isinstance(gain, np.ndarray) else gain,
            "level_gain": self.level_gain,
            "surrogate": self.surrogate,
        })
        return config
