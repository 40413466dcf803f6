"""TFLite conversion of spiking (and ReLU) Keras models: float32, int8, int16x8.

All formats go through the public ``tf.lite.TFLiteConverter`` API with a
batch-1 input signature (what TFLite Micro runs):

* ``"float32"``: no quantization.
* ``"int8"``: full-integer post-training quantization (int8 weights per
  channel, int8 activations per tensor, int8 input/output tensors),
  calibrated on ``representative_data``.
* ``"int16x8"``: 16-bit activations, 8-bit weights
  (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``).

How a neuron is written (``neuron=``, see :mod:`export.formats`):

* ``"saturate"`` (default): :func:`export.transform.edge.edge_model` -- a clamp fused
  into a convolution, with gains and thresholds placed for the format's
  integer grid, so the flatbuffer holds only
  :data:`export.formats.EDGE_OPS` and every spike tensor has exactly two
  levels. After converting, :func:`convert` reads the quantization the
  converter actually gave every grid the placement assumed back from the
  flatbuffer and, if one differs, rebuilds and converts again.
* ``"compare"`` (ablation): float32/int8 ``GREATER_EQUAL``/``LESS_EQUAL``/
  ``SELECT_V2`` with thresholds moved half an int8 step off the grid
  (:func:`int8_threshold_model`); int16x8, whose quantizer has no
  comparison ops, the ``ramp`` neuron (:func:`ramp_model`).

Every model is converted in the forms TFLite Micro runs
(:func:`export.transform.rewrites.runtime_forms`: ``MAX_POOL_2D`` for global max
pooling, ``RESIZE_NEAREST_NEIGHBOR`` for ``UpSampling2D``), with its own input
scaling folded into its first layers (:mod:`export.transform.inputs`); an
integer model's inner requantizations fold into the ops before them and
every ``CONCATENATION`` must find its inputs on its grid
(:func:`export.tflite.spike_grids.fold_requantize`,
:func:`export.tflite.spike_grids.check_concatenations`).

Every spiking model first has the thresholds of neurons that read spikes
settled between the two levels (:func:`settle_spike_thresholds`), and every
integer model the grids of its spike tensors from their levels
(:func:`export.tflite.spike_grids.fix_spike_grids`: a neuron that never fires on
the calibration images exports like any other).

A model with no spiking neuron (the ReLU baseline) is converted as it is,
its BatchNorms left to the converter (it merges conv+BN and writes the
pre-activation BNs as MUL + ADD), with the same converter settings. With ``merge_shortcuts=True`` every model
gets the same inference rewrite first: the builders' strided shortcut
``AveragePooling2D(1, s) -> Conv2D(1x1)`` becomes one strided 1x1 conv
(:func:`merge_strided_shortcuts`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from export.transform.calibration import tensor_ranges
from export.transform.clone import call_clone, clone_layer
from export.formats import DEFAULT_NEURON, DEFAULT_REWRITES, NEURON_FORMULATIONS, QUANTIZATIONS
from export.transform.formulations import get_formulation
from export.transform.inputs import fold_input_scaling, raw_input_grid
from export.transform.neurons import ThresholdNeuron
from s2nn_keras import layer_roles
from s2nn_keras.graph import LayerGraph
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["QUANTIZATIONS", "Conversion", "convert", "to_tflite", "ensure_folded", "is_spiking_model",
           "replace_neurons", "merge_strided_shortcuts", "settle_spike_thresholds", "ramp_model",
           "int8_threshold_model", "spike_tensors", "neuron_ops", "decision_op", "level_codes", "op_names"]

INT16_MAX = 32767.0
MAX_CONVERSIONS = 3


def is_spiking_model(model: keras.Model) -> bool:
    """True if ``model`` has a spiking-neuron layer (``s2nn_keras.layers.is_spiking_neuron``)."""
    return any(is_spiking_neuron(l) for l in model.layers)


def ensure_folded(model: keras.Model, formulation: str = "compare") -> keras.Model:
    """``model`` itself if it holds no BN and no unfolded neuron, else its
    fold (:func:`export.fold_batchnorm`). A model without spiking neurons
    (ReLU) is returned as it is: its BatchNorms are the converter's."""
    from export.transform.fold import fold_batchnorm

    if not is_spiking_model(model):
        return model
    unfolded = any(isinstance(l, keras.layers.BatchNormalization) or
                   (is_spiking_neuron(l) and not isinstance(l, ThresholdNeuron)) for l in model.layers)
    return fold_batchnorm(model, formulation=formulation) if unfolded else model


def merge_strided_shortcuts(model: keras.Model) -> keras.Model:
    """``AveragePooling2D(pool 1, strides s) -> Conv2D(1x1, strides 1)``
    rewritten as one ``Conv2D(1x1, strides s)`` (the same function:
    subsampling then a 1x1 conv). The model builders use the pair only to
    dodge a oneDNN training bug; at inference the 1x1 ``AVERAGE_POOL_2D`` is
    one more op, and one XNNPACK does not delegate (it splits the graph).
    :func:`convert` applies it with ``merge_shortcuts=True`` (to every model,
    spiking or not, so S2NN-vs-ReLU comparisons stay like for like). Off by
    default while the TFLite energy report reads a strided conv's firing
    rate over its whole input (the merged conv reads every other position).
    Returns ``model`` itself when there is nothing to merge."""
    from s2nn_keras.graph import LayerGraph

    graph = LayerGraph(model)
    merged = {}
    for node in graph.nodes:
        if node.is_input or node.class_name != "AveragePooling2D" or len(graph.calls(node.name)) > 1:
            continue
        pool = node.layer
        if tuple(pool.pool_size) != (1, 1) or pool.padding != "valid" or graph.fanout(node) != 1:
            continue
        conv = graph.consumers(node)[0]
        layer = conv.layer
        if (conv.class_name == "Conv2D" and len(graph.calls(conv.name)) == 1 and tuple(layer.kernel_size) == (1, 1)
                and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
                and layer.groups == 1 and pool.data_format == layer.data_format):
            merged[node.name] = conv.name
    if not merged:
        return model
    strides = {c: tuple(graph.layer(p).strides) for p, c in merged.items()}

    def call(node, args, kwargs):
        if node.name in merged:
            return args[0]
        changes = dict(strides=strides[node.name], padding="valid") if node.name in strides else {}
        return call_clone(node.layer, args, kwargs, dtype=None, **changes)

    return graph.replay(call).model(name=model.name)


def replace_neurons(model: keras.Model, make: Callable[[ThresholdNeuron], keras.layers.Layer]) -> keras.Model:
    """Clone of a folded model where each ThresholdNeuron is replaced by
    ``make(layer)``; other layers keep their weights."""

    def clone(layer):
        if isinstance(layer, ThresholdNeuron):
            return make(layer)
        return clone_layer(layer, dtype=None)

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def _neuron_refs(model):
    """The folded neurons of ``model`` and the TensorRef of each one's input."""
    graph = LayerGraph(model)
    nodes = [n for n in graph.nodes if not n.is_input and isinstance(n.layer, ThresholdNeuron)]
    return [n.layer for n in nodes], [n.inputs[0] for n in nodes], graph


def settle_spike_thresholds(model: keras.Model) -> keras.Model:
    """The folded model with the threshold of every neuron that reads
    another neuron's spikes (directly, or through layers that keep values:
    :func:`s2nn_keras.layer_roles.spike_source`) moved to the middle of the
    two levels, or the channel made constant.

    Such a neuron sees only the values ``off`` and 1: with ``p = +1`` it
    fires always if ``theta <= off``, never if ``theta > 1``, else exactly on
    1 -- the same as ``theta = (off + 1) / 2`` (``p = -1`` mirrored). The
    function is unchanged on every input the model can produce, and the
    threshold lies half a level away from both values, where no rounding
    (of a grid, a ramp or a float tie) can reach it; a threshold on a level
    (``theta = 1``, the default ``u_th``) would tie there. Returns ``model``
    itself when no neuron reads spikes."""
    neurons, refs, graph = _neuron_refs(model)
    placed = {}
    for layer, ref in zip(neurons, refs):
        source = layer_roles.spike_source(graph, ref)
        if source is None:
            continue
        off = float(source.layer.off_value)
        th, pol = layer.thresholds.astype(np.float64), layer.polarity.copy()
        mid = (off + 1.0) / 2.0
        pos_always, pos_never = (pol > 0) & (th <= off), (pol > 0) & (th > 1.0)
        neg_never, neg_always = (pol < 0) & (th < off), (pol < 0) & (th >= 1.0)
        new_th = np.where(pol != 0, mid, th)
        new_th = np.where(pos_always | neg_always, 1.0, np.where(pos_never | neg_never, 0.0, new_th))
        new_pol = np.where(pos_always | neg_always | pos_never | neg_never, 0, pol)
        if not (np.array_equal(new_th, th) and np.array_equal(new_pol, pol)):
            placed[layer.name] = (new_th.astype(np.float32), new_pol)
    if not placed:
        return model

    def make(layer):
        changes = {}
        if layer.name in placed:
            th, pol = placed[layer.name]
            changes = dict(thresholds=[float(v) for v in th], polarity=[int(v) for v in pol])
        return clone_layer(layer, ThresholdNeuron, dtype=None, **changes)

    return replace_neurons(model, make)


def ramp_model(model: keras.Model, representative_data: Callable[[], Iterable]) -> keras.Model:
    """The folded model with every neuron in the ``"ramp"`` formulation and
    its gain set to ``32767 / max|z|`` measured on ``representative_data``
    (``z`` = neuron input relative to its threshold; see module docstring)."""
    neurons, refs, _ = _neuron_refs(model)
    if not neurons:
        return model
    ranges = tensor_ranges(model, refs, representative_data, per_channel=True)
    gains = {}
    for layer, ref in zip(neurons, refs):
        lo, hi = ranges[ref]
        th, pol = layer.thresholds.astype(np.float64), layer.polarity
        z = np.where(pol != 0, np.maximum(np.abs(lo - th), np.abs(hi - th)), 1.0)
        zmax = float(np.max(z))
        gains[layer.name] = INT16_MAX / (zmax if zmax > 0 else 1.0)

    def make(layer):
        return clone_layer(layer, ThresholdNeuron, dtype=None, formulation="ramp", gain=gains[layer.name])

    return replace_neurons(model, make)


def int8_threshold_model(model: keras.Model, representative_data: Callable[[], Iterable]) -> keras.Model:
    """The folded model with every nonzero threshold moved to the middle of
    an int8 step of its input ("half-LSB placement").

    Post-training calibration gives a neuron's input ``u`` the grid
    ``u = (q - zp) * s`` with ``s = (max(hi, 0) - min(lo, 0)) / 255`` and
    ``zp = round(-128 - min(lo, 0) / s)`` (lo/hi: calibrated min/max). The
    exact decision on that grid is ``q >= k`` with ``k = ceil(theta / s) + zp``
    (``q <= floor(theta / s) + zp`` for negative polarity). TFLite also
    quantizes the threshold constant itself, with its own scale, and a
    threshold just above a grid point (e.g. 0.001 when ``u`` is exactly 0 on
    every background pixel) rounds onto it and flips every such neuron.
    Replacing ``theta`` by ``(k - zp - 1/2) * s`` (``+ 1/2`` for negative
    polarity) keeps the same integer decision while putting the threshold as
    far from every grid point as possible, so rounding the constant cannot
    cross one. In float the model changes only for inputs within one int8
    step of a threshold. Thresholds that are exactly 0 (moved into a conv
    bias) are already exact and stay.
    """
    neurons, refs, _ = _neuron_refs(model)
    if not neurons:
        return model
    ranges = tensor_ranges(model, refs, representative_data)
    placed = {}
    for layer, ref in zip(neurons, refs):
        rmin, rmax = ranges[ref]
        th, pol = layer.thresholds.astype(np.float64), layer.polarity
        if np.all(th[pol != 0] == 0.0) or not np.isfinite(rmin):
            continue
        rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
        scale = (rmax - rmin) / 255.0
        if scale <= 0:
            continue
        zp = np.clip(np.round(-128.0 - rmin / scale), -128, 127)
        k_pos = np.ceil(th / scale - 1e-9) + zp
        k_neg = np.floor(th / scale + 1e-9) + zp
        new = np.where(pol > 0, (k_pos - zp - 0.5) * scale, np.where(pol < 0, (k_neg - zp + 0.5) * scale, th))
        new = np.where((pol != 0) & (th == 0.0), th, new)
        placed[layer.name] = new.astype(np.float32)
    if not placed:
        return model

    def make(layer):
        changes = {"thresholds": [float(v) for v in placed[layer.name]]} if layer.name in placed else {}
        return clone_layer(layer, ThresholdNeuron, dtype=None, **changes)

    return replace_neurons(model, make)


def _batch1_model(model):
    """``model`` behind batch-1 inputs (TFLite Micro runs static shapes)."""
    inputs = [keras.Input(batch_shape=(1,) + tuple(t.shape[1:]), dtype="float32", name=t.name)
              for t in model.inputs]
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)


def _check_args(quantization, representative_data, neuron):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if neuron not in NEURON_FORMULATIONS:
        raise ValueError(f"neuron must be one of {', '.join(NEURON_FORMULATIONS)}; got {neuron!r}")
    if quantization != "float32" and representative_data is None:
        raise ValueError(f"{quantization} quantization needs representative_data (a callable yielding [input_batch] lists)")
    if representative_data is not None and not callable(representative_data):
        raise ValueError("representative_data must be a callable returning an iterable of [input_batch] lists")


def _convert_keras(model, quantization, representative_data) -> bytes:
    """One ``TFLiteConverter`` run with the export's settings, on the
    runtime forms of ``model``'s layers (:func:`export.transform.rewrites.runtime_forms`)."""
    from export.transform.rewrites import runtime_forms

    converter = tf.lite.TFLiteConverter.from_keras_model(_batch1_model(runtime_forms(model)))
    if quantization != "float32":
        def rep():
            # The batch-1 signature takes one image at a time.
            for batch in representative_data():
                batch = batch if isinstance(batch, (list, tuple)) else [batch]
                arrays = [np.asarray(b, dtype=np.float32) for b in batch]
                for i in range(arrays[0].shape[0]):
                    yield [a[i:i + 1] for a in arrays]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
    with quiet_conversion():
        return converter.convert()


@dataclasses.dataclass
class Conversion:
    """What :func:`convert` made.

    Attributes:
      flatbuffer: the ``.tflite`` bytes.
      quantization: ``"float32"``, ``"int8"`` or ``"int16x8"``.
      neuron: ``"saturate"`` or ``"compare"`` (``None`` for a model without
        spiking neurons).
      model: the Keras model that was converted (the saturate edge model,
        the placed compare model, or the ReLU model itself).
      plan: the :class:`export.transform.edge.EdgePlan` (saturate only), else ``None``.
      spike_tensors: ``{neuron name: tensor index}`` of every spike tensor
        in the flatbuffer's main subgraph.
      conversions: how many converter runs it took (the saturate export
        converts again when a grid it assumed differs from the converter's).
      grids: per neuron with an integer input grid, ``{"assumed": [scale,
        zero point], "actual": [...]}`` read back from the flatbuffer.
      spike_grids: per neuron whose spike tensor calibration gave another
        grid than its levels' (it never fired on the calibration data), what
        :func:`export.tflite.spike_grids.fix_spike_grids` repaired.
    """

    flatbuffer: bytes
    quantization: str
    neuron: Optional[str]
    model: keras.Model
    plan: object = None
    spike_tensors: Dict[str, int] = dataclasses.field(default_factory=dict)
    conversions: int = 1
    grids: Dict[str, Dict] = dataclasses.field(default_factory=dict)
    spike_grids: Dict[str, Dict] = dataclasses.field(default_factory=dict)


def spike_tensors(tflite_model, neuron_names, producers: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """``{neuron name: tensor index}``: the tensor each neuron layer writes
    in the main subgraph -- the output of the last of its operators
    (:func:`neuron_ops`). Raises ``ValueError`` for a neuron it cannot find.
    ``producers``: ``{neuron: layer}`` of neurons fused into a
    Conv/Depthwise/Dense, whose op may be named after the layer only."""
    from export.tflite.flatbuffer import read_model

    graph = read_model(tflite_model).main if not hasattr(tflite_model, "main") else tflite_model.main
    found = {}
    for name in neuron_names:
        ops = neuron_ops(graph, name, (producers or {}).get(name))
        if not ops:
            raise ValueError(f"no tensor of neuron layer {name!r} in the flatbuffer")
        found[name] = ops[-1].outputs[0]
    return found


_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _carries(graph, tensor, name):
    return tensor >= 0 and any(tensor_names_layer(part, name) for part in graph.tensors[tensor].name.split(";"))


def neuron_ops(graph, name, producer: Optional[str] = None):
    """The operators (in execution order) of the main subgraph ``graph``
    (:func:`export.tflite.flatbuffer.read_model`) that compute neuron ``name``:
    those whose output tensor carries the layer's scope in any of its
    ``;``-separated parts (the converter names a fused op after what is
    fused into it: ``.../act_1/Relu6;.../conv_1/BiasAdd``, a
    ``FULLY_CONNECTED``: ``.../dense_1/MatMul;.../act_1/Relu6``) and, for a
    neuron fused into ``producer``, the Conv/Depthwise/Dense whose weights
    carry that layer's scope (the int16x8 sign stage is named after it only)."""
    return [op for op in graph.operators
            if any(_carries(graph, t, name) for t in op.outputs)
            or (producer is not None and op.name in _WEIGHTED_OPS and _carries(graph, op.inputs[1], producer))]


def decision_op(graph, name, producer: Optional[str] = None):
    """The operator that makes neuron ``name``'s decision: its first op
    with weights of its own (those of the producer it is fused into, or of
    its depthwise op), else its first op; ``None`` if it has none. Its
    input 0 is the neuron's input (the producer's input for a fused neuron).
    (A Dense whose output the converter names after the neuron's reshape to
    ``[N, 1, 1, C]`` is the op before a tensor neuron, not its decision.)"""
    ops = neuron_ops(graph, name, producer)
    weighted = [op for op in ops if op.name in _WEIGHTED_OPS and _carries(graph, op.inputs[1], producer or name)]
    return (weighted or ops or [None])[0]


def _producers(plan) -> Dict[str, str]:
    return {} if plan is None else {n: p.producer for n, p in plan.neurons.items() if p.producer is not None}


def _read_grids(flatbuffer, plan) -> Dict[str, Dict]:
    """The quantization the converter gave each integer input the plan
    assumed (the data input of the neuron's first op), the input scale the
    converter quantized that op's int32/int64 bias with (``bias scale / s_w``)
    and whether it is the one the plan assumed (the input's scale unless
    ``plan.bias_input_scales`` says otherwise)."""
    from export.tflite.flatbuffer import read_model

    graph = read_model(flatbuffer).main
    out = {}
    for name, assumed in plan.assumed_inputs.items():
        op = decision_op(graph, name, _producers(plan).get(name))
        if op is None:
            raise RuntimeError(f"saturate export: no operator of neuron {name!r} in the flatbuffer")
        q = graph.tensors[op.inputs[0]].quantization
        actual = (float(q.scales[0]), int(q.zero_points[0])) if q is not None else None
        grid_ok = actual is not None and actual[1] == assumed[1] and abs(actual[0] - assumed[0]) <= 1e-6 * assumed[0]
        bias_ok, bias_input = True, None
        if q is not None and len(op.inputs) > 2 and op.inputs[2] >= 0:
            w, b = graph.tensors[op.inputs[1]].quantization, graph.tensors[op.inputs[2]].quantization
            if w is not None and b is not None:
                ratio = np.asarray(b.scales, np.float64) / np.asarray(w.scales, np.float64)
                bias_input = float(np.median(ratio))
                expect = float(plan.bias_input_scales.get(name, q.scales[0]))
                bias_ok = bool(np.all(np.abs(ratio - expect) <= 1e-5 * expect))
        out[name] = {"assumed": [float(assumed[0]), int(assumed[1])],
                     "actual": None if actual is None else list(actual),
                     "bias_scale_consistent": bias_ok, "bias_input_scale": bias_input,
                     "grid_equal": grid_ok, "equal": grid_ok and bias_ok}
    return out


def _check_levels(flatbuffer, levels, tensors):
    """Every spike tensor must give its two levels two distinct codes at the
    ends of its integer range, each within half a step of the level. (int8
    {0, 6} and int16 levels are exact; int8 +-1 (ste_b) reads as
    ``+-1 + 1/255``: 255 steps cannot put 0 half-way.) After
    :func:`export.tflite.spike_grids.fix_spike_grids` this holds by construction;
    the check makes sure of it."""
    from export.tflite.flatbuffer import read_model

    graph = read_model(flatbuffer).main
    bad = []
    for name, t in tensors.items():
        tensor = graph.tensors[t]
        q = tensor.quantization
        if q is None:  # float32
            continue
        codes = level_codes(q, tensor.dtype, levels[name])
        scale, zp = float(q.scales[0]), int(q.zero_points[0])
        info = np.iinfo(tensor.dtype)
        reals = [(c - zp) * scale for c in codes]
        if (codes[0] == codes[1] or any(abs(r - l) > 0.5001 * scale for r, l in zip(reals, levels[name]))
                or codes[1] < info.max - 1 - (0 if info.bits == 8 else 1)):
            bad.append(f"{name} (scale {scale:.6g}, zero point {zp}; levels {levels[name]} -> codes {codes})")
    if bad:
        from export.transform.edge import EdgeError

        raise EdgeError("spike tensors without two exact levels: " + "; ".join(bad))


def level_codes(quantization, dtype, levels):
    """``(code_off, code_on)``: the integer codes of the two spike levels in
    a tensor with this quantization (clipped to the dtype's range)."""
    info = np.iinfo(dtype)
    scale, zp = float(quantization.scales[0]), int(quantization.zero_points[0])
    return tuple(int(np.clip(np.round(level / scale) + zp, info.min, info.max)) for level in levels)


def _spike_levels(model, names, formulation):
    """``{neuron: (off, on)}`` of the spikes ``formulation`` writes."""
    entry = get_formulation(formulation)
    return {n: entry.levels_for(model.get_layer(n).off_value) for n in names}


def _finish(flat, model, names, quantization, formulation, plan=None):
    """Spike tensors, spike grids from the levels (a neuron silent on the
    calibration data included), and the two-level check."""
    from export.tflite.spike_grids import fix_spike_grids

    tensors = spike_tensors(flat, names, _producers(plan))
    levels = _spike_levels(model, names, formulation)
    flat = _integer_forms(flat, model, keep=set(tensors.values()), check=False)
    flat, fixed = fix_spike_grids(flat, model, tensors, levels, quantization)
    _check_levels(flat, levels, tensors)
    _integer_forms(flat, model, fold=False)
    return flat, tensors, fixed


def _integer_forms(flat, model, keep=(), fold=True, check=True):
    """Inner requantizations folded into the ops before them
    (:func:`export.tflite.spike_grids.fold_requantize`; ``keep``: the spike
    tensors) and every concatenation's inputs checked to share its grid
    (:func:`export.tflite.spike_grids.check_concatenations`)."""
    from export.tflite.spike_grids import check_concatenations, fold_requantize

    if fold:
        flat, _ = fold_requantize(flat, keep)
    if check:
        names = [l.name for l in model.layers]
        check_concatenations(flat, lambda tensor: next(
            (n for n in names for part in tensor.split(";") if tensor_names_layer(part, n)), None))
    return flat


def convert(model: keras.Model, quantization: str = "float32",
            representative_data: Optional[Callable[[], Iterable]] = None,
            neuron: str = DEFAULT_NEURON, merge_shortcuts: bool = False,
            rewrites: Sequence[str] = DEFAULT_REWRITES) -> Conversion:
    """Converts a Keras model to TFLite and says how (see :class:`Conversion`).

    Args:
      model: a trained Keras model: with BatchNormalization/S2Activation it is
        folded first (:func:`export.fold_batchnorm`); a folded model is used as
        it is; a model without spiking neurons (ReLU) is converted unchanged.
      quantization: ``"float32"``, ``"int8"`` (full integer, int8 I/O) or
        ``"int16x8"`` (int16 activations and I/O, int8 weights).
      representative_data: for the integer formats, a callable returning an
        iterable of input lists ``[batch]`` (float32 images in the model's
        input convention), as ``TFLiteConverter.representative_dataset``
        takes. Real data, a few hundred images, is what calibration needs.
      neuron: ``"saturate"`` (default, edge ops only) or ``"compare"``
        (:mod:`export.transform.formulations`).
      merge_shortcuts: first rewrite ``AveragePooling2D(1, s) -> 1x1 Conv2D``
        as one strided 1x1 conv (:func:`merge_strided_shortcuts`; the whole
        graph then runs in one XNNPACK partition).
      rewrites: graph rewrites applied after the fold
        (:data:`export.formats.REWRITES`, :mod:`export.transform.rewrites`; the same
        function): by default the ReLU baseline's unabsorbed BatchNorms as
        1x1 depthwise convs and global average pooling as
        ``AVERAGE_POOL_2D``; ``()`` keeps the converter's forms.

    Every model's own input scaling (a leading ``Rescaling`` /
    ``Normalization``) is folded into the layers reading it
    (:func:`export.transform.inputs.fold_input_scaling`; the TFLite model takes the
    same raw inputs, an int8 one raw integers on the grid of
    :func:`export.transform.inputs.raw_input_grid`); every spiking model gets
    :func:`settle_spike_thresholds` (the same function), and every integer
    model the grids of its spike tensors from their levels
    (:func:`export.tflite.spike_grids.fix_spike_grids`).

    Raises:
      ValueError: bad arguments; :class:`export.FoldError` /
      :class:`export.transform.edge.EdgeError` for a model that cannot be exported
      exactly (the message names the layer).
    """
    _check_args(quantization, representative_data, neuron)
    model = ensure_folded(model)
    if quantization == "int8":
        model = raw_input_grid(model, representative_data)
    model = fold_input_scaling(model)
    if merge_shortcuts:
        model = merge_strided_shortcuts(model)
    if rewrites:
        from export.transform.rewrites import apply as apply_rewrites

        model = apply_rewrites(model, tuple(rewrites))
    if not is_spiking_model(model):
        flat = _integer_forms(_convert_keras(model, quantization, representative_data), model)
        return Conversion(flat, quantization, None, model)
    model = settle_spike_thresholds(model)
    names = [l.name for l in model.layers if is_spiking_neuron(l)]
    formulation = get_formulation(neuron).for_format(quantization).name
    if neuron == "compare":
        if formulation == "ramp":
            model = ramp_model(model, representative_data)
        elif quantization == "int8":
            model = int8_threshold_model(model, representative_data)
        flat = _convert_keras(model, quantization, representative_data)
        flat, tensors, fixed = _finish(flat, model, names, quantization, formulation)
        return Conversion(flat, quantization, neuron, model, spike_tensors=tensors, spike_grids=fixed)

    from export.transform.edge import edge_model

    overrides: Dict = {}
    bias_scales: Dict[str, float] = {}
    grids: Dict[str, Dict] = {}
    for attempt in range(1, MAX_CONVERSIONS + 1):
        plan = edge_model(model, quantization, representative_data, input_quantization=overrides,
                          bias_input_scales=bias_scales)
        flat = _convert_keras(plan.model, quantization, representative_data)
        flat, tensors, fixed = _finish(flat, plan.model, names, quantization, formulation, plan)
        grids = _read_grids(flat, plan) if plan.assumed_inputs else {}
        wrong = {n: g for n, g in grids.items() if not g["equal"] and g["actual"] is not None}
        if not wrong:
            break
        for n, g in wrong.items():
            if not g["grid_equal"] or g["bias_input_scale"] is None:
                overrides[n] = tuple(g["actual"])
            else:   # right grid, bias quantized with another input scale (the converter's calibration)
                bias_scales[n] = g["bias_input_scale"]
    else:
        raise RuntimeError(f"saturate {quantization} export: the converter's grids of {sorted(wrong)} still differ "
                           f"from the placement after {MAX_CONVERSIONS} conversions")
    return Conversion(flat, quantization, neuron, plan.model, plan, tensors, attempt, grids, fixed)


def to_tflite(model: keras.Model, quantization: str = "float32",
              representative_data: Optional[Callable[[], Iterable]] = None,
              neuron: str = DEFAULT_NEURON, merge_shortcuts: bool = False,
              rewrites: Sequence[str] = DEFAULT_REWRITES) -> bytes:
    """The ``.tflite`` flatbuffer bytes of :func:`convert` (same arguments).

    Example::

        flat = to_tflite(model, "int8", lambda: ([x[i:i + 50]] for i in range(0, 500, 50)))
        flat_relu = to_tflite(relu_model, "int8", same_data)          # same converter settings
        flat_ablation = to_tflite(model, "int8", same_data, neuron="compare")
    """
    return convert(model, quantization, representative_data, neuron, merge_shortcuts, rewrites).flatbuffer


from export.tflite.flatbuffer import tensor_names_layer  # noqa: E402
from export.tflite.quiet import quiet_conversion  # noqa: E402  (the export's one output silencer)


def op_names(tflite_model: bytes) -> Dict[str, int]:
    """``{op name: count}`` of a flatbuffer (:func:`export.tflite.flatbuffer.op_counts`)."""
    from export.tflite.flatbuffer import op_counts

    return op_counts(tflite_model)
