"""The Appendix B energy report measured in a TFLite model.

FLOPs (Eq. B.1) come from the weight and feature-map shapes of every
``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``TRANSPOSE_CONV``, ``CONV_3D`` and
``FULLY_CONNECTED`` op, read with :mod:`export.tflite.flatbuffer`. The firing
rates (Eq. B.2) are read from the interpreter's intermediate tensors
(:func:`export.tflite.runtimes.interpreter` with ``preserve_all_tensors``:
builtin kernels, no delegate).

Finding the spikes does not depend on how the neuron is written (a
``GREATER_EQUAL``/``SELECT_V2`` comparison, a saturating ``RELU6`` fused
into the convolution that computes the neuron's input, a ramp, ...): each
compute op's data input is followed back through shape-only ops
(``RESHAPE``, ``PAD``, ``QUANTIZE``, ...) to its *direct* tensor and on
through averages (``MEAN``, ``AVERAGE_POOL_2D``) to its *source*, and each
such tensor is classified **from its values** over the whole data set:

* two levels ``{0, A}`` (``A > 0``; 1 for the comparison neuron, 6 for a
  ``RELU6`` clamp) -> ``spikes``;
* two levels ``{-a, +a}`` -> ``signed_spikes`` (unless the Keras model says
  the layer receives {0, 1} spikes stored as ``+-a``, then ``spikes``);
* anything else -> ``real``.

R is the fraction of values above the midpoint of the two levels, counted
at the positions the layer reads. For a ``CONV_2D`` or
``DEPTHWISE_CONV_2D`` with a 1x1 kernel and stride ``s`` (what
``export.tflite.convert.merge_strided_shortcuts`` makes of the builders'
``AveragePooling2D(1, s) -> Conv2D(1x1)`` shortcut) those are the rows and
columns its receptive fields cover (``i * s - pad_before``, from the op's
stride, padding and dilation; through a ``PAD`` or ``(DE)QUANTIZE`` between
the tensor and the conv): the subsampled map, each element read once per
output channel, the same map the Keras side measures on the pooling's
output. A conv with a larger kernel reads overlapping windows that cover
its whole input; R is the rate of that whole input tensor, as
:func:`s2nn_keras.energy.resolve_inputs` defines it for the tensor a Keras
layer receives. A value
is on a level when it equals it (one integer step of tolerance for
quantized tensors); a tensor counts as two-level when at most
``NEAR_BINARY_TOLERANCE`` of its values are off the levels (a ramp neuron
may emit a few intermediate values, recorded as ``nonbinary_fraction``).
A model input is the ``image``.

Compute ops that are part of a neuron rather than a network layer (the
per-channel gain of a neuron on a residual sum, a 1x1
``DEPTHWISE_CONV_2D``; the int16x8 ramp's affine) are left out of the
FLOPs and listed in the notes: with ``keras_model``, every op matching no
Keras Conv/Dense; without it, every 1x1 depth-multiplier-1
``DEPTHWISE_CONV_2D`` whose output is two-level.

Example::

    from export.energy.tflite import tflite_energy_report, compare_rates
    from s2nn_keras.energy import energy_report

    keras_rep = energy_report(model, x)
    tfl = tflite_energy_report("model_int8.tflite", x, keras_model=model)
    compare_rates(keras_rep, tfl)["max_abs_diff"]
"""

from __future__ import annotations

import collections
import os
import re
from typing import Dict, List, Optional

import numpy as np

from export.tflite import flatbuffer
from export.tflite.runtimes import interpreter
from s2nn_keras.energy import CONVENTIONS, assemble_report, energies, resolve_inputs
from s2nn_keras.firing import iter_batches

__all__ = ["NEAR_BINARY_TOLERANCE", "TRANSPARENT_OPS", "AVERAGE_OPS", "COMPUTE_OPS", "tflite_energy_report",
           "compare_rates", "quantization_of", "read_positions", "keras_layer_name", "tensor_label"]

#: Largest fraction of off-level values a tensor may hold and still be read as spikes.
NEAR_BINARY_TOLERANCE = 1e-3

TRANSPARENT_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "PAD", "PADV2",
                             "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR"})
AVERAGE_OPS = frozenset({"MEAN", "AVERAGE_POOL_2D"})
COMPUTE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"})
_NO_RULE = frozenset({"BATCH_MATMUL", "CONV_3D_TRANSPOSE"})
_KERAS_TYPE = {"CONV_2D": "Conv2D", "CONV_3D": "Conv3D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
               "TRANSPOSE_CONV": "Conv2DTranspose", "FULLY_CONNECTED": "Dense"}
_MAX_FLOAT_LEVELS = 256


# --------------------------------------------------------------------------
# FLOPs and graph walking on the flatbuffer.
# --------------------------------------------------------------------------


def _data_and_weights(op):
    if op.name == "TRANSPOSE_CONV":  # inputs: output_shape, weights, data[, bias]
        return op.inputs[2], op.inputs[1]
    return op.inputs[0], op.inputs[1]


def _flops(op_name, inp, wt, out):
    """Eq. B.1 from TFLite shapes (batch dimension set to 1)."""
    if op_name == "CONV_2D":  # filter [O, kh, kw, I/g]
        o, kh, kw, i = wt
        return kh * kw * out[1] * out[2] * i * o
    if op_name == "CONV_3D":  # filter [kd, kh, kw, I, O]
        kd, kh, kw, i, o = wt
        return kd * kh * kw * int(np.prod(out[1:4])) * i * o
    if op_name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, C_out]
        _, kh, kw, o = wt
        return kh * kw * out[1] * out[2] * o
    if op_name == "TRANSPOSE_CONV":  # filter [O, kh, kw, I]
        o, kh, kw, i = wt
        return kh * kw * inp[1] * inp[2] * i * o
    if op_name == "FULLY_CONNECTED":  # weights [O, I]
        o, i = wt
        positions = int(np.prod(inp)) // (inp[0] * i) if len(inp) else 1
        return positions * i * o
    raise ValueError(f"no FLOPs rule for TFLite op {op_name}")


def _is_neuron_gain_candidate(graph, op):
    """A 1x1, depth-multiplier-1 DEPTHWISE_CONV_2D: how a per-channel neuron
    gain is written (it is a neuron if its output turns out two-level)."""
    if op.name != "DEPTHWISE_CONV_2D":
        return False
    w = graph.tensors[op.inputs[1]].shape
    mult = getattr(op.options, "depthMultiplier", 1) or 1
    return len(w) == 4 and w[1] == 1 and w[2] == 1 and int(mult) == 1


def read_positions(size: int, out: int, stride: int, dilation: int, kernel: int, same: bool) -> List[int]:
    """Indices along one spatial axis (of length ``size``) that a TFLite
    convolution reads: the union of its ``out`` receptive fields of
    ``kernel`` taps ``dilation`` apart, ``stride`` apart, with TFLite's
    ``SAME`` padding (``pad_before = max((out - 1) * stride + (kernel - 1) *
    dilation + 1 - size, 0) // 2``; taps in the padding read nothing) or
    ``VALID`` (none). ``read_positions(7, 4, 2, 1, 1, True) == [0, 2, 4, 6]``."""
    extent = (kernel - 1) * dilation + 1
    before = max((out - 1) * stride + extent - size, 0) // 2 if same else 0
    hit = {i * stride - before + j * dilation for i in range(out) for j in range(kernel)}
    return sorted(p for p in hit if 0 <= p < size)


def _read_selection(graph, op, data_idx, direct_path):
    """``(selection, reason)``: the rows and columns of the direct tensor a
    strided 1x1 ``CONV_2D``/``DEPTHWISE_CONV_2D`` reads (``selection``
    ``None``: the whole tensor), and why a strided 1x1 conv's positions
    could not be mapped (``reason``, else ``None``)."""
    if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or op.options is None:
        return None, None
    w = graph.tensors[op.inputs[1]].shape
    if len(w) != 4 or tuple(w[1:3]) != (1, 1):
        return None, None  # overlapping windows: the whole input (the Keras definition)
    inp, out = graph.tensors[data_idx].shape, graph.tensors[op.outputs[0]].shape
    if len(inp) != 4 or len(out) != 4:
        return None, None
    if min(inp[1:3]) <= 0 or min(out[1:3]) <= 0:
        return None, "a dynamic spatial size"
    opt = op.options
    same = int(opt.padding) == flatbuffer.schema().Padding.SAME
    axes = [read_positions(int(inp[1 + a]), int(out[1 + a]), int(stride or 1), int(dil or 1), 1, same)
            for a, (stride, dil) in enumerate(((opt.strideH, opt.dilationHFactor),
                                               (opt.strideW, opt.dilationWFactor)))]
    if all(axis == list(range(int(inp[1 + a]))) for a, axis in enumerate(axes)):
        return None, None  # stride 1: every position
    for p in direct_path:  # from the conv's input back to the direct tensor
        if p.name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        pads = graph.tensors[p.inputs[1]].data if p.name in ("PAD", "PADV2") and len(p.inputs) > 1 else None
        src = graph.tensors[p.inputs[0]].shape
        if pads is None or np.shape(pads) != (4, 2) or len(src) != 4:
            return None, f"a {p.name} between the tensor and the strided 1x1 conv"
        axes = [[i - int(pads[1 + a][0]) for i in axis if 0 <= i - int(pads[1 + a][0]) < int(src[1 + a])]
                for a, axis in enumerate(axes)]
    direct = graph.tensors[data_idx if not direct_path else direct_path[-1].inputs[0]].shape
    if all(axis == list(range(int(direct[1 + a]))) for a, axis in enumerate(axes)):
        return None, None
    return (tuple(axes[0]), tuple(axes[1])), None


def _select(values: np.ndarray, selection):
    if selection is None:
        return values
    rows, cols = selection
    return values[:, list(rows)][:, :, list(cols)]


def _rows(graph) -> List[dict]:
    inputs = set(graph.inputs)
    rows = []
    for op in graph.operators:
        if op.name not in COMPUTE_OPS:
            if op.name in _NO_RULE:
                raise ValueError(f"TFLite op {op.index} ({op.name}) has no FLOPs rule")
            continue
        data_idx, w_idx = _data_and_weights(op)
        inp = [int(v) for v in graph.tensors[data_idx].shape_signature]
        out = [int(v) for v in graph.tensors[op.outputs[0]].shape_signature]
        inp[0] = out[0] = 1
        flops = _flops(op.name, inp, list(graph.tensors[w_idx].shape), out)
        t, path = data_idx, []
        while t not in inputs and graph.producer(t) is not None and graph.producer(t).name in TRANSPARENT_OPS:
            path.append(graph.producer(t))
            t = graph.producer(t).inputs[0]
        direct, direct_path = t, list(path)
        selection, unmapped = _read_selection(graph, op, data_idx, direct_path)
        averaged = False
        while t not in inputs and graph.producer(t) is not None:
            p = graph.producer(t)
            if p.name in TRANSPARENT_OPS:
                pass
            elif p.name in AVERAGE_OPS:
                averaged = True
            else:
                break
            path.append(p)
            t = p.inputs[0]
        rows.append({
            "op": op,
            "tflite_op": op.index,
            "tflite_name": graph.tensors[op.outputs[0]].name,
            "type": _KERAS_TYPE[op.name],
            "flops": int(flops),
            "direct": direct,
            "direct_path": direct_path,
            "direct_selection": selection,
            "unmapped_stride": unmapped,
            "source": t if averaged else None,
            "path": path,
            "is_input": direct in inputs,
        })
    if not rows:
        raise ValueError("TFLite model has no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op")
    return rows


# --------------------------------------------------------------------------
# Value levels of a tensor over the data.
# --------------------------------------------------------------------------


class _Levels:
    """Histogram of the values a tensor takes over the data: exact for
    8/16-bit integer tensors, up to ``_MAX_FLOAT_LEVELS`` distinct values
    for the others (more means real-valued; counting stops)."""

    def __init__(self, tensor: flatbuffer.Tensor):
        self.tensor = tensor
        self.total = 0
        dtype = tensor.dtype
        self.integer = dtype is not None and dtype.kind in "iu" and dtype.itemsize <= 2
        if self.integer:
            info = np.iinfo(dtype)
            self.offset = -int(info.min)
            self.counts = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
        else:
            self.values: Dict[float, int] = {}
        self.too_many = False

    def add(self, v: np.ndarray):
        self.total += v.size
        if self.too_many:
            return
        if self.integer:
            self.counts += np.bincount(v.reshape(-1).astype(np.int64) + self.offset, minlength=self.counts.size)
            return
        flat = v.reshape(-1)
        known = list(self.values)
        on = np.zeros(flat.shape, dtype=bool)
        for level in known[:2]:
            hit = flat == level
            self.values[level] += int(np.count_nonzero(hit))
            on |= hit
        rest = flat[~on]
        if rest.size:
            vals, counts = np.unique(rest, return_counts=True)
            for value, count in zip(vals.tolist(), counts.tolist()):
                self.values[value] = self.values.get(value, 0) + count
            if len(self.values) > _MAX_FLOAT_LEVELS:
                self.too_many = True
                self.values = {}
            else:  # keep the two most frequent first (the fast path above)
                self.values = dict(sorted(self.values.items(), key=lambda kv: -kv[1]))

    def _real(self, q):
        quant = self.tensor.quantization
        if quant is None or quant.per_channel or not self.integer:
            return float(q)
        return float((q - int(quant.zero_points[0])) * float(quant.scales[0]))

    def summary(self) -> Optional[dict]:
        """``{"lo", "hi", "rate", "offlevel"}`` (levels in real units) when the
        tensor is two-level ({0, A} or {-a, +a}) or one-level, else ``None``."""
        if self.too_many or self.total == 0:
            return None
        if self.integer:
            nz = np.nonzero(self.counts)[0]
            items = [(int(i) - self.offset, int(self.counts[i])) for i in nz]
        else:
            items = list(self.values.items())
        if not items:
            return None
        top = sorted(items, key=lambda kv: -kv[1])[:2]
        levels = sorted(v for v, _ in top)
        if len(levels) == 1:
            only = levels[0]
            if self._real(only) != 0.0:
                return None  # a constant non-zero map: no way to tell spikes from values
            return {"lo": 0.0, "hi": None, "rate": 0.0, "offlevel": 0.0}
        lo, hi = levels
        step = 1 if self.integer else 0
        on = sum(c for v, c in items if abs(v - lo) <= step or abs(v - hi) <= step)
        offlevel = 1.0 - on / self.total
        if offlevel > NEAR_BINARY_TOLERANCE:
            return None
        mid = (lo + hi) / 2.0
        above = sum(c for v, c in items if v > mid)
        r_lo, r_hi = self._real(lo), self._real(hi)
        scale = max(abs(r_lo), abs(r_hi), 1e-30)
        tol = (float(self.tensor.quantization.scales.max()) * 1.01
               if self.integer and self.tensor.quantization is not None else 1e-6 * scale)
        if abs(r_lo) <= tol and r_hi > 0:
            kind = "spikes"
        elif r_lo < 0 < r_hi and abs(r_lo + r_hi) <= tol + 1e-6 * scale:
            kind = "signed_spikes"
        else:
            return None
        return {"lo": r_lo, "hi": r_hi, "rate": above / self.total, "offlevel": offlevel, "kind": kind,
                "offlevel_count": self.total - on}


# --------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------


_SCOPE_SUFFIX = re.compile(r"_\d+$")
_COMPUTE_SCOPES = ("convolution", "depthwise", "MatMul", "BiasAdd", "Conv2D", "Conv3D", "conv1d", "Tensordot",
                   "conv2d_transpose", "add")


def keras_layer_name(graph, op) -> Optional[str]:
    """The Keras layer a compute op came from, read from the converter's
    tensor names (``<model>_1/<model>_1/<layer>_1/convolution``): the scope
    above the weight tensor's op name, else above the output's first
    compute op (each without the ``_N`` the name scope appends); ``None``
    when neither has one."""
    _, w_idx = _data_and_weights(op)
    candidates = [graph.tensors[w_idx].name.split(";")[0]] if w_idx >= 0 else []
    candidates += [part for part in graph.tensors[op.outputs[0]].name.split(";")
                   if part.rsplit("/", 1)[-1] in _COMPUTE_SCOPES]
    for name in candidates:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-1] in _COMPUTE_SCOPES:
            return _SCOPE_SUFFIX.sub("", parts[-2]) or parts[-2]
    return None


def tensor_label(name: str) -> str:
    """A short label of a converter tensor name: ``<layer>/<op>`` of its
    first fused part (``act2/Relu6`` for ``m_1/m_1/act2_1/Relu6;m_1/...``),
    the name itself when it has no scope."""
    parts = name.split(";")[0].split("/")
    if len(parts) >= 2:
        return f"{_SCOPE_SUFFIX.sub('', parts[-2]) or parts[-2]}/{parts[-1]}"
    return parts[0]


def _row_names(graph, rows):
    """A short, unique name per row without a Keras model: the Keras layer
    name when the tensor names carry it, else the output tensor name
    (repeated names get ``#2``, ``#3``, ...)."""
    names, seen = [], {}
    for row in rows:
        name = keras_layer_name(graph, row["op"]) or row["tflite_name"]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def _match_keras(rows, keras_rows):
    """Names TFLite rows after Keras rows: by layer name inside the TFLite
    tensor name, then the remaining ones in order among equal FLOPs."""
    names = [None] * len(rows)
    used = set()
    for i, row in enumerate(rows):
        for j, krow in enumerate(keras_rows):
            base = krow["name"].split(":")[0].split("#")[0].split("/")[-1]
            if j not in used and krow["flops"] == row["flops"] and flatbuffer.tensor_names_layer(row["tflite_name"], base):
                names[i] = j
                used.add(j)
                break
    for i, row in enumerate(rows):
        if names[i] is not None:
            continue
        for j, krow in enumerate(keras_rows):
            if j not in used and krow["flops"] == row["flops"]:
                names[i] = j
                used.add(j)
                break
    return names


def quantization_of(graph) -> str:
    """``"float32"``, ``"int8"``, ``"int16x8"`` (or a ``+``-joined mix) from
    the data-input dtypes of the compute ops."""
    dtypes = set()
    for op in graph.operators:
        if op.name in COMPUTE_OPS:
            dtype = graph.tensors[_data_and_weights(op)[0]].dtype
            dtypes.add(np.dtype(dtype).name if dtype is not None else "unknown")
    if dtypes == {"float32"}:
        return "float32"
    if dtypes == {"int8"}:
        return "int8"
    if dtypes == {"int16"}:
        return "int16x8"
    return "+".join(sorted(dtypes))


def _feed(interp, graph, data, batch_size):
    """Runs every example through ``interp``; yields after each invoke."""
    inp_index = graph.inputs[0]
    tensor = graph.tensors[inp_index]
    static_batch = tensor.shape_signature[0] if tensor.shape_signature and tensor.shape_signature[0] > 0 else None
    resized_to = None
    for x in iter_batches(data, batch_size):
        x = np.asarray(x, dtype=np.float32)
        chunks = [x] if static_batch is None else [x[i:i + static_batch] for i in range(0, len(x), static_batch)]
        for chunk in chunks:
            if static_batch is not None and chunk.shape[0] != static_batch:
                raise ValueError(f"TFLite model has a static batch of {static_batch}; "
                                 "the data size is not a multiple of it")
            if resized_to != chunk.shape[0]:
                if static_batch is None:
                    interp.resize_tensor_input(inp_index, list(chunk.shape))
                interp.allocate_tensors()
                resized_to = chunk.shape[0]
            feed = chunk
            if tensor.dtype is not None and tensor.dtype.kind in "iu":
                q = tensor.quantization
                info = np.iinfo(tensor.dtype)
                feed = np.clip(np.round(chunk / float(q.scales[0]) + int(q.zero_points[0])),
                               info.min, info.max).astype(tensor.dtype)
            interp.set_tensor(inp_index, feed)
            interp.invoke()
            yield chunk.shape[0]


def tflite_energy_report(tflite_model, data, convention: str = "default", preset: str = "45nm_fp32", *,
                         e_mac_pj: Optional[float] = None, e_ac_pj: Optional[float] = None,
                         keras_model=None, batch_size: int = 64) -> dict:
    """The Appendix B report of a TFLite model, measured in the interpreter
    (module docstring: how spikes are found, which ops are left out).

    Args:
      tflite_model: the flatbuffer bytes or a path to a ``.tflite`` file.
      data: float32 inputs (quantized here when the model's input is
        integer), in the forms of :func:`s2nn_keras.firing.iter_batches`.
      keras_model: optional; names the rows after its Conv/Dense layers (by
        layer name in the TFLite tensor names, then by order among layers
        with equal FLOPs), takes the spike kind of each row from it, and
        leaves out compute ops with no Keras counterpart. Without it, each
        row is named after the Keras layer its tensor names carry
        (:func:`keras_layer_name`), else after its output tensor.

    Returns:
      The dict of :func:`s2nn_keras.energy.energy_report` with ``source =
      "tflite"``, ``quantization``, and per row ``tflite_op``,
      ``tflite_name`` and, for spike inputs, ``spike_levels`` (the two real
      values) and ``spike_producer`` (the op writing the spike tensor and
      its fused activation).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    energies(preset, e_mac_pj, e_ac_pj)
    if isinstance(tflite_model, (str, os.PathLike)):
        with open(tflite_model, "rb") as f:
            tflite_model = f.read()
    graph = flatbuffer.read_model(tflite_model).main
    if len(graph.inputs) != 1:
        raise ValueError(f"the TFLite model has {len(graph.inputs)} inputs; the energy report supports one")
    rows = _rows(graph)
    measured = set()  # (tensor, positions read or None for all of it)
    for row in rows:
        if not row["is_input"]:
            measured.add((row["direct"], row["direct_selection"]))
            if row["source"] is not None:
                measured.add((row["source"], None))
        if _is_neuron_gain_candidate(graph, row["op"]):
            measured.add((row["op"].outputs[0], None))
    levels = {key: _Levels(graph.tensors[key[0]]) for key in sorted(measured, key=lambda k: (k[0], k[1] or ()))}
    interp = interpreter(tflite_model, "litert_builtin", num_threads=None, preserve_all_tensors=True)
    n_examples = 0
    for n in _feed(interp, graph, data, batch_size):
        n_examples += n
        values = {}
        for (t, selection), hist in levels.items():
            if t not in values:
                values[t] = interp.get_tensor(t)
            hist.add(_select(values[t], selection))
    if n_examples == 0:
        raise ValueError("energy report got an empty data set")
    summaries = {key: h.summary() for key, h in levels.items()}

    keras_rows = None
    if keras_model is not None:
        keras_rows = resolve_inputs(keras_model)
        for r in keras_rows:
            r.pop("rate_ref", None)
    matches = _match_keras(rows, keras_rows) if keras_rows else [None] * len(rows)
    own_names = _row_names(graph, rows)
    notes, out_rows = [], []
    spiking = False

    def via(path):
        return f" via {'/'.join(op.name for op in reversed(path))}" if path else ""

    def producer_text(t):
        p = graph.producer(t)
        if p is None:
            return "constant"
        act = f"+{p.fused_activation}" if p.fused_activation not in (None, "NONE") else ""
        return p.name + act

    for row, match, own_name in zip(rows, matches, own_names):
        op = row["op"]
        short = tensor_label(row["tflite_name"])
        if keras_rows and match is None:
            notes.append(f"TFLite op {op.index} ({op.name} '{short}', {row['flops']:,} FLOPs) has no Conv/Dense "
                         "counterpart in the Keras model (a neuron's per-channel gain or affine); not counted")
            continue
        if keras_rows is None and _is_neuron_gain_candidate(graph, op):
            s = summaries.get((op.outputs[0], None))
            if s is not None and s.get("hi") is not None:
                notes.append(f"TFLite op {op.index} ({op.name} 1x1 '{short}', {row['flops']:,} FLOPs) writes "
                             "spikes: a neuron's per-channel gain, not a network layer; not counted")
                continue
        krow = keras_rows[match] if match is not None else None
        name = krow["name"] if krow else own_name
        direct, source = row["direct"], row["source"]
        kind, rate, desc, levels_used, measured_key = "real", None, None, None, None
        if row["is_input"]:
            kind, desc = "image", f"model input '{tensor_label(graph.tensors[direct].name)}'"
        else:
            sel = row["direct_selection"]
            for t, path, pooled, key in ((direct, row["direct_path"], False, (direct, sel)),
                                         (source, row["path"], True, (source, None))):
                s = summaries.get(key) if t is not None else None
                if s is None:
                    continue
                base = s.get("kind", "spikes")
                if krow is not None and krow["input_kind"] in ("spikes", "pooled_spikes"):
                    base = "spikes"  # {0, 1} spikes, whatever levels the file stores them as
                elif krow is not None and krow["input_kind"] in ("signed_spikes", "pooled_signed_spikes"):
                    base = "signed_spikes"
                kind = ("pooled_" + base) if pooled else base
                rate = float(s["rate"])
                levels_used = [s["lo"], s["hi"]]
                measured_key = key
                where = ""
                if key[1] is not None:
                    where = (f" at the {len(key[1][0])}x{len(key[1][1])} positions the strided 1x1 "
                             f"{op.name} reads")
                desc = (f"spike tensor '{tensor_label(graph.tensors[t].name)}' ({producer_text(t)}){via(path)}{where}"
                        + (" (average)" if pooled else ""))
                spiking = True
                break
            if desc is None:
                desc = f"tensor '{tensor_label(graph.tensors[direct].name)}'{via(row['direct_path'])} (real-valued)"
        new = collections.OrderedDict(name=name, type=row["type"], flops=row["flops"], input_kind=kind,
                                      input_source=desc, firing_rate=rate, tflite_op=op.index,
                                      tflite_name=row["tflite_name"])
        if levels_used is not None:
            new["spike_levels"] = levels_used
            new["spike_producer"] = producer_text(measured_key[0])
            s = summaries[measured_key]
            if s["offlevel"] > 0:
                new["nonbinary_fraction"] = s["offlevel"]
                notes.append(f"{name}: {s['offlevel']:.2e} of the values of '{tensor_label(graph.tensors[measured_key[0]].name)}' "
                             "are not on the two spike levels; counted as spikes when above the midpoint")
            if row["unmapped_stride"] and measured_key[1] is None and measured_key[0] == direct:
                notes.append(f"{name}: R measured over the whole input, not only the positions the strided 1x1 "
                             f"conv reads ({row['unmapped_stride']})")
        out_rows.append(new)
    if keras_rows is not None:
        from s2nn_keras.firing import neuron_outputs
        from s2nn_keras.graph import LayerGraph

        order = {r["name"]: i for i, r in enumerate(keras_rows)}
        out_rows.sort(key=lambda r: order.get(r["name"], len(order)))
        spiking = bool(neuron_outputs(LayerGraph(keras_model, expand_nested=True)))
    report = assemble_report(out_rows, convention=convention, preset=preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                             spiking=spiking, source="tflite",
                             model_name=getattr(keras_model, "name", "tflite model"), n_examples=n_examples,
                             extra_notes=notes)
    report["quantization"] = quantization_of(graph)
    return report


def compare_rates(keras_report: dict, other_report: dict) -> dict:
    """Per-layer ``|R_keras - R_other|`` for the rows both reports measured.

    Returns ``{"max_abs_diff": float, "per_layer": {name: diff},
    "unmatched": [names]}``.
    """
    other = {r["name"]: r for r in other_report["layers"]}
    per_layer, unmatched = collections.OrderedDict(), []
    for row in keras_report["layers"]:
        o = other.get(row["name"])
        if o is None or (row["firing_rate"] is None) != (o["firing_rate"] is None):
            unmatched.append(row["name"])
            continue
        if row["firing_rate"] is not None:
            per_layer[row["name"]] = abs(row["firing_rate"] - o["firing_rate"])
    return {"max_abs_diff": max(per_layer.values()) if per_layer else 0.0, "per_layer": per_layer,
            "unmatched": unmatched}
