"""The edge-native spiking neuron: a step function made of a fused clamp.

Edge NPUs and delegates (Ethos-U55, CMSIS-NN, XNNPACK) have no comparison
or select ops, but every one of them runs a convolution with a fused
``RELU6`` / ``RELU_N1_TO_1`` clamp. :func:`edge_model` rewrites a folded
model (:func:`export.fold_batchnorm`, neurons as ``compare``
:class:`~export.transform.neurons.ThresholdNeuron`) so that each neuron is such a
clamp (the ``saturate`` formulation of :mod:`export.transform.formulations`), with
parameters chosen per target format so the *quantized* model computes the
exact step. Notation: the reference neuron fires iff ``u' >= 0`` with
``u'_c = p_c (u_c - theta_c)`` (``p`` the polarity; a constant channel is
``u' = +-1``).

Neuron placements
-----------------
* **conv** -- the neuron's input is a Conv/DepthwiseConv/Dense used only by
  it (``conv -> BN -> neuron``, ``depthwise -> BN -> neuron``,
  ``Dense -> BN -> neuron``). Polarity, threshold and a per-channel gain
  ``G_c`` go into that layer: kernel ``G_c p_c W_c``, bias
  ``G_c p_c (b_c - theta_c)``; the neuron is only the clamp, fused into the
  ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / ``FULLY_CONNECTED``.
* **tensor** -- the neuron's input is shared (a residual sum, the stem
  output, another neuron's spikes), or the conv placement could overflow a
  runtime's int32 rescaling: the neuron is one 1x1 ``DEPTHWISE_CONV_2D``
  (weight ``G_c p_c``, bias ``-G_c p_c theta_c``) with the clamp fused.

Levels and the scale plan
-------------------------
The clamps output ``{0, 6}`` (RELU6) for {0, 1} neurons and ``{-1, +1}``
(RELU_N1_TO_1) for ``ste_b`` (:func:`export.transform.formulations.spike_levels`).
So the edge model computes every tensor ``t`` as a known positive factor
``f_t`` times the folded model's (:func:`scale_plan`): 6 for {0, 1} spikes,
1 for ``ste_b`` spikes, the model inputs and outputs; a layer that is
positively homogeneous (pooling, reshape, padding, a merge such as ``Add``:
:mod:`s2nn_keras.layer_roles`) passes the factor on, and every input of a
merge shares it; a Conv/Depthwise/Dense chooses its output's factor with
its kernel (``W * f_out / f_in``) and bias (``b * f_out``); a neuron's
thresholds scale with its input (``theta * f_in``). Where two different
factors would have to meet without a kernel in between (spikes that reach a
model output or a non-homogeneous layer directly) there is no exact edge
form: :class:`EdgeError` names the neuron and the layer, and
``--neuron compare`` exports the model. An integer ``Concatenate`` puts
every input on its output's grid while a spike tensor keeps the grid of its
levels, so where spikes are joined with other tensors each spike input goes
through a 1x1 depthwise identity (:func:`_requantized_concat_inputs`). In int8 every factor is exact:
a kernel scaled by ``f_out / f_in`` quantizes to the same integers with
its scale multiplied, and a grid scaled by ``f`` rounds the same values.

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

Spike grids come from the levels: the grid of a spike tensor (and of what
a reshape, max pool or padding makes of it) is the one of its two levels,
never a calibrated one (:func:`level_grid`), so a neuron that never fires on
the calibration images exports like any other.

Example::

    from export.transform.edge import edge_model
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

from export.transform.calibration import tensor_ranges
from export.transform.clone import clone_layer
from export.transform.fold import is_kernel, is_transposed
from export.transform.inputs import channel_affine
from export.errors import InputError
from export.formats import QUANTIZATIONS
from export.quant import int8_weights, round_half_away
from export.transform.formulations import reference_levels, spike_levels
from export.transform.layers import GridQuantize, grid_range
from export.transform.neurons import ThresholdNeuron
from s2nn_keras import layer_roles
from s2nn_keras.graph import LayerGraph, TensorRef
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["EdgeError", "EdgeNeuron", "KernelRows", "EdgePlan", "ScalePlan", "GridQuantize", "edge_model", "scale_plan",
           "neuron_kinds", "quantization_params", "level_grid", "fake_quantize_kernel", "grid_range",
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
CLI_FLAG = "--neuron compare"         # what exports what the saturate neuron cannot


class EdgeError(InputError, ValueError):
    """A model the saturate neuron cannot express exactly (the message names
    the layer; ``--neuron compare`` exports it with comparison ops)."""


@dataclasses.dataclass
class EdgeNeuron:
    """How one neuron is written.

    Attributes:
      name: the neuron layer.
      kind: ``"conv"`` (in its producer) or ``"tensor"`` (own depthwise op).
      producer: the Conv/Depthwise/Dense it lives in (``conv``), else ``None``.
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
      input_factor: the scale plan's factor of the neuron's input (its
        thresholds are multiplied by it in the edge model).
      reason: why a neuron that has a producer is a ``tensor`` neuron.
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
    input_factor: float = 1.0
    reason: Optional[str] = None

    def summary(self) -> Dict:
        """JSON-friendly dict (``step`` as its largest value)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "step"}
        out["levels"] = list(self.levels)
        out["max_step"] = None if self.step is None else float(np.max(self.step))
        return out


@dataclasses.dataclass
class EdgePlan:
    """Result of :func:`edge_model`: the Keras model to convert and, per
    neuron, how it is written (:class:`EdgeNeuron`).

    Attributes:
      model: the edge Keras model.
      quantization: its format.
      neurons: ``{neuron name: EdgeNeuron}``.
      consumers_scaled: the kernel layers whose kernel the scale plan
        multiplies (by ``f_out / f_in != 1``).
      assumed_inputs: ``{neuron name: (scale, zero point)}`` of the integer
        inputs the placement assumed (read back by :func:`export.tflite.convert.convert`).
      unsettled: the calibrated grids had not settled.
      bias_input_scales: ``{neuron name: scale}`` the bias was placed for.
      factors: ``{layer name: factor}`` of each layer's output (1 omitted).
    """

    model: keras.Model
    quantization: str
    neurons: Dict[str, EdgeNeuron]
    consumers_scaled: List[str]
    assumed_inputs: Dict[str, Tuple[float, int]]
    unsettled: bool = False
    bias_input_scales: Dict[str, float] = dataclasses.field(default_factory=dict)
    factors: Dict[str, float] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------
# Quantization that calibration gives a tensor (TFLite's rules).
# --------------------------------------------------------------------------


def quantization_params(lo: float, hi: float, quantization: str) -> Tuple[float, int]:
    """``(scale, zero_point)`` the TFLite converter gives an activation with
    calibrated range ``[lo, hi]``: int8 asymmetric over ``[min(lo,0),
    max(hi,0)]`` in 255 steps with the zero point rounded to an integer
    (half away from zero, as the converter's nudging); int16 symmetric,
    ``max(|lo|, |hi|) / 32767``, zero point 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if quantization == "int16x8":
        scale = max(-lo, hi) / 32767.0
        return (scale if scale > 0 else 1.0 / 32767.0), 0
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return 1.0 / 255.0, -128
    zp = int(np.clip(round_half_away(-128.0 - lo / scale), -128, 127))
    return scale, zp


def level_grid(levels: Tuple[float, float], quantization: str) -> Tuple[float, int]:
    """The grid of a tensor whose values are the two spike ``levels``:
    what calibration gives it whenever both levels occur, and what the
    export gives it always (a neuron silent on the calibration data
    included). int8 ``{0, 6}``: ``(6/255, -128)``; int16 ``{0, 6}``:
    ``(6/32767, 0)``."""
    return quantization_params(levels[0], levels[1], quantization)


def _grid(quantization, zero_point):
    """``[lo, hi]`` of ``q - zero_point`` for the activation type."""
    if quantization == "int16x8":
        return -32768 - zero_point, 32767 - zero_point
    return -128 - zero_point, 127 - zero_point


# --------------------------------------------------------------------------
# The scale plan: one positive factor per tensor.
# --------------------------------------------------------------------------


def _edge_levels(neuron) -> Tuple[float, float]:
    return spike_levels("saturate", neuron.off_value)


def _level_factor(neuron) -> float:
    """Edge spike value / trained spike value: 6 for {0, 1}, 1 for +-1."""
    return _edge_levels(neuron)[1] / reference_levels(neuron.off_value)[1]


def _passes_factor(node) -> bool:
    """Whether a positive factor of the input passes to the output."""
    if node.class_name == "GridQuantize":
        return True
    if layer_roles.is_homogeneous(node.class_name, node.layer):
        return True
    layer = node.layer
    if node.class_name == "Activation":
        return getattr(layer.activation, "__name__", "") in ("linear", "relu")
    if node.class_name == "ReLU":
        return layer.max_value is None and float(layer.threshold) == 0.0
    return False


@dataclasses.dataclass
class ScalePlan:
    """The factor ``f_t > 0`` of every tensor of the edge model relative to
    the folded one (module docstring, "Levels and the scale plan").

    Attributes:
      factors: ``{TensorRef: f}``.
      graph: the folded model's :class:`LayerGraph`.
    """

    factors: Dict[TensorRef, float]
    graph: LayerGraph

    def of(self, ref: TensorRef) -> float:
        return self.factors[ref]

    def kernel_scale(self, node) -> float:
        """``f_out / f_in`` of a kernel layer's call."""
        return self.of(node.output()) / self.of(node.inputs[0])

    def bias_scale(self, node) -> float:
        """``f_out`` of a kernel layer's call."""
        return self.of(node.output())

    def threshold_scale(self, node) -> float:
        """``f_in`` of a neuron's call."""
        return self.of(node.inputs[0])


def scale_plan(graph: LayerGraph) -> ScalePlan:
    """Solves for the factor of every tensor (module docstring): union the
    tensors a homogeneous layer joins, fix the factors the levels, inputs,
    outputs and other layers impose, give every free group factor 1.

    Raises:
      EdgeError: two different factors meet in one group (naming the neuron,
        the layers on the way and the CLI flag that exports the model).
    """
    parent: Dict[TensorRef, TensorRef] = {}

    def find(r):
        parent.setdefault(r, r)
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    rigid = []
    for node in graph.nodes:
        find(node.output())
        if node.is_input or is_spiking_neuron(node.layer) or is_kernel(node.class_name):
            continue
        if _passes_factor(node):
            for ref in node.inputs:
                union(node.output(), ref)
        else:
            rigid.append(node)

    fixed: Dict[TensorRef, Tuple[float, str, Optional[str]]] = {}   # root -> (factor, reason, neuron)

    def fix(ref, factor, reason, neuron=None):
        root = find(ref)
        if root in fixed and fixed[root][0] != factor:
            raise EdgeError(_conflict(graph, find, root, fixed[root], (factor, reason, neuron)))
        if root not in fixed or neuron is not None:
            fixed[root] = (factor, reason, neuron)

    for node in graph.nodes:
        if not node.is_input and is_spiking_neuron(node.layer):
            levels = _edge_levels(node.layer)
            fix(node.output(), _level_factor(node.layer), f"levels {{{levels[0]:g}, {levels[1]:g}}}", node.name)
    for ref in graph.input_refs:
        fix(ref, 1.0, f"the model input {ref.layer!r}")
    for ref in graph.output_refs:
        fix(ref, 1.0, "the model output")
    for node in rigid:
        reason = f"{node.name!r} ({node.class_name}), which needs its input as trained"
        for ref in node.inputs:
            fix(ref, 1.0, reason)
        fix(node.output(), 1.0, reason)
    factors = {}
    for ref in list(parent):
        root = find(ref)
        factors[ref] = fixed[root][0] if root in fixed else 1.0
    return ScalePlan(factors, graph)


def _conflict(graph, find, root, a, b):
    """One line: which spikes meet what, through which layers, and the flag."""
    spikes, other = (a, b) if a[2] is not None else (b, a)
    members = [n for n in graph.nodes if not n.is_input and find(n.output()) == root
               and n.name != spikes[2] and n.name != other[2]]
    path = ", ".join(f"{n.name!r} ({n.class_name})" for n in members) or "directly"
    if spikes[2] is None:   # two fixed factors without a neuron cannot differ
        return f"tensors of {path} would need two scales ({a[1]}, {b[1]})"
    what = f"the spikes of neuron {other[2]!r} ({other[1]})" if other[2] is not None else other[1]
    return (f"the spikes of neuron {spikes[2]!r} ({spikes[1]}: {spikes[0]:g} x the trained ones) reach {what} "
            f"through {path} with no Conv/Depthwise/Dense in between to absorb the factor {spikes[0]:g}; "
            f"the saturate neuron cannot write this model exactly: export it with {CLI_FLAG}")


# --------------------------------------------------------------------------
# Where each neuron goes.
# --------------------------------------------------------------------------


def _linear_activation(layer):
    act = getattr(layer, "activation", None)
    return act is None or getattr(act, "__name__", "linear") == "linear"


def _neuron_nodes(graph):
    neurons = [n for n in graph.nodes if not n.is_input and is_spiking_neuron(n.layer)]
    for n in neurons:
        if not isinstance(n.layer, ThresholdNeuron):
            raise EdgeError(f"layer {n.name!r} ({n.class_name}) is not folded; call export.fold_batchnorm first")
        if n.call != 0 or len(graph.calls(n.name)) > 1:
            raise EdgeError(f"neuron {n.name!r} is called more than once; the edge export needs one call per layer")
    return neurons


def _producer(graph, neuron):
    """The Conv/Depthwise/Dense a neuron can live in (its input, used only
    by it, linear, one call), else ``None``."""
    src = graph.producer(neuron.inputs[0])
    if (not src.is_input and layer_roles.is_kernel(src.class_name) and _linear_activation(src.layer)
            and graph.fanout(src) == 1 and len(graph.calls(src.name)) == 1):
        return src
    return None


def _input_kind(graph, producer):
    """What a producer's integer op accumulates: a lattice of {0, 6} or
    +-1 spikes, or any integer."""
    src = layer_roles.spike_source(graph, producer.inputs[0])
    if src is None:
        return "integer"
    return "spikes01" if float(src.layer.off_value) == 0.0 else "spikes_pm"


class KernelRows:
    """A kernel as per-output-channel rows ``[C, taps]`` (a depthwise
    kernel ``[..., in, mult]`` has ``in * mult`` channels, ``c = i mult + m``)."""

    def __init__(self, kernel, depthwise):
        self.shape = np.shape(kernel)
        self.depthwise = depthwise
        channels = self.shape[-2] * self.shape[-1] if depthwise else self.shape[-1]
        self.rows = np.asarray(kernel, np.float64).reshape(-1, channels).T

    def kernel(self, rows):
        return np.asarray(rows).T.reshape(self.shape)

    def centre_tap(self):
        """Index of the centre spatial tap (of input channel 0)."""
        taps = self.shape[:-2] if self.depthwise else self.shape[:-1]
        centre = tuple(s // 2 for s in taps) if self.depthwise else tuple(s // 2 for s in taps[:-1]) + (0,)
        return int(np.ravel_multi_index(centre, taps)) if taps else 0


def _shift(multiplier):
    return max(0, math.frexp(multiplier)[1])


def _conv_overflows(rows, input_kind, quantization):
    """Whether a conv placement could overflow int32 for some input (the
    bounds of :func:`_conv_int8_spikes`, :func:`_conv_integer`,
    :func:`_conv_int16_spikes` without their bias, which can only lower them)."""
    q, _ = int8_weights(rows)
    P, N = np.sum(np.maximum(q, 0), axis=1), np.sum(np.minimum(q, 0), axis=1)
    if quantization == "int8":
        if input_kind == "spikes01":
            return float(np.max(255.0 * (P - N + 1) + 128.0)) * 2 ** _shift(INT8_SPIKE_CONV_MULTIPLIER) > INT32_MAX
        return float(np.max(255.0 * (P - N) + 1.0)) * 2 ** _shift(INT8_INTEGER_CONV_MULTIPLIER) > INT32_MAX
    if input_kind in ("spikes01", "spikes_pm"):
        return float(np.max(32767.0 * (P - N + 1) + 16384.0)) * INT16_SPIKE_CONV_MULTIPLIER > INT32_MAX
    return float(np.max(65535.0 * (P - N) + 1.0)) * INT16_SIGN_MULTIPLIER > INT32_MAX


def _placement(graph, neuron, quantization):
    """``(kind, producer node or None, input kind, reason)`` of one neuron."""
    producer = _producer(graph, neuron)
    if producer is None:
        return "tensor", None, "tensor", None
    ik = _input_kind(graph, producer)
    if quantization == "float32":
        return "conv", producer, ik, None
    pm_levels = float(neuron.layer.off_value) == -1.0
    # +-1 levels need |acc| > 0 on both sides of the decision, which an
    # integer (non-lattice) accumulator cannot give: acc = 0 would land on
    # the middle level. int8 +-1 spike inputs (zero point -1) are not a
    # lattice at the borders either.
    if pm_levels and (quantization == "int8" or ik == "integer"):
        return "tensor", None, "tensor", "+-1 levels need a lattice on both sides of the decision"
    rows = KernelRows(producer.layer.get_weights()[0], layer_roles.is_depthwise(producer.class_name)).rows
    if _conv_overflows(rows, ik, quantization):
        return "tensor", None, "tensor", f"a {quantization} conv neuron on {producer.name!r} could overflow int32"
    return "conv", producer, ik, None


def neuron_kinds(folded: keras.Model, quantization: str) -> Dict[str, Tuple[str, Optional[str]]]:
    """``{neuron name: (kind, producer)}``: how :func:`edge_model` places
    each neuron of a folded model in ``quantization`` (``"conv"`` in its
    producer, ``"tensor"`` as its own op). Depends on the weights only, not
    on calibration; :mod:`export.transform.qat` uses it to round exactly the tensors
    the int8 model stores."""
    graph = LayerGraph(folded)
    out = {}
    for n in _neuron_nodes(graph):
        kind, producer, _, _ = _placement(graph, n, quantization)
        out[n.name] = (kind, producer.name if producer is not None else None)
    return out


# --------------------------------------------------------------------------
# Per-channel parameters.
# --------------------------------------------------------------------------


def _producer_reference(layer, neuron, depthwise):
    """Kernel rows ``W'`` and bias ``b'`` of ``u' = p (W x + b - theta)`` in
    float64; constant channels get a zero kernel and bias +-1."""
    weights = layer.get_weights()
    view = KernelRows(weights[0], depthwise)
    rows = view.rows
    bias = np.asarray(weights[1], np.float64) if layer.use_bias else np.zeros(rows.shape[0])
    pol, th = neuron.polarity.astype(np.float64), neuron.thresholds.astype(np.float64)
    k = rows * pol[:, None]
    b = pol * (bias - th)
    const = pol == 0
    b = np.where(const, np.where(th == 1.0, 1.0, -1.0), b)
    return view, k, b, const


def _unit_tap(rows, channels, tap):
    """Gives zero-kernel channels one weight 1.0 at the centre tap (their
    decision is constant; a nonzero weight keeps the int8 scales sane)."""
    rows = rows.copy()
    for c in channels:
        rows[c, tap] = 1.0
    return rows


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
    shift = _shift(multiplier)
    if bound * 2 ** shift > INT32_MAX:
        raise EdgeError(f"neuron {name!r}: {what} accumulator bound {bound:.3g} x 2^{shift} overflows int32; "
                        f"export this model with {CLI_FLAG}")


def _zero_channels(rows, tap):
    zero = np.flatnonzero(np.max(np.abs(rows), axis=1) == 0)
    return zero, _unit_tap(rows, zero, tap)


def _conv_float(k, b, amplitude, levels):
    """float32: the ramp below float32 resolution of u'."""
    scale = np.sum(np.abs(k), axis=1) + np.abs(b)
    scale = np.where(scale > 0, scale, 1.0)
    gain = (levels[1] - levels[0]) * 2.0 ** FLOAT_RAMP_BITS / scale
    return k * amplitude * gain[:, None], b * gain


def _spike_lattice(k, b, tap, codes, signed=False):
    """The lattice of a conv reading spikes whose two levels are ``codes``
    integer steps apart (int8 {0, 6}: 255; int16: 32767): ``acc = codes K +
    b_q`` with ``K`` the int8-weight sum of the firing inputs (of all inputs,
    signed, for +-1 spikes). Returns the kernel (zero channels given a unit
    tap), the largest ``|w|`` per channel, the weight step ``D``,
    ``floor(b / D)`` moved to the decision no input can change for the
    constant channels, the bias ``D (floor(b / D) + half / codes)`` placed
    half a lattice step off (``half = codes // 2``), the largest ``|acc|``
    and the constant channels."""
    zero, k = _zero_channels(k, tap)
    q, m = int8_weights(k)
    if signed:
        P = np.sum(np.abs(q), axis=1)
        N = -P
    else:
        P, N = np.sum(np.maximum(q, 0), axis=1), np.sum(np.minimum(q, 0), axis=1)
    step = m / 127.0
    fl = np.floor(b / step)
    always, never = _constant(fl + N >= 0, fl + P < 0, zero, b)
    fl = np.where(always, -N, np.where(never, -P - 1, fl))
    half = codes // 2
    b_new = step * (fl + half / codes)
    bound = float(np.max(codes * np.maximum(P + fl, -(N + fl)) + half + 1.0))
    return k, m, step, b_new, bound, always | never


def _conv_int8_spikes(name, k, b, const, tap):
    """int8 conv reading {0, 6} spikes: lattice placement, gain for M = 3."""
    k, m, step, b_new, bound, constant = _spike_lattice(k, b, tap, 255)
    M = INT8_SPIKE_CONV_MULTIPLIER
    on = spike_levels("saturate", 0.0)[1]     # the input spikes are {0, on}: scale on / 255 = the output's
    gain = on * 127.0 * M / m                 # s_w = G m / (on * 127) = M
    _check_overflow(name, bound, M, "int8")
    kernel = k * gain[:, None] / on           # the 1/on of the input's factor
    info = dict(multiplier=M, min_abs_accumulator=127.0, max_abs_accumulator=bound,
                constant_channels=int(np.sum(constant | const)), step=step)
    return kernel, gain * b_new, info


def _conv_integer(name, k, b, const, amplitude, s_in, z_in, quantization, s_out, multiplier, tap):
    """Conv reading arbitrary integers (an image): fires iff acc >= 1."""
    zero, k = _zero_channels(k, tap)
    q, m = int8_weights(k)
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
    return k * amplitude * gain[:, None], gain * eps * bq, info, bound


def _conv_int16_spikes(name, k, b, const, amplitude, pm, tap):
    """int16 conv reading spikes (q in {0, 32767} or {-32767, 32767}): the
    lattice is 32767 K; bias placed at 16383 (mod 32767); sign stage."""
    k, m, step, b_new, bound, constant = _spike_lattice(k, b, tap, 32767, signed=pm)
    M1 = INT16_SPIKE_CONV_MULTIPLIER
    gain = 127.0 * M1 / m           # M1 = s_in s_w / s_y = G m / 127 (either spike coding)
    if bound * M1 > INT32_MAX:
        raise EdgeError(f"neuron {name!r}: int16 sign-stage result bound overflows int32; "
                        f"export this model with {CLI_FLAG}")
    info = dict(multiplier=M1, min_abs_accumulator=16383.0, max_abs_accumulator=bound,
                constant_channels=int(np.sum(constant | const)), step=step)
    return k * amplitude * gain[:, None], gain * b_new, info


def _tensor_integer(thresholds, polarity, s_x, z_x, quantization, multiplier, s_out):
    """Depthwise neuron on an integer grid: theta placed 63/127 of a step
    off the grid, so acc = +-127 (q - z - k) + 63 never comes near 0."""
    th = thresholds.astype(np.float64)
    pol = polarity
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


def _int16_level_gain(levels):
    """Gain of the int16 level stage: M2 = s_y (G2 / 127) / s_out with
    s_y = 1/32767 and s_out = (on level) / 32767."""
    on = levels[1]
    return INT16_LEVEL_MULTIPLIER * 127.0 * on


# --------------------------------------------------------------------------
# Placing one neuron.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Site:
    """A neuron of the folded graph and its placement."""

    node: object
    kind: str
    producer: object
    input_kind: str
    input_factor: float
    reason: Optional[str] = None

    @property
    def name(self):
        return self.node.name


def _place_conv(site, quantization, grid, bias_scale, amplitude):
    """Producer weights ``(kernel, bias)``, the clamp-only neuron's level
    gain and the :class:`EdgeNeuron` of a neuron fused into its producer."""
    name, layer, producer = site.name, site.node.layer, site.producer
    depthwise = layer_roles.is_depthwise(producer.class_name)
    view, k, b, const = _producer_reference(producer.layer, layer, depthwise)
    tap = view.centre_tap()
    levels = _edge_levels(layer)
    ik = site.input_kind
    level_gain = None
    if quantization == "float32":
        kernel, bias = _conv_float(k, b, amplitude, levels)
        info = dict(constant_channels=int(np.sum(const)))
        ik = "float"
    elif quantization == "int8" and ik == "spikes01":
        kernel, bias, info = _conv_int8_spikes(name, k, b, const, tap)
    elif quantization == "int8":
        s_in, z_in = grid
        kernel, bias, info, bound = _conv_integer(name, k, b, const, amplitude, s_in, z_in, quantization,
                                                  (levels[1] - levels[0]) / 255.0, INT8_INTEGER_CONV_MULTIPLIER,
                                                  tap)
        bias = bias * (bias_scale / s_in if bias_scale is not None else 1.0)
        _check_overflow(name, bound, INT8_INTEGER_CONV_MULTIPLIER, "int8")
        ik = "integer"
    elif ik in ("spikes01", "spikes_pm"):
        kernel, bias, info = _conv_int16_spikes(name, k, b, const, amplitude, ik == "spikes_pm", tap)
        level_gain = _int16_level_gain(levels)
        info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
    else:  # int16x8, integer input, {0, 6} levels
        s_in, z_in = grid
        kernel, bias, info, bound = _conv_integer(name, k, b, const, amplitude, s_in, z_in, quantization,
                                                  1.0 / 32767.0, INT16_SIGN_MULTIPLIER, tap)
        if bound * INT16_SIGN_MULTIPLIER > INT32_MAX:
            raise EdgeError(f"neuron {name!r}: int16 sign-stage result bound overflows int32; "
                            f"export this model with {CLI_FLAG}")
        level_gain = _int16_level_gain(levels)
        info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
        ik = "integer"
    plan = EdgeNeuron(name, "conv", producer.name, levels, ik, input_factor=site.input_factor, **info)
    return (view.kernel(kernel).astype(np.float32), bias.astype(np.float32)), level_gain, plan


def _place_tensor(site, quantization, grid, bias_scale):
    """The placed ThresholdNeuron arguments and the :class:`EdgeNeuron` of a
    neuron written as its own 1x1 depthwise op (thresholds in edge units)."""
    layer, f = site.node.layer, site.input_factor
    levels = _edge_levels(layer)
    th = layer.thresholds.astype(np.float64) * f
    pol = layer.polarity
    if quantization == "float32":
        gain = (levels[1] - levels[0]) * 2.0 ** FLOAT_RAMP_BITS / np.maximum(np.abs(th), 2.0 ** -10)
        args = dict(thresholds=th, polarity=pol, gain=gain, level_gain=None)
        return args, EdgeNeuron(site.name, "tensor", None, levels, "float", constant_channels=int(np.sum(pol == 0)),
                                input_factor=f, reason=site.reason)
    s_x, z_x = grid
    if quantization == "int8":
        theta, new_pol, gain, info = _tensor_integer(th, pol, s_x, z_x, quantization, INT8_DEPTHWISE_MULTIPLIER,
                                                     (levels[1] - levels[0]) / 255.0)
        # bias = -G p theta: scaled with the converter's bias input scale
        theta = (theta * ((bias_scale if bias_scale is not None else s_x) / s_x)).astype(np.float32)
        _check_overflow(site.name, info["max_abs_accumulator"], INT8_DEPTHWISE_MULTIPLIER, "int8")
        level_gain = None
    else:
        theta, new_pol, gain, info = _tensor_integer(th, pol, s_x, z_x, quantization, INT16_SIGN_MULTIPLIER,
                                                     1.0 / 32767.0)
        level_gain = _int16_level_gain(levels)
        info["level_multiplier"] = INT16_LEVEL_MULTIPLIER
    info["step"] = info["step"] / f     # in the folded model's units
    args = dict(thresholds=theta, polarity=new_pol, gain=gain, level_gain=level_gain)
    return args, EdgeNeuron(site.name, "tensor", None, levels, "tensor", input_factor=f, reason=site.reason, **info)


# --------------------------------------------------------------------------
# The rewrite.
# --------------------------------------------------------------------------


def _sites(graph, scales, quantization):
    sites = []
    for n in _neuron_nodes(graph):
        kind, producer, ik, reason = _placement(graph, n, quantization)
        sites.append(_Site(n, kind, producer, ik, scales.threshold_scale(n), reason))
    return sites


def _prescribed_grids(graph, scales):
    """Grids a model prescribes itself (GridQuantize layers, e.g. of a
    quantization-aware fine-tuned model, :mod:`export.transform.qat`), in edge units."""
    return {n.name: (n.layer.scale * scales.of(n.output()), n.layer.zero_point)
            for n in graph.nodes if not n.is_input and n.class_name == "GridQuantize"}


def _grid_needs(graph, sites, quantization, prescribed):
    """``({neuron: TensorRef to calibrate}, {neuron: known grid})``: the
    integer grid each placement depends on -- a depthwise neuron's input,
    an integer-reading conv neuron's producer input. A grid that spike
    levels or a prescribed GridQuantize fix is known, not calibrated."""
    if quantization == "float32":
        return {}, {}
    needed, known = {}, {}
    for site in sites:
        if site.kind == "tensor":
            ref = site.node.inputs[0]
        elif site.input_kind == "integer" or (quantization == "int8" and site.input_kind == "spikes_pm"):
            ref = site.producer.inputs[0]
        else:
            continue
        source = layer_roles.spike_source(graph, ref)
        producer = graph.producer(ref)
        if source is not None:
            known[site.name] = level_grid(_edge_levels(source.layer), quantization)
        elif not producer.is_input and producer.name in prescribed and quantization == "int8":
            known[site.name] = prescribed[producer.name]
        else:
            # int16x8 drops prescribed grids (the 16x8 quantizer rejects
            # fake-quant ops): calibrate what they rounded.
            while not producer.is_input and producer.name in prescribed:
                ref = producer.inputs[0]
                producer = graph.producer(ref)
            needed[site.name] = ref
    return needed, known


def _requantized_concat_inputs(graph):
    """``{Concatenate name: {input position}}``: the spike inputs of every
    ``Concatenate`` that does not join spikes of one kind only. An integer
    concatenation puts all its inputs on its output's grid, and a spike
    tensor keeps the grid of its levels: such an input goes through a 1x1
    depthwise identity, which writes the spikes onto the shared grid (two
    codes; 0 exact)."""
    out = {}
    for node in graph.nodes:
        if node.is_input or node.class_name != "Concatenate":
            continue
        sources = [layer_roles.spike_source(graph, ref) for ref in node.inputs]
        levels = {None if s is None else _edge_levels(s.layer) for s in sources}
        if len(levels) > 1:
            out[node.name] = {i for i, s in enumerate(sources) if s is not None}
    return out


def _kernel_layer(node, weights, integer, **overrides):
    """A fresh float32 copy of a kernel layer (config ``overrides``) with
    ``weights`` (kernel rounded to its int8 grid for the integer formats)."""
    weights = list(weights)
    if integer:
        weights[0] = fake_quantize_kernel(weights[0], node.class_name)
    return clone_layer(node.layer, **overrides), [np.asarray(w, np.float32) for w in weights]


def _build_edge_model(graph, scales, sites, quantization, grids, calibrated, prescribed, bias_scales, name):
    """The edge Keras model for ``grids`` and the per-neuron plans.
    ``calibrated``: ``{neuron: TensorRef}`` of the grids measured by
    calibration; int8 prescribes them (GridQuantize) so the converter uses
    exactly the grid the placement assumed."""
    integer = quantization != "float32"
    plans: Dict[str, EdgeNeuron] = {}
    producer_weights: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    neurons: Dict[str, ThresholdNeuron] = {}
    for site in sites:
        layer = site.node.layer
        levels = _edge_levels(layer)
        base = dict(name=site.name, trainable=False, surrogate=layer.surrogate, off_value=levels[0],
                    on_value=levels[1], formulation="saturate", dtype="float32")
        grid = grids.get(site.name)
        if site.kind == "conv":
            amplitude = 1.0 / scales.of(site.producer.inputs[0])
            weights, level_gain, plan = _place_conv(site, quantization, grid, bias_scales.get(site.name), amplitude)
            producer_weights[site.producer.name] = weights
            neurons[site.name] = ThresholdNeuron(0.0, 1, gain=1.0, level_gain=level_gain, **base)
        else:
            args, plan = _place_tensor(site, quantization, grid, bias_scales.get(site.name))
            neurons[site.name] = ThresholdNeuron(args["thresholds"], args["polarity"], gain=args["gain"],
                                                 level_gain=args["level_gain"], **base)
        plans[site.name] = plan
    # The int8 grids a placement assumed are prescribed (GridQuantize), not
    # calibrated, unless the model prescribes them itself.
    fixed = {ref: grids[name] for name, ref in calibrated.items()} if quantization == "int8" else {}
    requantized = _requantized_concat_inputs(graph) if integer else {}
    scaled = []

    def call(node, args, kwargs):
        if node.name in neurons:
            return neurons[node.name](*args, **kwargs)
        if node.name in requantized:
            args = ([channel_affine(t, 1.0, 0.0, f"{node.name}_requantize{i}") if i in requantized[node.name] else t
                     for i, t in enumerate(args[0])],) + tuple(args[1:])
        if node.name in prescribed:
            # int8 only: the 16x8 quantizer rejects fake-quant ops (int16
            # grids are calibrated), and a float32 graph would write them as
            # uint8 QUANTIZE/DEQUANTIZE pairs (not edge ops; TFLM cannot run them).
            if quantization != "int8":
                return args[0]
            scale, zp = prescribed[node.name]
            return GridQuantize(scale, zp, name=node.name)(*args, **kwargs)
        layer = node.layer
        if node.name in producer_weights or (is_kernel(node.class_name) and layer.get_weights()):
            if node.name in producer_weights:
                new, weights = _kernel_layer(node, producer_weights[node.name], integer, activation="linear",
                                             use_bias=True)
            else:
                weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
                k_scale, b_scale = scales.kernel_scale(node), scales.bias_scale(node)
                if k_scale != 1.0 or b_scale != 1.0:
                    scaled.append(node.name)
                weights[0] = weights[0] * k_scale
                if len(weights) > 1:
                    weights[1] = weights[1] * b_scale
                new, weights = _kernel_layer(node, weights, integer)
            out = new(*args, **kwargs)
            new.set_weights(weights)
        else:
            out = clone_layer(layer, copy_weights=True)(*args, **kwargs)   # shares nothing with the folded model
        ref = TensorRef(node.name, node.call, 0)
        if ref in fixed:
            scale, zp = fixed[ref]
            out = GridQuantize(scale, zp, name=f"{node.name}_grid")(out)
        return out

    # The source model's name: TFLite tensor names carry it (twice), so a
    # longer one costs file size.
    model = graph.replay(call).model(name=name)
    factors = {n.name: scales.of(n.output()) for n in graph.nodes if scales.of(n.output()) != 1.0}
    return EdgePlan(model, quantization, plans, sorted(set(scaled)), dict(grids),
                    bias_input_scales=dict(bias_scales), factors=factors)


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
        from a converted flatbuffer; see :func:`export.tflite.convert.convert`).
      bias_input_scales: ``{neuron name: scale}``: the input scale the
        converter quantizes that neuron's bias with, where it differs from
        the input's grid (read back by :func:`export.tflite.convert.convert`; the
        converter takes it from its own calibration of the tensor before a
        prescribed grid, which can differ from the grid in the last element).
        The float bias is multiplied by ``scale / grid scale`` so the int32
        bias comes out as placed.

    Returns:
      An :class:`EdgePlan`.

    Raises:
      EdgeError: spikes that reach a layer which cannot absorb their factor,
        an unfolded neuron, or a channel whose accumulator could overflow a
        runtime's int32 rescaling.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if quantization != "float32" and representative_data is None:
        raise ValueError(f"{quantization} needs representative_data to place the thresholds on its integer grid")
    overrides = dict(input_quantization or {})
    bias_scales = dict(bias_input_scales or {})
    graph = LayerGraph(folded)
    scales = scale_plan(graph)
    sites = _sites(graph, scales, quantization)
    prescribed = _prescribed_grids(graph, scales)
    needed, known = _grid_needs(graph, sites, quantization, prescribed)

    calibrated = {name: ref for name, ref in needed.items()
                  if graph.producer(ref).is_input or graph.producer(ref).name not in prescribed}

    def build(grids):
        return _build_edge_model(graph, scales, sites, quantization, grids, calibrated, prescribed, bias_scales,
                                 folded.name)

    # The converter calibrates the edge model itself: its weights are
    # int8-rounded and its decisions near thresholds differ a little from the
    # folded model's, so the ranges (and grids) are measured on the model
    # being built until they no longer change. A grid only depends on the
    # neurons before it, so this settles in at most one round per grid.
    # (int8 also prescribes each grid with GridQuantize; the converter still
    # quantizes the depthwise neuron's bias with the calibrated range of the
    # tensor before it, so the two must agree.)
    todo = [name for name in needed if name not in overrides]
    source, grids, plan = folded, None, None
    for _ in range(len(todo) + 2):
        ranges = tensor_ranges(source, [needed[n] for n in todo], representative_data) if todo else {}
        new_grids = {**known, **{name: quantization_params(*ranges[needed[name]], quantization)
                                 for name in todo}, **{n: tuple(g) for n, g in overrides.items()}}
        if new_grids == grids:
            return plan
        grids = new_grids
        plan = build(grids)
        if not todo:
            return plan
        source = plan.model
    plan.unsettled = True
    return plan


def fake_quantize_kernel(kernel, class_name="Conv2D"):
    """``kernel`` rounded to the per-output-channel symmetric int8 grid the
    TFLite converter uses (scale ``max|w| / 127``, round half away from
    zero). Converting a model with such kernels quantizes them losslessly,
    so the float model and the integer one share their weights. (A
    transposed conv's output channel is the kernel's axis -2.)"""
    kernel = np.asarray(kernel, np.float64)
    if is_transposed(class_name):
        return np.swapaxes(fake_quantize_kernel(np.swapaxes(kernel, -1, -2)), -1, -2)
    view = KernelRows(kernel, class_name.startswith("DepthwiseConv"))
    q, m = int8_weights(view.rows)
    return view.kernel(q * np.where(m > 0, m, 1.0)[:, None] / 127.0)
