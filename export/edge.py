"""The edge-native spiking neuron: a step function made of a fused clamp.

Edge NPUs and delegates (Ethos-U55, CMSIS-NN, XNNPACK) have no comparison
or select ops, but every one of them runs a convolution with a fused
``RELU6`` / ``RELU_N1_TO_1`` clamp. :func:`edge_model` rewrites a folded
model (:func:`export.fold_batchnorm`, neurons as ``compare``
:class:`~export.neurons.ThresholdNeuron`) so that each neuron is such a
clamp, with parameters chosen per target format so the *quantized* model
computes the exact step. Notation: the reference neuron fires iff
``u' >= 0`` with ``u'_c = p_c (u_c - theta_c)`` (``p`` the polarity; a
constant channel is ``u' = +-1``).

Neuron kinds
------------
* **conv** -- the neuron's input is a Conv/Dense used only by it (after
  folding: ``conv1 -> BN -> neuron`` in every block). Polarity, threshold
  and a per-channel gain ``G_c`` go into that layer: kernel
  ``G_c p_c W_c``, bias ``G_c p_c (b_c - theta_c)``; the neuron is only the
  clamp, fused into the conv.
* **tensor** -- the neuron's input is shared (the residual sum, the stem
  output): the neuron is one 1x1 ``DEPTHWISE_CONV_2D`` (weight ``G_c p_c``,
  bias ``-G_c p_c theta_c``) with the clamp fused.

Spike levels are ``{0, 6}`` (RELU6) for {0, 1} neurons -- every layer that
reads the spikes (a Conv/Dense, possibly behind pooling/dropout/reshape)
gets its kernel divided by 6, which is exact in int8 (same integer weights,
scale / 6) -- and ``{-1, +1}`` (RELU_N1_TO_1) for ``ste_b``.

Per format (derivations and overflow bounds in docs/EXPORT.md)
--------------------------------------------------------------
* ``float32``: ``G`` so large that the clamp's ramp, ``0 < u' < 6 / G``,
  lies below the float32 resolution of ``u'`` (``G_c = 6 * 2^40 / scale_c``
  with ``scale_c`` the channel's largest possible ``|u'|`` for spike inputs,
  ``max(|theta_c|, 2^-10)`` for a depthwise neuron): only ``u' = 0``
  exactly, a float tie, lands in it, and it gives the off level.
* ``int8``: a {0, 6} spike tensor quantizes to scale 6/255, zero point
  -128, so a conv reading spikes accumulates ``acc = 255 K + b_q`` (``K``
  the sum of the int8 weights of the firing inputs). The bias is placed
  half a lattice step off, ``b_q = 255 floor(b/D) + 127`` (``D`` the
  channel's int8 weight step), so ``|acc| >= 127`` and the decision is the
  exact decision of the int8-weight model; the requantization multiplier
  ``M = 3`` then saturates both sides. A conv reading non-spike integers
  (an image) places ``b_q = floor(beta) + 1`` (fires iff ``acc >= 1``) with
  ``M = 255.5`` (< 256, XNNPACK's limit). The depthwise neuron puts
  ``theta`` 63/127 of a step of its input's int8 grid above the last grid
  point that does not fire (``|acc| >= 63``, ``M = 8``).
* ``int16x8``: symmetric int16 activations; each neuron is two stages:
  a *sign* stage (the conv or depthwise, clamp ``RELU_N1_TO_1``, small ``M``
  so the int32 result cannot overflow, ``|q| >= 3`` on both sides of the
  decision) and a *level* stage (a 1x1 depthwise with gain, ``M = 100``,
  clamp to the levels). One stage would overflow the int16 kernels' int32
  rescaling (``M`` of ~500 on accumulators up to 2^22).

Example::

    from export.edge import edge_model
    plan = edge_model(folded, "int8", representative_data)
    plan.model            # keras.Model to convert (levels {0, 6})
    plan.neurons["stage1_block1_act2"].kind       # "conv"
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import keras
import numpy as np

from export.formats import QUANTIZATIONS
from export.neurons import ThresholdNeuron
from s2nn_keras.graph import LayerGraph, TensorRef
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["EdgeError", "EdgeNeuron", "EdgePlan", "GridQuantize", "edge_model", "quantization_params", "fake_quantize_kernel",
           "INT8_SPIKE_CONV_MULTIPLIER", "INT8_INTEGER_CONV_MULTIPLIER", "INT8_DEPTHWISE_MULTIPLIER",
           "INT16_LEVEL_MULTIPLIER", "INT16_SIGN_MULTIPLIER", "INT16_SPIKE_CONV_MULTIPLIER"]

# Requantization multipliers M = s_in * s_w / s_out the gains are chosen for.
INT8_SPIKE_CONV_MULTIPLIER = 3.0      # |acc| >= 127 -> |M acc| >= 381 > 255
INT8_INTEGER_CONV_MULTIPLIER = 255.5  # |acc| >= 1 -> >= 255.5; XNNPACK needs M < 256
INT8_DEPTHWISE_MULTIPLIER = 8.0       # |acc| >= 63 -> >= 504
INT16_SPIKE_CONV_MULTIPLIER = 4.0 / 16383.0  # sign stage, |acc| >= 16383 -> |q| >= 4
INT16_SIGN_MULTIPLIER = 3.0           # sign stage on any other integer: |acc| >= 1 -> |q| >= 3
INT16_LEVEL_MULTIPLIER = 100.0        # level stage: 127 * 3 * 100 = 38100 >= 32767; shift 7
FLOAT_RAMP_BITS = 40                  # float32: ramp width = scale * 2^-40 (below float32 resolution)
INT32_MAX = 2 ** 31 - 1

_PRODUCERS = ("Conv1D", "Conv2D", "Conv3D", "Dense")
_ABSORBERS = _PRODUCERS + ("DepthwiseConv1D", "DepthwiseConv2D")
# Linear layers the spikes may pass on their way to a consumer's kernel.
_LINEAR_PASS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "AveragePooling1D",
                "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                "GlobalAveragePooling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D",
                "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Flatten", "Reshape", "ZeroPadding1D",
                "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Identity")
# Layers that keep a spike tensor two-level (on the way back from a conv to a neuron).
_LEVEL_PASS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "MaxPooling1D",
               "MaxPooling2D", "MaxPooling3D", "Flatten", "Reshape", "Cropping1D", "Cropping2D", "Cropping3D",
               "Identity")


def grid_range(scale: float, zero_point: int) -> Tuple[float, float]:
    """``[(-128 - z) s, (127 - z) s]``: the range of an int8 grid as the
    float32 values a fake-quant op takes (TFLite reads the grid back as
    ``s = (max - min) / 255``, ``z = -128 - min / s``)."""
    return float(np.float32((-128 - int(zero_point)) * float(scale))), float(np.float32((127 - int(zero_point)) * float(scale)))


@keras.saving.register_keras_serializable(package="s2nn_export")
class GridQuantize(keras.layers.Layer):
    """Rounds to a fixed int8 grid: ``x -> (clip(round(x / s) + z, -128, 127) - z) * s``
    (``tf.quantization.fake_quant_with_min_max_args`` with the range
    ``[(-128 - z) s, (127 - z) s]``). The TFLite converter takes this range
    as the tensor's quantization instead of calibrating it, which is how the
    int8 export knows the exact grid a depthwise neuron compares on."""

    def __init__(self, scale, zero_point, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.zero_point = int(zero_point)

    def call(self, x):
        import tensorflow as tf

        lo, hi = grid_range(self.scale, self.zero_point)
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, zero_point=self.zero_point)
        return config


class EdgeError(ValueError):
    """A model the saturate neuron cannot express exactly (the message names
    the layer; ``neuron="compare"`` exports it with comparison ops)."""


@dataclasses.dataclass
class EdgeNeuron:
    """How one neuron is written.

    Attributes:
      name: the neuron layer.
      kind: ``"conv"`` (in its producer) or ``"tensor"`` (own depthwise op).
      producer: the Conv/Dense it lives in (``conv``), else ``None``.
      levels: ``(off, on)`` real spike values, ``(0, 6)`` or ``(-1, 1)``.
      input_kind: what the integer op accumulates: ``"spikes01"`` / ``"spikes_pm"``
        (a lattice of spike sums), ``"integer"`` (any integer, e.g. an
        image), ``"tensor"`` (the depthwise neuron's input grid),
        ``"float"`` (float32).
      input_scale, input_zero_point: quantization assumed for the integer
        op's input (``None`` where it follows from the spike levels).
      multiplier: the requantization multiplier of the (first) stage.
      level_multiplier: int16x8 level stage's multiplier (else ``None``).
      min_abs_accumulator: smallest ``|acc|`` the placement leaves.
      max_abs_accumulator: largest ``|acc|`` possible for any input.
      constant_channels: channels whose decision does not depend on the input.
      step: per channel, one quantization step of ``u'`` (the int8 weight
        step ``max|W_c| / 127`` for ``conv``, the input grid step for
        ``tensor``; ``None`` for float32), in the units of the folded model's
        neuron input.
    """

    name: str
    kind: str
    producer: Optional[str]
    levels: Tuple[float, float]
    input_kind: str
    input_scale: Optional[float] = None
    input_zero_point: Optional[int] = None
    multiplier: Optional[float] = None
    level_multiplier: Optional[float] = None
    min_abs_accumulator: Optional[float] = None
    max_abs_accumulator: Optional[float] = None
    constant_channels: int = 0
    step: Optional[np.ndarray] = None

    def summary(self) -> Dict:
        """JSON-friendly dict (``step`` as its largest value)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "step"}
        out["levels"] = list(self.levels)
        out["max_step"] = None if self.step is None else float(np.max(self.step))
        return out


@dataclasses.dataclass
class EdgePlan:
    """Result of :func:`edge_model`: the Keras model to convert and, per
    neuron, how it is written (:class:`EdgeNeuron`)."""

    model: keras.Model
    quantization: str
    neurons: Dict[str, EdgeNeuron]
    consumers_scaled: List[str]
    assumed_inputs: Dict[str, Tuple[float, int]]
    unsettled: bool = False
    bias_input_scales: Dict[str, float] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------
# Quantization that calibration gives a tensor (TFLite's rules).
# --------------------------------------------------------------------------


def quantization_params(lo: float, hi: float, quantization: str) -> Tuple[float, int]:
    """``(scale, zero_point)`` the TFLite converter gives an activation with
    calibrated range ``[lo, hi]``: int8 asymmetric over ``[min(lo,0),
    max(hi,0)]`` in 255 steps with the zero point rounded to an integer;
    int16 symmetric, ``max(|lo|, |hi|) / 32767``, zero point 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if quantization == "int16x8":
        scale = max(-lo, hi) / 32767.0
        return (scale if scale > 0 else 1.0 / 32767.0), 0
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return 1.0 / 255.0, -128
    zp = int(np.clip(np.round(-128.0 - lo / scale), -128, 127))
    return scale, zp


def _grid(quantization, zero_point):
    """``[lo, hi]`` of ``q - zero_point`` for the activation type."""
    if quantization == "int16x8":
        return -32768 - zero_point, 32767 - zero_point
    return -128 - zero_point, 127 - zero_point


# --------------------------------------------------------------------------
# Graph analysis.
# --------------------------------------------------------------------------


def _class(node):
    return node.class_name


def _linear_activation(layer):
    act = getattr(layer, "activation", None)
    return act is None or getattr(act, "__name__", "linear") == "linear"


def _pool_is_subsample(layer):
    size = getattr(layer, "pool_size", None)
    return size is not None and all(int(s) == 1 for s in np.atleast_1d(size))


def _levels_of(layer):
    return (0.0, 6.0) if float(layer.off_value) == 0.0 else (-1.0, 1.0)


def _analyse(graph: LayerGraph):
    """Neuron nodes, their kinds (before format-specific fallbacks), the
    layers whose kernels absorb the 1/6 of {0, 6} spikes, and each
    producer's input kind."""
    neurons = [n for n in graph.nodes if not n.is_input and is_spiking_neuron(n.layer)]
    for n in neurons:
        if not isinstance(n.layer, ThresholdNeuron):
            raise EdgeError(f"layer {n.name!r} ({n.class_name}) is not folded; call export.fold_batchnorm first")
        if n.call != 0 or len(graph.calls(n.name)) > 1:
            raise EdgeError(f"neuron {n.name!r} is called more than once; the edge export needs one call per layer")
    candidates = {}
    for n in neurons:
        src = graph.producer(n.inputs[0])
        if (not src.is_input and _class(src) in _PRODUCERS and _linear_activation(src.layer)
                and graph.fanout(src) == 1 and len(graph.calls(src.name)) == 1):
            candidates[n.name] = src.name
    # Consumers of {0, 6} spikes: the kernels that carry the 1/6. A
    # prescribed grid on the way (GridQuantize, e.g. after the pooling of a
    # quantization-aware model) is scaled by 6 with the values it rounds.
    absorb: Dict[str, List[str]] = {}
    rescaled: Dict[str, float] = {}
    for n in neurons:
        if _levels_of(n.layer) != (0.0, 6.0):
            continue
        stack = list(graph.consumers(n))
        if graph.output_uses(n):
            raise EdgeError(f"neuron {n.name!r} is a model output; its {{0, 6}} spikes have no consumer to "
                            "rescale (use neuron='compare')")
        while stack:
            c = stack.pop()
            if _class(c) in _ABSORBERS:
                absorb.setdefault(c.name, []).append(n.name)
            elif (_class(c) in _LINEAR_PASS or _class(c) == "GridQuantize") and len(c.inputs) == 1:
                if _class(c) == "GridQuantize":
                    rescaled[c.name] = 6.0
                if graph.output_uses(c):
                    raise EdgeError(f"the spikes of {n.name!r} reach the model output through {c.name!r}; "
                                    "no kernel can absorb the {0, 6} levels (use neuron='compare')")
                stack.extend(graph.consumers(c))
            else:
                raise EdgeError(f"the spikes of {n.name!r} reach {c.name!r} ({c.class_name}), which cannot absorb "
                                "the factor 1/6 of the {0, 6} spike levels into a kernel (use neuron='compare')")
    for name in absorb:
        if len(graph.calls(name)) > 1:
            raise EdgeError(f"layer {name!r} reads spikes and is called more than once")
    # What each candidate producer reads.
    input_kind = {}
    for n_name, p_name in candidates.items():
        node = graph.calls(p_name)[0]
        t = graph.producer(node.inputs[0])
        kind = "integer"
        while not t.is_input:
            if is_spiking_neuron(t.layer):
                kind = "spikes01" if _levels_of(t.layer) == (0.0, 6.0) else "spikes_pm"
                break
            cls = _class(t)
            if cls in _LEVEL_PASS or (cls.startswith("AveragePooling") and _pool_is_subsample(t.layer)) or (
                    cls.startswith("ZeroPadding")):
                t = graph.producer(t.inputs[0])
                continue
            break
        input_kind[n_name] = kind
    # Zero padding keeps {0, 6} spikes two-level (0 is the off level) but not +-1 ones.
    for n_name, kind in list(input_kind.items()):
        if kind == "spikes_pm":
            node = graph.calls(candidates[n_name])[0]
            t = graph.producer(node.inputs[0])
            while not is_spiking_neuron(t.layer):
                if _class(t).startswith("ZeroPadding"):
                    input_kind[n_name] = "integer"
                    break
                t = graph.producer(t.inputs[0])
    return neurons, candidates, absorb, input_kind, rescaled


# --------------------------------------------------------------------------
# Calibration ranges.
# --------------------------------------------------------------------------


def _iter_inputs(representative_data):
    for batch in representative_data():
        batch = batch[0] if isinstance(batch, (list, tuple)) else batch
        yield np.asarray(batch, dtype=np.float32)


def _ranges(model, graph, refs: List[TensorRef], representative_data):
    """Min/max of each tensor over the representative data."""
    if not refs:
        return {}
    replay = graph.replay()
    probe = keras.Model(replay.inputs[0] if len(replay.inputs) == 1 else replay.inputs,
                        [replay.tensor(r) for r in refs])
    lo = {r: np.inf for r in refs}
    hi = {r: -np.inf for r in refs}
    for x in _iter_inputs(representative_data):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for r, v in zip(refs, outs):
            v = np.asarray(v)
            lo[r] = min(lo[r], float(v.min()))
            hi[r] = max(hi[r], float(v.max()))
    return {r: (lo[r], hi[r]) for r in refs}


# --------------------------------------------------------------------------
# Per-channel parameters.
# --------------------------------------------------------------------------


def _producer_reference(layer, neuron):
    """Kernel ``W'`` (out channel last) and bias ``b'`` of ``u' = p (W x + b - theta)``
    in float64; constant channels get a zero kernel and bias +-1."""
    weights = layer.get_weights()
    kernel = np.asarray(weights[0], np.float64)
    bias = np.asarray(weights[1], np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
    pol, th = neuron.polarity.astype(np.float64), neuron.thresholds.astype(np.float64)
    k = kernel * pol
    b = pol * (bias - th)
    const = pol == 0
    b = np.where(const, np.where(th == 1.0, 1.0, -1.0), b)
    return k, b, const


def _channel_rows(kernel):
    return kernel.reshape(-1, kernel.shape[-1]).T  # [C, taps]


def _int8_weights(kernel):
    """Per-channel symmetric int8 weights as the converter makes them, and the
    max |w| per channel (0 for zero channels)."""
    rows = _channel_rows(kernel)
    m = np.max(np.abs(rows), axis=1)
    safe = np.where(m > 0, m, 1.0)
    q = np.trunc(127.0 * rows / safe[:, None] + np.copysign(0.5, rows))  # round half away from zero
    return q, m


def _unit_tap(kernel, channels):
    """Gives zero-kernel channels one weight 1.0 at the centre tap (their
    decision is constant; a nonzero weight keeps the int8 scales sane)."""
    kernel = kernel.copy()
    centre = tuple(s // 2 for s in kernel.shape[:-2])
    for c in channels:
        kernel[centre + (0, c)] = 1.0
    return kernel


def _constant(always, never, zero, bias):
    """Channels whose decision is the same for every input: those the bias
    decides alone, and the zero-kernel ones (``u' = b``: fire iff ``b >= 0``;
    the unit tap :func:`_unit_tap` gave them must not change that)."""
    z = np.zeros(always.shape, bool)
    z[zero] = True
    return (always & ~z) | (z & (bias >= 0)), (never & ~z) | (z & (bias < 0))


def _check_overflow(name, bound, multiplier, what):
    """The double-rounding requantization of TFLite/TFLM/CMSIS-NN computes
    ``acc * 2^shift`` in int32 first (shift = frexp exponent of M > 1)."""
    shift = max(0, math.frexp(multiplier)[1])
    if bound * 2 ** shift > INT32_MAX:
        raise EdgeError(f"neuron {name!r}: {what} accumulator bound {bound:.3g} x 2^{shift} overflows int32; "
                        "use neuron='compare' for this model")


def _conv_int8_spikes(name, k, b, const):
    """int8 conv reading {0, 6} spikes: lattice placement, gain for M = 3."""
    zero = np.flatnonzero(np.max(np.abs(_channel_rows(k)), axis=1) == 0)
    k = _unit_tap(k, zero)
    q, m = _int8_weights(k)
    P, N = np.sum(np.maximum(q, 0), axis=1), np.sum(np.minimum(q, 0), axis=1)
    step = m / 127.0
    fl = np.floor(b / step)
    always, never = _constant(fl + N >= 0, fl + P < 0, zero, b)
    fl = np.where(always, -N, np.where(never, -P - 1, fl))
    b_new = step * (fl + 127.0 / 255.0)
    M = INT8_SPIKE_CONV_MULTIPLIER
    gain = 762.0 * M / m          # s_w = G m / (6 * 127) = M
    bound = float(np.max(255.0 * np.maximum(P + fl, -(N + fl)) + 128.0))
    _check_overflow(name, bound, M, "int8")
    kernel = k * gain / 6.0       # the 1/6: the input spikes are {0, 6}
    info = dict(multiplier=M, min_abs_accumulator=127.0, max_abs_accumulator=bound,
                constant_channels=int(np.sum(always | never | const)), step=step)
    return kernel, gain * b_new, info


def _conv_integer(name, k, b, const, amplitude, s_in, z_in, quantization, s_out, multiplier):
    """Conv reading arbitrary integers (an image): fires iff acc >= 1."""
    zero = np.flatnonzero(np.max(np.abs(_channel_rows(k)), axis=1) == 0)
    k = _unit_tap(k, zero)
    q, m = _int8_weights(k)
    dlo, dhi = _grid(quantization, z_in)
    kmin = np.sum(np.minimum(q * dlo, q * dhi), axis=1)
    kmax = np.sum(np.maximum(q * dlo, q * dhi), axis=1)
    eps = s_in * amplitude * m / 127.0   # u' per accumulator unit
    bq = np.floor(b / eps) + 1.0
    always, never = _constant(bq + kmin >= 1, bq + kmax <= 0, zero, b)
    bq = np.where(always, 1.0 - kmin, np.where(never, -kmax, bq))
    bound = float(np.max(np.maximum(np.abs(kmin + bq), np.abs(kmax + bq))))
    gain = multiplier * 127.0 * s_out / (s_in * amplitude * m)
    info = dict(multiplier=multiplier, min_abs_accumulator=1.0, max_abs_accumulator=bound,
                constant_channels=int(np.sum(always | never | const)), step=eps,
                input_scale=float(s_in), input_zero_point=int(z_in))
    return k * amplitude * gain, gain * eps * bq, info, bound


def _conv_int16_spikes(name, k, b, const, amplitude, pm):
    """int16 conv reading spikes (q in {0, 32767} or {-32767, 32767}): the
    lattice is 32767 K; bias placed at 16383 (mod 32767); sign stage."""
    zero = np.flatnonzero(np.max(np.abs(_channel_rows(k)), axis=1) == 0)
    k = _unit_tap(k, zero)
    q, m = _int8_weights(k)
    if pm:
        P = np.sum(np.abs(q), axis=1)
        N = -P
    else:
        P, N = np.sum(np.maximum(q, 0), axis=1), np.sum(np.minimum(q, 0), axis=1)
    step = m / 127.0
    fl = np.floor(b / step)
    always, never = _constant(fl + N >= 0, fl + P < 0, zero, b)
    fl = np.where(always, -N, np.where(never, -P - 1, fl))
    b_new = step * (fl + 16383.0 / 32767.0)
    M1 = INT16_SPIKE_CONV_MULTIPLIER
    gain = 127.0 * M1 / m           # M1 = s_in s_w / s_y = G m / 127 (either spike coding)
    bound = float(np.max(32767.0 * np.maximum(P + fl, -(N + fl)) + 16384.0))
    if bound * M1 > INT32_MAX:
        raise EdgeError(f"neuron {name!r}: int16 sign-stage result bound overflows int32")
    info = dict(multiplier=M1, min_abs_accumulator=16383.0, max_abs_accumulator=bound,
                constant_channels=int(np.sum(always | never | const)), step=step)
    return k * amplitude * gain, gain * b_new, info


def _tensor_integer(neuron, s_x, z_x, quantization, multiplier, s_out):
    """Depthwise neuron on an integer grid: theta placed 63/127 of a step
    off the grid, so acc = +-127 (q - z - k) + 63 never comes near 0."""
    th = neuron.thresholds.astype(np.float64)
    pol = neuron.polarity
    lo, hi = _grid(quantization, z_x)
    ratio = th / s_x
    k_pos = np.clip(np.ceil(ratio - 1e-12 * np.abs(ratio)), lo, hi + 1)   # fires iff q - z >= k
    k_neg = np.clip(np.floor(ratio + 1e-12 * np.abs(ratio)), lo - 1, hi)  # fires iff q - z <= k
    always = (pol == 0) & (th == 1.0)
    new_pol = np.where(pol == 0, 1, pol)
    k_pos = np.where(pol == 0, np.where(always, lo, hi + 1), k_pos)
    theta = np.where(new_pol > 0, s_x * (k_pos - 63.0 / 127.0), s_x * (k_neg + 63.0 / 127.0))
    gain = multiplier * 127.0 * s_out / s_x   # M = s_x (G / 127) / s_out
    bound = 127.0 * (hi - lo + 1) + 64.0
    const = int(np.sum(pol == 0) + np.sum((pol > 0) & ((k_pos <= lo) | (k_pos > hi)))
                + np.sum((pol < 0) & ((k_neg < lo) | (k_neg >= hi))))
    info = dict(multiplier=multiplier, min_abs_accumulator=63.0, max_abs_accumulator=bound,
                constant_channels=const, step=np.full(th.size, s_x), input_scale=float(s_x),
                input_zero_point=int(z_x))
    return theta.astype(np.float32), new_pol, np.full(th.size, gain), info


# --------------------------------------------------------------------------
# The rewrite.
# --------------------------------------------------------------------------


def edge_model(folded: keras.Model, quantization: str = "int8",
               representative_data: Optional[Callable[[], Iterable]] = None,
               input_quantization: Optional[Dict[str, Tuple[float, int]]] = None,
               bias_input_scales: Optional[Dict[str, float]] = None) -> EdgePlan:
    """Rewrites a folded model so every neuron is a fused saturating clamp
    that the ``quantization`` format computes exactly (module docstring).

    Args:
      folded: a model from :func:`export.fold_batchnorm` (ThresholdNeuron
        layers, no BatchNormalization).
      quantization: ``"float32"``, ``"int8"`` or ``"int16x8"``.
      representative_data: for the integer formats, the calibration data
        (a callable yielding ``[batch]`` lists, as ``to_tflite`` takes): the
        integer grids of the depthwise neurons' inputs and of image-reading
        convs are those calibration gives.
      input_quantization: ``{neuron name: (scale, zero_point)}`` overriding
        the computed grid of a neuron's integer input (the values read back
        from a converted flatbuffer; see :func:`export.tflite.convert`).
      bias_input_scales: ``{neuron name: scale}``: the input scale the
        converter quantizes that neuron's bias with, where it differs from
        the input's grid (read back by :func:`export.tflite.convert`; the
        converter takes it from its own calibration of the tensor before a
        prescribed grid, which can differ from the grid in the last element).
        The float bias is multiplied by ``scale / grid scale`` so the int32
        bias comes out as placed.

    Returns:
      An :class:`EdgePlan`.

    Raises:
      EdgeError: spikes that reach a layer which cannot absorb the {0, 6}
        levels, an unfolded neuron, or a channel whose accumulator could
        overflow a runtime's int32 rescaling.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    integer = quantization != "float32"
    if integer and representative_data is None:
        raise ValueError(f"{quantization} needs representative_data to place the thresholds on its integer grid")
    overrides = dict(input_quantization or {})
    bias_scales = dict(bias_input_scales or {})
    graph = LayerGraph(folded)
    neurons, candidates, absorb, input_kind, rescaled = _analyse(graph)
    # Grids the model prescribes itself (GridQuantize layers, e.g. of a
    # quantization-aware fine-tuned model, export.qat): taken as they are.
    prescribed = {n.name: (n.layer.scale * rescaled.get(n.name, 1.0), n.layer.zero_point)
                  for n in graph.nodes if not n.is_input and _class(n) == "GridQuantize"}

    # Format-specific choice of kind.
    kinds = {}
    for n in neurons:
        levels = _levels_of(n.layer)
        kind = "conv" if n.name in candidates else "tensor"
        if kind == "conv" and integer:
            ik = input_kind[n.name]
            # +-1 levels need |acc| > 0 on both sides of the decision, which
            # an integer (non-lattice) accumulator cannot give: acc = 0 would
            # land on the middle level. int8 +-1 spike inputs (zero point -1)
            # are not a lattice at the borders either.
            if quantization == "int8" and levels == (-1.0, 1.0):
                kind = "tensor"
            if quantization == "int16x8" and ik == "integer" and levels == (-1.0, 1.0):
                kind = "tensor"
        kinds[n.name] = kind

    # Integer grids the plan depends on: the calibrated quantization of
    # each depthwise neuron's input and of each image-reading conv's input.
    needed: Dict[str, TensorRef] = {}
    for n in neurons:
        if not integer:
            continue
        if kinds[n.name] == "tensor":
            needed[n.name] = n.inputs[0]
        elif input_kind[n.name] == "integer" or (quantization == "int8" and input_kind[n.name] == "spikes_pm"):
            needed[n.name] = graph.calls(candidates[n.name])[0].inputs[0]
    for name, ref in list(needed.items()):
        producer = graph.producer(ref)
        if producer.is_input or producer.name not in prescribed:
            continue
        if quantization == "int8":
            overrides.setdefault(name, prescribed[producer.name])
        else:   # the prescribed grid is dropped (see make): calibrate what it rounded
            while not producer.is_input and producer.name in prescribed:
                ref = producer.inputs[0]
                producer = graph.producer(ref)
            needed[name] = ref

    def build(grids):
        # int8: the grids are prescribed (GridQuantize), not calibrated.
        fixed = {}
        if quantization == "int8":
            for name, ref in needed.items():
                producer = graph.producer(ref)
                if not producer.is_input and producer.name not in prescribed:
                    fixed[ref] = grids[name]
        plans: Dict[str, EdgeNeuron] = {}
        new_weights: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        new_neurons: Dict[str, ThresholdNeuron] = {}
        kernel_scale = {name: 1.0 / 6.0 for name in absorb}
        for n in neurons:
            layer = n.layer
            levels = _levels_of(layer)
            off, on = levels
            s_out8 = (on - off) / 255.0
            base = dict(name=n.name, trainable=False, surrogate=layer.surrogate, off_value=off, on_value=on,
                        formulation="saturate", dtype="float32")
            if kinds[n.name] == "conv":
                p_name = candidates[n.name]
                producer = graph.layer(p_name)
                k, b, const = _producer_reference(producer, layer)
                amplitude = kernel_scale.get(p_name, 1.0)
                ik = input_kind[n.name]
                level_gain = None
                if quantization == "float32":
                    rows = _channel_rows(k)
                    scale = np.sum(np.abs(rows), axis=1) + np.abs(b)
                    scale = np.where(scale > 0, scale, 1.0)
                    gain = (on - off) * 2.0 ** FLOAT_RAMP_BITS / scale
                    kernel, bias = k * amplitude * gain, b * gain
                    info = dict(constant_channels=int(np.sum(const)))
                    ik_used = "float"
                elif quantization == "int8" and ik == "spikes01":
                    kernel, bias, info = _conv_int8_spikes(n.name, k, b, const)
                    ik_used = ik
                elif quantization == "int8":
                    s_in, z_in = grids[n.name]
                    kernel, bias, info, bound = _conv_integer(n.name, k, b, const, amplitude, s_in, z_in, quantization,
                                                              s_out8, INT8_INTEGER_CONV_MULTIPLIER)
                    bias = bias * (bias_scales.get(n.name, s_in) / s_in)
                    _check_overflow(n.name, bound, INT8_INTEGER_CONV_MULTIPLIER, "int8")
                    ik_used = "integer"
                elif ik in ("spikes01", "spikes_pm"):
                    kernel, bias, info = _conv_int16_spikes(n.name, k, b, const, amplitude, ik == "spikes_pm")
                    level_gain = _int16_level_gain(levels)
                    info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
                    ik_used = ik
                else:  # int16x8, integer input, {0, 6} levels
                    s_in, z_in = grids[n.name]
                    kernel, bias, info, bound = _conv_integer(n.name, k, b, const, amplitude, s_in, z_in, quantization,
                                                              1.0 / 32767.0, INT16_SIGN_MULTIPLIER)
                    if bound * INT16_SIGN_MULTIPLIER > INT32_MAX:
                        raise EdgeError(f"neuron {n.name!r}: int16 sign-stage result bound overflows int32")
                    level_gain = _int16_level_gain(levels)
                    info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
                    ik_used = "integer"
                new_weights[p_name] = (kernel.astype(np.float32), bias.astype(np.float32))
                new_neurons[n.name] = ThresholdNeuron(0.0, 1, gain=1.0, level_gain=level_gain, **base)
                plans[n.name] = EdgeNeuron(n.name, "conv", p_name, levels, ik_used, **info)
            else:
                th = layer.thresholds.astype(np.float64)
                pol = layer.polarity
                if quantization == "float32":
                    gain = (on - off) * 2.0 ** FLOAT_RAMP_BITS / np.maximum(np.abs(th), 2.0 ** -10)
                    new_neurons[n.name] = ThresholdNeuron(th, pol, gain=gain, **base)
                    plans[n.name] = EdgeNeuron(n.name, "tensor", None, levels, "float",
                                               constant_channels=int(np.sum(pol == 0)))
                    continue
                s_x, z_x = grids[n.name]
                if quantization == "int8":
                    theta, new_pol, gain, info = _tensor_integer(layer, s_x, z_x, quantization,
                                                                 INT8_DEPTHWISE_MULTIPLIER, s_out8)
                    # bias = -G p theta: scaled with the converter's bias input scale
                    theta = (theta * (bias_scales.get(n.name, s_x) / s_x)).astype(np.float32)
                    _check_overflow(n.name, info["max_abs_accumulator"], INT8_DEPTHWISE_MULTIPLIER, "int8")
                    level_gain = None
                else:
                    theta, new_pol, gain, info = _tensor_integer(layer, s_x, z_x, quantization,
                                                                 INT16_SIGN_MULTIPLIER, 1.0 / 32767.0)
                    level_gain = _int16_level_gain(levels)
                    info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
                new_neurons[n.name] = ThresholdNeuron(theta, new_pol, gain=gain, level_gain=level_gain, **base)
                plans[n.name] = EdgeNeuron(n.name, "tensor", None, levels, "tensor", **info)

        def make(node, args, kwargs):
            if node.name in new_neurons:
                return new_neurons[node.name](*args, **kwargs)
            if node.name in prescribed:
                # int8 only: the 16x8 quantizer rejects fake-quant ops (int16
                # grids are calibrated), and a float32 graph would write them as
                # uint8 QUANTIZE/DEQUANTIZE pairs (not edge ops; TFLM cannot run them).
                if quantization != "int8":
                    return args[0]
                scale, zp = prescribed[node.name]
                return GridQuantize(scale, zp, name=node.name)(*args, **kwargs)
            layer = node.layer
            if node.name in new_weights or node.name in kernel_scale or (integer and _has_kernel(node)):
                config = layer.get_config()
                config["dtype"] = "float32"
                weights = [np.asarray(w) for w in layer.get_weights()]
                if node.name in new_weights:
                    config.update(activation="linear", use_bias=True)
                    weights = list(new_weights[node.name])
                elif node.name in kernel_scale:
                    weights[0] = np.asarray(weights[0], np.float64) * kernel_scale[node.name]
                if integer:
                    weights[0] = fake_quantize_kernel(weights[0], node.class_name)
                new = type(layer).from_config(config)
                out = new(*args, **kwargs)
                new.set_weights([np.asarray(w, np.float32) for w in weights])
                return out
            return _fresh(layer)(*args, **kwargs)

        def call(node, args, kwargs):
            out = make(node, args, kwargs)
            ref = TensorRef(node.name, node.call, 0)
            if ref in fixed:
                scale, zp = fixed[ref]
                out = GridQuantize(scale, zp, name=f"{node.name}_grid")(out)
            return out

        # The source model's name: TFLite tensor names carry it (twice), so a
        # longer one costs file size.
        model = graph.replay(call).model(name=folded.name)
        return EdgePlan(model, quantization, plans, sorted(kernel_scale), dict(grids),
                        bias_input_scales=dict(bias_scales))

    # The converter calibrates the edge model itself: its weights are
    # int8-rounded and its decisions near thresholds differ a little from the
    # folded model's, so the ranges (and grids) are measured on the model
    # being built until they no longer change. A grid only depends on the
    # neurons before it, so this settles in at most one round per grid.
    # (int8 also prescribes each grid with GridQuantize; the converter still
    # quantizes the depthwise neuron's bias with the calibrated range of the
    # tensor before it, so the two must agree.)
    todo = [r for name, r in needed.items() if name not in overrides]
    source, source_graph = folded, graph
    grids = None
    for _ in range(len(todo) + 2):
        ranges = _ranges(source, source_graph, list(dict.fromkeys(todo)), representative_data) if todo else {}
        new_grids = {name: tuple(overrides[name]) if name in overrides else
                     quantization_params(*ranges[ref], quantization) for name, ref in needed.items()}
        if new_grids == grids:
            return plan
        grids = new_grids
        plan = build(grids)
        if not todo:
            return plan
        source, source_graph = plan.model, LayerGraph(plan.model)
    plan.unsettled = True
    return plan


def _has_kernel(node):
    return node.class_name in _ABSORBERS and bool(node.layer.get_weights())


def fake_quantize_kernel(kernel, class_name="Conv2D"):
    """``kernel`` rounded to the per-output-channel symmetric int8 grid the
    TFLite converter uses (scale ``max|w| / 127``, round half away from
    zero). Converting a model with such kernels quantizes them losslessly,
    so the float model and the integer one share their weights."""
    kernel = np.asarray(kernel, np.float64)
    if class_name.startswith("DepthwiseConv"):
        flat = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])   # out channel = in * mult + m
    else:
        flat = kernel.reshape(-1, kernel.shape[-1])
    m = np.max(np.abs(flat), axis=0)
    safe = np.where(m > 0, m, 1.0)
    q = np.trunc(127.0 * flat / safe + np.copysign(0.5, flat))
    return (q * safe / 127.0).reshape(kernel.shape)


def _fresh(layer):
    """A new layer with ``layer``'s config and weights (the edge model shares
    nothing with the folded one)."""
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    new = type(layer).from_config(config)
    weights = layer.get_weights()
    if weights:
        new.build_from_config(layer.get_build_config()) if hasattr(layer, "get_build_config") and \
            layer.get_build_config() else None
        new.set_weights(weights)
    return new


def _int16_level_gain(levels):
    """Gain of the int16 level stage: M2 = s_y (G2 / 127) / s_out with
    s_y = 1/32767 and s_out = (on level) / 32767."""
    on = levels[1]
    return INT16_LEVEL_MULTIPLIER * 127.0 * on
