"""Spike grids come from the levels, not from calibration.

Post-training quantization gives every activation the grid of its range on
the calibration images. A spike tensor holds two known values, its levels
(``{0, 6}``: int8 scale 6/255, zero point -128; int16 scale 6/32767), so its
grid is known before any calibration -- and calibration gets it wrong
exactly when a neuron never fires on the calibration images: its range is
``[0, 0]`` and the converter gives the tensor (and what a reshape, max or
average pool makes of it) a degenerate scale (~1e-8 in int8, ~1e-43 in
int16), with which the layers reading it cannot represent a single spike
(the int8 converter clips their bias, the int16 one writes their weights
with an infinite scale).

:func:`fix_spike_grids` repairs a converted flatbuffer: every spike tensor
whose grid is not its level grid gets it, so do the tensors that reshape /
pad / max-pool / average it on the same degenerate grid, and every
Conv/Depthwise/Dense reading one of them gets its int8 weights and its
int32 (int16x8: int64) bias requantized from the Keras model's float
weights as the converter quantizes them (per output channel,
``q = round(127 w / max|w_c|)``; bias ``round(b / (s_in s_w))``, both half
away from zero: bit for bit in int8; an int16x8 bias, int64 and up to ~1e7,
can differ by one unit from the converter's float32 arithmetic, far inside
the 16383-unit margin of the placement). Requantization multipliers are computed by the runtimes
from the tensors' scales, so nothing else changes; a model whose neurons
all fire on the calibration data is returned unchanged.

Two more passes over a converted integer model live here, since they too
move tensors between grids: :func:`fold_requantize` (an inner ``QUANTIZE``
folded into the op before it) and :func:`check_concatenations` (every
``CONCATENATION`` input on the output's grid, or one error).

Example::

    flat, fixed = fix_spike_grids(flat, conversion.model, tensors, levels, "int8")
    fixed   # {"block5_pw_act": {"was": [7.8e-09, 0], "now": [0.0235, -128], ...}}
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from export.quant import int8_weights, round_half_away

__all__ = ["fix_spike_grids", "requantized_weights", "fold_requantize", "check_concatenations"]

# Ops whose output keeps the input's values (and, in TFLite, its grid), and
# averages of spikes (whose values lie between the two levels).
_FOLLOW = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D", "PAD", "PADV2", "AVERAGE_POOL_2D", "MEAN",
                     "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION"})
# Ops that requantize their result onto any output grid (a QUANTIZE after them folds into them).
_REQUANTIZING = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "ADD"})
_WEIGHTED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})


def _same(q, grid):
    scale, zp = grid
    return (q is not None and q.scales.size == 1 and int(q.zero_points[0]) == int(zp)
            and abs(float(q.scales[0]) - scale) <= 1e-6 * scale)


def requantized_weights(op_name, kernel, bias, weight_shape, input_scale, bias_dtype):
    """``(int8 weights in TFLite layout, weight scales, integer bias, bias
    scales)`` of a Conv/Depthwise/Dense with Keras ``kernel`` (output channel
    last; ``[..., in, mult]`` for a depthwise kernel) and ``bias``, reading
    an input of scale ``input_scale``, as the TFLite converter quantizes
    them (per output channel, symmetric, round half away from zero)."""
    from export.transform.edge import KernelRows

    if op_name == "TRANSPOSE_CONV":   # Keras [..., out, in]; TFLite [out, ..., in]
        kernel = np.swapaxes(np.asarray(kernel), -1, -2)
    rows = KernelRows(kernel, op_name == "DEPTHWISE_CONV_2D").rows
    q, m = int8_weights(rows)
    safe = np.where(m > 0, m, 1.0)
    scales = (safe / 127.0).astype(np.float32).astype(np.float64)
    if op_name == "DEPTHWISE_CONV_2D":
        weights = q.T.reshape(weight_shape)
    elif op_name == "FULLY_CONNECTED":
        weights = q.reshape(weight_shape)
    else:   # CONV_2D, TRANSPOSE_CONV: [out, ...taps] in the kernel's own tap order
        weights = q.reshape((q.shape[0],) + tuple(weight_shape[1:]))
    if weights.shape != tuple(weight_shape):
        raise RuntimeError(f"cannot requantize a {op_name}: kernel {np.shape(kernel)} does not fit {weight_shape}")
    b = np.zeros(rows.shape[0]) if bias is None else np.asarray(bias, np.float64)
    bias_scales = (np.float32(input_scale) * scales.astype(np.float32)).astype(np.float64)
    info = np.iinfo(bias_dtype)
    bq = np.clip(round_half_away(b / bias_scales), info.min, info.max).astype(bias_dtype)
    return weights.astype(np.int8), scales, bq, bias_scales


def _float_weights(layer):
    """``(kernel, bias)`` a layer of the converted Keras model computes with:
    a Conv/Depthwise/Dense, or the first depthwise stage of a ThresholdNeuron."""
    from export.transform.neurons import ThresholdNeuron

    if isinstance(layer, ThresholdNeuron):
        return layer.depthwise_stage()
    weights = layer.get_weights()
    return weights[0], (weights[1] if len(weights) > 1 else None)


def _layer_of(name, layers):
    from export.tflite.flatbuffer import tensor_names_layer

    parts = name.split(";")
    found = [l for l in layers if any(tensor_names_layer(p, l.name) for p in parts)]
    if len(found) != 1:
        raise RuntimeError(f"cannot tell which layer the weights {name[:120]!r} belong to "
                           f"({[l.name for l in found] or 'none'})")
    return found[0]


def fix_spike_grids(flatbuffer: bytes, model, spike_tensors: Mapping[str, int],
                    levels: Mapping[str, Tuple[float, float]], quantization: str) -> Tuple[bytes, Dict]:
    """Gives every spike tensor of ``flatbuffer`` (``{neuron: tensor index}``)
    the grid of its ``levels`` (module docstring) and requantizes the layers
    reading a repaired tensor from ``model`` (the Keras model that was
    converted). Returns the flatbuffer (the same bytes if nothing was wrong)
    and ``{neuron: {"was", "now", "tensors", "requantized"}}`` of what changed."""
    if quantization == "float32" or not spike_tensors:
        return flatbuffer, {}
    from export.transform.edge import level_grid
    from export.tflite.flatbuffer import read_model

    graph = read_model(flatbuffer).main
    wrong = {}
    for name, t in spike_tensors.items():
        grid = level_grid(tuple(levels[name]), quantization)
        q = graph.tensors[t].quantization
        if q is not None and not _same(q, grid):
            wrong[name] = (t, grid, (float(q.scales[0]), int(q.zero_points[0])))
    if not wrong:
        return flatbuffer, {}

    consumers = {}
    for op in graph.operators:
        for i in op.inputs:
            if i >= 0:
                consumers.setdefault(i, []).append(op)
    new_grid: Dict[int, Tuple[float, int]] = {}
    source: Dict[int, str] = {}
    report = {}
    for name, (t, grid, old) in wrong.items():
        tensors = [t]
        new_grid[t], source[t] = grid, name
        stack = [t]
        while stack:
            for op in consumers.get(stack.pop(), []):
                if op.name not in _FOLLOW or not op.outputs:
                    continue
                out = op.outputs[0]
                q = graph.tensors[out].quantization
                if out not in new_grid and q is not None and _same(q, old):
                    new_grid[out], source[out] = grid, name
                    tensors.append(out)
                    stack.append(out)
        report[name] = {"was": list(old), "now": list(grid), "tensors": len(tensors), "requantized": []}

    layers = [l for l in model.layers if l.get_weights() or hasattr(l, "depthwise_stage")]
    updates = []
    for op in graph.operators:
        data, bias_at = (2, 3) if op.name == "TRANSPOSE_CONV" else (0, 2)   # TRANSPOSE_CONV: shape, weights, data, bias
        if op.name not in _WEIGHTED or op.inputs[data] not in new_grid:
            continue
        w_t = graph.tensors[op.inputs[1]]
        b_t = graph.tensors[op.inputs[bias_at]] if len(op.inputs) > bias_at and op.inputs[bias_at] >= 0 else None
        layer = _layer_of(w_t.name, layers)
        kernel, bias = _float_weights(layer)
        bias_dtype = b_t.dtype if b_t is not None else np.int32
        updates.append((op, w_t, b_t, requantized_weights(op.name, kernel, bias, w_t.shape,
                                                          new_grid[op.inputs[data]][0], bias_dtype)))
        report[source[op.inputs[data]]]["requantized"].append(layer.name)
    return _write(flatbuffer, new_grid, updates), report


def fold_requantize(flatbuffer: bytes, keep=()) -> Tuple[bytes, int]:
    """Removes every QUANTIZE inside the model (not at its inputs or
    outputs) that only moves an integer tensor onto another grid of the
    same type and reads the only output of a Conv/Depthwise/Dense/
    TransposeConv/Add that nothing else reads: that op writes the QUANTIZE's
    output (and grid) itself, with one rounding instead of two. (The 16x8
    quantizer puts such requantizations before a CONCATENATION, whose
    inputs must share its grid; int8 requantizes in the producer.)
    ``keep``: tensors whose grid must not change (spike tensors). Returns
    the flatbuffer and how many were removed."""
    from export.tflite.flatbuffer import read_model

    graph = read_model(flatbuffer).main
    folds = {}
    for op in graph.operators:
        if op.name != "QUANTIZE":
            continue
        src, dst = op.inputs[0], op.outputs[0]
        producer = graph.producer(src)
        if (producer is None or producer.name not in _REQUANTIZING or src in keep or src in graph.outputs
                or dst in graph.outputs or len(graph.consumers(src)) != 1
                or graph.tensors[src].dtype != graph.tensors[dst].dtype or graph.tensors[src].dtype.kind != "i"):
            continue
        folds[op.index] = (producer.index, dst)
    if not folds:
        return flatbuffer, 0

    def edit(model):
        ops = model.subgraphs[0].operators
        for q, (producer, dst) in folds.items():
            outputs = list(ops[producer].outputs)
            ops[producer].outputs = [dst] + outputs[1:]
        model.subgraphs[0].operators = [o for i, o in enumerate(ops) if i not in folds]

    return _rewrite(flatbuffer, edit), len(folds)


def check_concatenations(flatbuffer: bytes, layer_of=lambda name: None) -> None:
    """Every integer ``CONCATENATION`` must have its inputs on its output's
    grid: the int8 and int16 kernels copy codes (LiteRT's int8 kernel and
    TFLite Micro refuse other grids; the int16 kernels would silently mix
    scales). ``layer_of(tensor name)`` names the Keras layer for the message.

    Raises:
      export.transform.edge.EdgeError: naming the concatenation and its grids.
    """
    from export.tflite.flatbuffer import read_model

    graph = read_model(flatbuffer).main
    for op in graph.operators:
        out = graph.tensors[op.outputs[0]] if op.name == "CONCATENATION" else None
        if out is None or out.quantization is None:
            continue
        grid = (float(out.quantization.scales[0]), int(out.quantization.zero_points[0]))
        inputs = [graph.tensors[t].quantization for t in op.inputs]
        if all(_same(q, grid) for q in inputs):
            continue
        from export.transform.edge import EdgeError

        name = layer_of(out.name) or out.name
        grids = ", ".join(f"({float(q.scales[0]):.6g}, {int(q.zero_points[0])})" for q in inputs)
        fmt = "int16x8" if out.type_name == "INT16" else out.type_name.lower()
        raise EdgeError(f"Concatenate {name!r}: the {fmt} model would join inputs on the grids {grids} into one of "
                        f"({grid[0]:.6g}, {grid[1]}), which the integer kernels do not rescale; the default neuron "
                        f"(neuron='saturate') requantizes the spikes it joins, or leave {fmt} out of the formats "
                        "(--formats)")


def _write(flatbuffer, new_grid, updates):
    from export.tflite.flatbuffer import schema

    s = schema()

    def edit(model):
        _apply(model, s, new_grid, updates)

    return _rewrite(flatbuffer, edit)


def _rewrite(flatbuffer, edit):
    """``flatbuffer`` after ``edit(model)`` of its object tree (``ModelT``)."""
    import flatbuffers

    from export.tflite.flatbuffer import schema

    s = schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(bytes(flatbuffer), 0))
    edit(model)
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _apply(model, s, new_grid, updates):
    graph = model.subgraphs[0]
    for t, (scale, zp) in new_grid.items():
        quant = graph.tensors[t].quantization
        quant.scale = [float(scale)]
        quant.zeroPoint = [int(zp)]
        quant.min, quant.max = None, None
    uses = {}
    for sub in model.subgraphs:
        for tensor in sub.tensors:
            uses[tensor.buffer] = uses.get(tensor.buffer, 0) + 1

    def set_data(tensor, values):
        # The converter shares one buffer among equal constants (all-zero
        # biases, say): give the tensor its own before writing.
        if uses.get(tensor.buffer, 0) > 1:
            uses[tensor.buffer] -= 1
            model.buffers.append(s.BufferT())
            tensor.buffer = len(model.buffers) - 1
            uses[tensor.buffer] = 1
        model.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8)

    for op, w_t, b_t, (weights, w_scales, bias, b_scales) in updates:
        w = graph.tensors[w_t.index]
        w.quantization.scale = [float(v) for v in w_scales]
        w.quantization.zeroPoint = [0] * len(w_scales)
        set_data(w, weights)
        if b_t is not None:
            b = graph.tensors[b_t.index]
            b.quantization.scale = [float(v) for v in b_scales]
            b.quantization.zeroPoint = [0] * len(b_scales)
            set_data(b, bias)
