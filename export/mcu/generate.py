"""Writes the C of a lowered program: ``model.c`` / ``model.h``.

``model.c`` holds every constant as a ``const`` array (flash), one
parameter struct per layer, the activation buffer planned by
:mod:`export.mcu.plan` (``.bss``) and ``<prefix>_invoke()``, the kernels of
``export/mcu/c/s2mcu_*.c`` called in order. Each layer is generated in one
layout (:data:`export.mcu.lower.LAYOUTS`): ``dense`` (OHWI weights, the
bias carrying ``-zp * sum(w)``; on Helium and the DSP extension channel
pairs interleaved) or, for a conv reading a spike tensor, a spike-driven one
(``spike_list``: weights per block of output channels in the kernel path's
lane order; ``spike_mask``: HWIO). A layer writing a spike tensor gets
per-channel thresholds instead of requantization constants
(:mod:`export.mcu.spike_out`), and a spike tensor read only by
``spike_list`` convs is kept as a spike stream (``_spike_streams``).

``model.h`` declares the model's functions and describes its input and
output: bytes, shape, scale and zero point, and ``static inline`` helpers
that quantize a real input value and dequantize an output code, so a
program can feed an image and read a logit without the ``.tflite``. It
also stops the compilation for any target but the one the sources were
generated for (:func:`export.mcu.targets.guard`): the scratch sizes and
the dense HWIO layout are planned per kernel code path.

Each kernel family is one entry of :data:`KERNELS` (``@emits("conv")``):
its struct, constants and call, its scratch bytes and whether it may write
over its input. A new family is a new entry.

Example::

    from export.mcu.lower import lower
    from export.mcu.generate import generate
    program = lower(flatbuffer, spike_codes)
    code = generate(program, layouts="spike_list", target="cortex-m55")
    code.files["model.c"], code.files["model.h"], code.arena_bytes
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from export.mcu.lower import DENSE, LAYOUTS, Program
from export.mcu.plan import MemoryPlan, plan_memory
from export.mcu.spike_out import MVE_ADD_LANES, lane_order, param_order, spike_list_blocks
from export.mcu.targets import guard, target as target_of

__all__ = ["GeneratedCode", "generate", "Kernel", "KERNELS", "emits", "layer_scratch", "spike_accumulator_bound",
           "division_magic"]

INT16_MAX = 32767
# s2_conv_t.flags (s2mcu.h)
S2_ACC16, S2_LIST_IN_PLACE, S2_DENSE_HWIO = 1, 2, 4
S2_IN_STREAM, S2_OUT_CODES, S2_OUT_STREAM, S2_RQ_RIGHT, S2_DENSE_PAIRS = 8, 16, 32, 64, 128


@dataclasses.dataclass
class GeneratedCode:
    """``files``: ``{"model.c": text, "model.h": text}``; ``arena_bytes``: the
    activation buffer; ``layouts``: ``{layer index: layout}``; ``plan``: the
    :class:`~export.mcu.plan.MemoryPlan`; ``target``: what the sources
    compile for (:data:`export.mcu.targets.TARGETS`); ``const_bytes``: bytes
    of constant arrays (weights, biases, multipliers, shifts)."""

    files: Dict[str, str]
    arena_bytes: int
    layouts: Dict[int, str]
    plan: MemoryPlan
    target: str
    prefix: str
    const_bytes: int


@dataclasses.dataclass(frozen=True)
class Kernel:
    """How one kernel family (:attr:`export.mcu.lower.Layer.kind`) is generated.

    Attributes:
      emit: ``emit(writer, layer, layout) -> str``: adds the layer's
        constants and parameter struct to the writer, returns its call.
      scratch: ``scratch(layer, layout, kernel_path, list_in_place) -> bytes``
        of the kernel's scratch buffer (its ``*_scratch`` function in C),
        ``None``: none.
      in_place: ``in_place(layer) -> bool``: the kernel may write its
        output over input 0 (when that input dies there), ``None``: never.
    """

    emit: Callable
    scratch: Optional[Callable] = None
    in_place: Optional[Callable] = None


#: ``{kind: Kernel}``, filled by :func:`emits`.
KERNELS: Dict[str, Kernel] = {}


def emits(*kinds: str, scratch: Optional[Callable] = None, in_place: Optional[Callable] = None):
    """Registers the decorated function as the ``emit`` of the :class:`Kernel`
    of each of ``kinds``."""

    def register(fn):
        for kind in kinds:
            if kind in KERNELS:
                raise ValueError(f"kernel family {kind!r} is registered twice")
            KERNELS[kind] = Kernel(fn, scratch, in_place)
        return fn

    return register


def spike_accumulator_bound(w_ohwi: np.ndarray) -> int:
    """``max_c max(sum of positive weights, -sum of negative weights)``: the
    largest |S| any set of fired inputs can give a channel."""
    rows = w_ohwi.reshape(w_ohwi.shape[0], -1).astype(np.int64)
    return int(max(np.max(np.sum(np.maximum(rows, 0), axis=1)), np.max(-np.sum(np.minimum(rows, 0), axis=1))))


def layer_scratch(layer, layout: str, target: str, list_in_place: bool = False) -> int:
    """Scratch bytes of a layer's kernel on ``target`` (the ``*_scratch``
    functions of the C); ``list_in_place``: the spike lists overwrite the input."""
    kernel = KERNELS[layer.kind]
    if kernel.scratch is None:
        return 0
    return kernel.scratch(layer, layout, target_of(target).kernel_path, list_in_place)


def division_magic(n: int) -> Tuple[int, int]:
    """``(m, s)`` with ``floor(u / n) == (u * m) >> (32 + s)`` for every
    ``0 <= u <= 128 n + n // 2`` (the rounded sums of an int8 average pool
    over ``n`` taps), checked exhaustively; ``(0, 0)`` if none fits 32 bits."""
    if n <= 1:
        return 0, 0
    u = np.arange(128 * n + n // 2 + 1, dtype=np.uint64)
    for s in range(32):
        m = -(-(1 << (32 + s)) // n)
        if m >= 1 << 32:
            break
        if np.array_equal((u * np.uint64(m)) >> np.uint64(32 + s), u // np.uint64(n)):
            return int(m), s
    return 0, 0


def _c_array(ctype: str, name: str, values: np.ndarray, per_line: int = 24) -> str:
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind == "f":
        items = [_c_float(v) for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)] or ["0"]
    align = " __attribute__((aligned(4)))"
    return f"static const {ctype} {name}[{max(len(items), 1)}]{align} = {{\n  " + ",\n  ".join(lines) + "\n};\n"


def _c_float(value) -> str:
    """A float32 as a C ``float`` literal that reads back to the same value."""
    return f"{float(np.float32(value))!r}f"


def _wrap32(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.int64)
    return (((v + 2 ** 31) % 2 ** 32) - 2 ** 31).astype(np.int32)


def _fields(p, names) -> str:
    return ", ".join(f".{k} = {int(p[k])}" for k in names)


def _resolve_layouts(program: Program, layouts) -> Dict[int, str]:
    out = {}
    for layer in program.layers:
        if isinstance(layouts, dict):
            choice = layouts.get(layer.index, layouts.get(layer.name, DENSE))
        else:
            choice = layouts or DENSE
        if choice not in LAYOUTS:
            raise ValueError(f"unknown layout {choice!r}; valid: {', '.join(LAYOUTS)}")
        out[layer.index] = choice if choice in layer.layouts else DENSE
    return out


def _reads_last(program: Program, layer) -> bool:
    """The layer is the last reader of its (int8, <= 256-channel) input, which
    is neither the model input nor its output: its spike lists may overwrite it."""
    root = program.root(layer.inputs[0])
    if root in (program.root(program.input), program.root(program.output)) or layer.params.get("in_c", 0) > 256:
        return False
    readers = [l.index for l in program.layers if any(program.root(t) == root for t in l.inputs)]
    return max(readers) == layer.index


def _in_place(program: Program) -> Dict[int, int]:
    """``{layer index: input tensor}`` of the layers that may write over input 0."""
    out = {}
    for layer in program.layers:
        kernel = KERNELS[layer.kind]
        if kernel.in_place is not None and kernel.in_place(layer):
            out[layer.index] = layer.inputs[0]
    return out


class _Writer:
    """The pieces of ``model.c`` as the layers add them."""

    def __init__(self, program: Program, plan: MemoryPlan, prefix: str, hwio_taps: int, in_place_lists):
        self.program, self.plan, self.prefix = program, plan, prefix
        self.hwio_taps, self.in_place_lists = hwio_taps, in_place_lists
        self.arrays: List[str] = []
        self.structs: List[str] = []
        self.checks: List[str] = []
        self.const_bytes = 0

    def buf(self, t) -> str:
        """The activation tensor ``t`` in the buffer."""
        return f"({self.prefix}_arena + {self.plan.offset('t' + str(self.program.root(t)))})"

    def scratch_ptr(self, i) -> str:
        return f"({self.prefix}_arena + {self.plan.blocks[f's{i}'].offset})" if f"s{i}" in self.plan.blocks else "0"

    def scratch_size(self, i) -> int:
        return self.plan.blocks[f"s{i}"].size if f"s{i}" in self.plan.blocks else 0

    def tag(self, layer) -> str:
        return f"{self.prefix}_L{layer.index}"

    def add_array(self, ctype, name, values):
        self.arrays.append(_c_array(ctype, name, values))
        self.const_bytes += int(np.asarray(values).size) * {"int8_t": 1, "int16_t": 2, "int32_t": 4, "float": 4}[ctype]

    def add_channel_consts(self, tag, w, bias, c):
        """Weights, bias and per-channel multipliers and shifts of a conv."""
        self.add_array("int8_t", f"{tag}_w", w)
        self.add_array("int32_t", f"{tag}_b", bias)
        self.add_array("int32_t", f"{tag}_m", c["mult"])
        self.add_array("int8_t", f"{tag}_s", c["shift"])

    def check_scratch(self, layer, function):
        """``<prefix>_check()`` compares the kernel's own scratch size with the plan."""
        self.checks.append(f"  if ({function}(&{self.tag(layer)}) > {self.scratch_size(layer.index)}u) "
                           f"return {layer.index + 1};")


# ------------------------------------------------------------- the kernels


def _spike_lists(p, list_in_place):
    hw = p.get("in_h", 0) * p.get("in_w", 0)
    lists = 0 if list_in_place else hw * p.get("in_c", 0) * (2 if p.get("in_c", 0) > 256 else 1)
    return hw, lists


def _stream_producer(layer, layout: str, path: str, channels: int) -> bool:
    """The layer's kernel can write its spike output as a stream (s2mcu.h)."""
    if layer.spike_out is None:
        return False
    if layer.kind == "conv":
        return layout == "spike_list"
    if layer.kind == "dwconv":
        return "t8" in layer.consts
    return layer.kind == "add" and (path != "mve" or channels % 16 == 0)


def _spike_streams(program: Program, chosen, path: str) -> Dict[int, np.ndarray]:
    """``{tensor: channel order}`` of the spike tensors kept as spike streams:
    written by a kernel with thresholds and read only by spike_list convs of
    the same shape (no int8 codes, no encoding pass). The order maps each
    stream channel index to the tensor's channel (Helium's fused ADD lists
    them in its lane order; the readers' weights follow it). Also sets each
    conv, dwconv and add layer's ``params["in_stream"]`` and ``["out_stream"]``."""
    streams = {}
    out_root = program.root(program.output)
    for layer in program.layers:
        t = program.root(layer.outputs[0])
        shape = program.tensors[t].shape
        if t == out_root or len(shape) != 4 or shape[-1] > 255:
            continue
        if not _stream_producer(layer, chosen[layer.index], path, shape[-1]):
            continue
        readers = [l for l in program.layers if any(program.root(x) == t for x in l.inputs)]
        if readers and all(r.kind == "conv" and chosen[r.index] == "spike_list" and program.root(r.inputs[0]) == t
                           and (r.params["in_h"], r.params["in_w"], r.params["in_c"]) == tuple(shape[1:])
                           for r in readers):
            order = np.arange(shape[-1])
            if layer.kind == "add" and path == "mve":
                order = (order // 16) * 16 + MVE_ADD_LANES[order % 16]
            streams[t] = order
    for layer in program.layers:
        if layer.kind in ("conv", "dwconv", "add"):
            layer.params["in_stream"] = int(program.root(layer.inputs[0]) in streams)
            layer.params["out_stream"] = int(program.root(layer.outputs[0]) in streams)
    return streams


def _stream_sizes(program: Program, streams) -> Dict[int, int]:
    """Bytes of each spike stream: at most one count and C channels per pixel."""
    return {t: int(np.prod(program.tensors[t].shape[:3])) * (program.tensors[t].shape[3] + 1) for t in streams}


def _conv_scratch(layer, layout, path, list_in_place):
    p = layer.params
    if layout == DENSE:
        k = p["k_h"] * p["k_w"] * p["in_c"]
        if path == "dsp":   # two widened columns (+ the int8 column when in_c % 4)
            k4 = (k + 3) // 4 * 4
            return 4 * k4 + (k4 if p["in_c"] % 4 else 0)
        if path == "mve":   # three im2col columns, or a row of zero points (in_c % 16 == 0: taps read in place)
            return 3 * ((k + 15) // 16 * 16) if p["in_c"] % 16 else p["in_c"]
        return k + 16
    if layout == "spike_list":   # the input encoded as a stream, unless its producer wrote one
        return 0 if p.get("in_stream") else p["in_h"] * p["in_w"] * (p["in_c"] + 1)
    return p["in_h"] * p["in_w"] * ((p["in_c"] + 31) // 32) * 4 + 64


_CONV_FIELDS = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "s_h", "s_w", "d_h", "d_w",
                "pad_t", "pad_l", "in_zp", "out_zp", "act_min", "act_max")


def _spike_list_weights(w_ohwi, blk: int, path: str, acc16: bool, order) -> np.ndarray:
    """spike_list weights: per block of ``blk`` output channels
    ``[taps][in_c][blk]`` in the kernel path's lane order (s2mcu_spike.c),
    input channels in the stream's order."""
    oc, kh, kw, ic = w_ohwi.shape
    rows = np.transpose(w_ohwi, (1, 2, 3, 0)).reshape(kh * kw, ic, oc)
    if order is not None:
        rows = rows[:, order, :]
    parts = []
    for oc0 in range(0, oc, blk):
        sub = rows[:, :, oc0:oc0 + blk]
        lanes = lane_order(path, blk, sub.shape[2], acc16)
        parts.append((sub if lanes is None else sub[:, :, lanes]).reshape(-1))
    return np.concatenate(parts)


def _dense_pairs(rows: np.ndarray, chunk: int) -> np.ndarray:
    """Dense weights of the Helium and DSP kernels (S2_DENSE_PAIRS): per pair
    of output channels, per ``chunk`` inputs, ``chunk`` weights of each (the
    inputs padded to a multiple of ``chunk``, an odd last channel paired with
    zeros)."""
    oc, k = rows.shape
    padded = np.zeros((oc + oc % 2, -(-k // chunk) * chunk), np.int8)
    padded[:oc, :k] = rows
    pairs = padded.reshape(padded.shape[0] // 2, 2, -1, chunk)
    return np.ascontiguousarray(pairs.transpose(0, 2, 1, 3)).reshape(-1)


def _block_params(path: str, oc: int, blk: int, acc16: bool) -> np.ndarray:
    """The order of bias, multiplier and shift of a requantizing spike_list conv
    (Helium's int16 blocks widen even lanes, then odd lanes)."""
    perm = np.arange(oc)
    for oc0 in range(0, oc, blk):
        order = param_order(path, blk, min(blk, oc - oc0), acc16)
        if order is not None:
            perm[oc0:oc0 + blk] = oc0 + order
    return perm


def _neg_thresholds16(path: str, ts: np.ndarray, blk: int, acc16: bool) -> np.ndarray:
    """``-thr`` in each full block's accumulator order (Helium: its lanes; the
    Cortex-M4: per register k the pair channel k, k + 8), int16."""
    out = np.zeros(len(ts), np.int64)
    for oc0 in range(0, len(ts), blk):
        nb = min(blk, len(ts) - oc0)
        lanes = lane_order(path, blk, nb, acc16)
        if lanes is None and path == "mve" and acc16 and nb == blk == 8:
            lanes = np.arange(8)   # one vector of 8: natural order
        if lanes is None:
            continue
        if path == "dsp":
            lanes = np.stack([np.arange(8), np.arange(8) + 8], axis=1).reshape(-1)
        out[oc0:oc0 + nb] = -ts[oc0 + lanes]
    return out


def _acc16_spikes(w_ohwi, ts) -> bool:
    """int16 sums starting at -thr stay exact: every S - thr and -thr fit int16."""
    rows = w_ohwi.reshape(w_ohwi.shape[0], -1).astype(np.int64)
    s_lo, s_hi = np.minimum(rows, 0).sum(axis=1), np.maximum(rows, 0).sum(axis=1)
    return bool(np.all(s_hi - ts <= INT16_MAX) and np.all(s_lo - ts >= -INT16_MAX - 1) and
                np.all(np.abs(ts) <= INT16_MAX))


def _rq_right(shift, bias, span) -> bool:
    """S2_RQ_RIGHT: every shift <= -1 and |acc| < 2^30 (``span``: the most the
    inputs add to |bias|)."""
    return bool(np.all(np.asarray(shift) <= -1) and np.max(np.abs(np.asarray(bias, np.int64)) + span) < 2 ** 30)


def _spike_fields(c: _Writer, tag: str, layer, thr, thr16=None) -> str:
    """The spike-output fields of a conv or dwconv struct (0 when it requantizes)."""
    if layer.spike_out is None:
        return ".out_off = 0, .out_on = 0, .thr = 0"
    out = f".out_off = {layer.spike_out[0]}, .out_on = {layer.spike_out[1]}, .thr = 0"
    if thr is not None:
        c.add_array("int32_t", f"{tag}_t", np.clip(thr, -2 ** 31, 2 ** 31 - 1))
        out = out.replace(".thr = 0", f".thr = {tag}_t")
    if thr16 is not None:
        c.add_array("int16_t", f"{tag}_t16", thr16)
        out += f", .thr16 = {tag}_t16"
    return out


def _out_flags(layer) -> int:
    if layer.spike_out is None:
        return 0
    return S2_OUT_STREAM if layer.params.get("out_stream") else S2_OUT_CODES


@emits("conv", scratch=_conv_scratch)
def _emit_conv(c: _Writer, layer, layout):
    """Dense: OHWI weights, bias - in_zp sum(w). spike_mask: HWIO. spike_list:
    block-major weights in the lane order of the target's kernel
    (:func:`_spike_list_weights`). A spike output (``layer.spike_out``) is a
    threshold per channel (export/mcu/spike_out.py): on the sum of the fired
    weights in the spike layouts, on the accumulator ``bias + gain S`` in the
    dense one; the requantization constants are then not emitted."""
    p, w, tag, k = layer.params, layer.consts["w"], c.tag(layer), layer.consts
    bias = k["bias"].astype(np.int64)
    oc = int(p["out_c"])
    flags, gain, blk, thr, thr16 = _out_flags(layer), 0, 0, None, None
    perm = np.arange(oc)
    rows = w.reshape(oc, -1).astype(np.int64)
    if layout == DENSE:
        w_out = w
        bias = bias - int(p["in_zp"]) * rows.sum(axis=1)
        if c.path in ("mve", "dsp"):   # several pixels per weight load: channel pairs interleaved
            w_out = _dense_pairs(rows, 16 if c.path == "mve" else 4)
            flags |= S2_DENSE_PAIRS
        elif p["k_h"] * p["k_w"] * p["in_c"] <= c.hwio_taps:
            w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO: per tap a row of output channels
            flags |= S2_DENSE_HWIO
        span = 255 * np.abs(rows).sum(axis=1)
        if layer.spike_out is not None:
            thr = k["acc_thr"] if layer.spike is None else k["bias"].astype(np.int64) + (
                int(layer.spike[1]) - int(p["in_zp"])) * k["spike_thr"]
    else:
        gain = int(layer.spike[1]) - int(p["in_zp"])
        span = gain * np.abs(rows).sum(axis=1)
        ts = k.get("spike_thr") if layer.spike_out is not None else None
        # int16 sums: spike_list's start at -thr (S - thr must fit), spike_mask's at 0 (S must)
        starts_at_thr = ts is not None and layout == "spike_list"
        acc16 = _acc16_spikes(w, ts) if starts_at_thr else spike_accumulator_bound(w) <= INT16_MAX
        flags |= S2_ACC16 if acc16 else 0
        thr = ts
        if layout == "spike_mask":
            w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO
        else:
            blk = spike_list_blocks(c.path, oc, acc16)
            w_out = _spike_list_weights(w, blk, c.path, acc16, c.streams.get(c.program.root(layer.inputs[0])))
            flags |= S2_IN_STREAM if p.get("in_stream") else 0
            if ts is not None:
                thr16 = _neg_thresholds16(c.path, ts, blk, acc16)
                if c.path in ("mve", "dsp") and acc16 and oc % blk == 0 and p["d_w"] == 1:
                    thr = None   # every block takes the int16 path: -thr in thr16 only
            else:
                perm = _block_params(c.path, oc, blk, acc16)
    consts = ".bias = 0, .mult = 0, .shift = 0"
    if layer.spike_out is None or layout == DENSE:   # the dense kernel's accumulator starts at the bias
        c.add_array("int32_t", f"{tag}_b", _wrap32(bias)[perm])
        consts = f".bias = {tag}_b, .mult = 0, .shift = 0"
    if layer.spike_out is None:
        c.add_array("int32_t", f"{tag}_m", k["mult"][perm])
        c.add_array("int8_t", f"{tag}_s", k["shift"][perm])
        consts = f".bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s"
        flags |= S2_RQ_RIGHT if _rq_right(k["shift"], bias, span) else 0
    c.add_array("int8_t", f"{tag}_w", w_out)
    c.structs.append(f"static const s2_conv_t {tag} = {{{_fields(p, _CONV_FIELDS)}, .spike_gain = {gain}, "
                     f".flags = {flags},\n  .w = {tag}_w, {consts}, .blk = {blk}, "
                     f"{_spike_fields(c, tag, layer, thr, thr16)}}};\n")
    fn = "dense" if layout == DENSE else layout
    c.check_scratch(layer, f"s2_conv_{fn}_scratch")
    args = f"&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])}, {c.scratch_ptr(layer.index)}"
    if layout == DENSE:
        return f"s2_conv_dense({args});"
    return f"{c.prefix}_fired[{layer.index}] = s2_conv_{layout}({args});"


def _dwconv_scratch(layer, layout, path, list_in_place):
    if layout == DENSE:
        return 0
    hw, lists = _spike_lists(layer.params, list_in_place)
    return ((hw * 2 + 3) & ~3) + ((lists + 3) & ~3) + 4 * layer.params["out_c"] + 64


def _pointwise(p) -> bool:
    """1x1, stride 1, no padding."""
    return p["k_h"] == p["k_w"] == p["s_h"] == p["s_w"] == 1 and p["pad_t"] == p["pad_l"] == 0


def _dw_in_place(layer) -> bool:
    return _pointwise(layer.params) and layer.params["depth_mult"] == 1 and not layer.params.get("out_stream")


@emits("dwconv", scratch=_dwconv_scratch, in_place=_dw_in_place)
def _emit_dwconv(c: _Writer, layer, layout):
    """HWC weights; a spike output from a 1x1 neuron compares its int8 input
    (``t8``, ``neg8``, ``never8``: export/mcu/spike_out.py), else thresholds on
    the sum of the fired weights (spike_list) or on the accumulator (dense)."""
    p, w, tag, k = layer.params, layer.consts["w"], c.tag(layer), layer.consts
    pointwise = int(_pointwise(p))
    bias = k["bias"].astype(np.int64)
    gain = 0
    flags = S2_LIST_IN_PLACE if layer.index in c.in_place_lists else 0
    flags |= _out_flags(layer)
    thr = None
    neuron = ""
    if layout != DENSE:
        pointwise = 0
        gain = int(layer.spike[1]) - int(p["in_zp"])
        thr = k.get("spike_thr")
    elif layer.spike_out is not None and "t8" in k:
        c.add_array("int8_t", f"{tag}_t8", k["t8"])
        neuron = f", .t8 = {tag}_t8"
        for key, values in (("neg8", k["neg8"]), ("never8", k["never8"])):
            if np.any(values):
                c.add_array("int8_t", f"{tag}_{key}", np.asarray(values, np.int64))
                neuron += f", .{key} = {tag}_{key}"
    elif layer.spike_out is not None:
        thr = k["acc_thr"] if layer.spike is None else bias + (
            int(layer.spike[1]) - int(p["in_zp"])) * k["spike_thr"]
    if pointwise and layout == DENSE:
        bias = bias - int(p["in_zp"]) * w.reshape(-1).astype(np.int64)
    if layer.spike_out is None:
        c.add_channel_consts(tag, w, _wrap32(bias), layer.consts)
        consts = f".w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s"
    elif neuron:
        consts = ".w = 0, .bias = 0, .mult = 0, .shift = 0"
    else:   # thresholds on the accumulator (dense) or on the sum of the fired weights
        c.add_array("int8_t", f"{tag}_w", w)
        c.add_array("int32_t", f"{tag}_b", _wrap32(bias))
        consts = f".w = {tag}_w, .bias = {tag}_b, .mult = 0, .shift = 0"
    fields = _fields(p, _CONV_FIELDS[:12] + ("depth_mult",) + _CONV_FIELDS[12:])
    c.structs.append(f"static const s2_dwconv_t {tag} = {{{fields}, .pointwise = {pointwise}, "
                     f".spike_gain = {gain}, .flags = {flags},\n  {consts}, "
                     f"{_spike_fields(c, tag, layer, thr) if thr is not None else _codes(layer)}{neuron}}};\n")
    if layout == DENSE:
        fn = "s2_dwconv_neuron" if neuron else "s2_dwconv"
        return f"{fn}(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])});"
    c.check_scratch(layer, f"s2_dwconv_{layout}_scratch")
    return (f"{c.prefix}_fired[{layer.index}] = s2_dwconv_{layout}(&{tag}, {c.buf(layer.inputs[0])}, "
            f"{c.buf(layer.outputs[0])}, {c.scratch_ptr(layer.index)});")


def _codes(layer) -> str:
    off, on = layer.spike_out or (0, 0)
    return f".out_off = {off}, .out_on = {on}"


@emits("add", in_place=lambda layer: not layer.params.get("out_stream"))
def _emit_add(c: _Writer, layer, layout):
    """TFLite's ADD; fused with the 1x1 depthwise neuron that reads it
    (``layer.spike_out``), ``s2_add_spike``: a threshold on the ADD's sum
    (export/mcu/spike_out.py), codes or a spike stream."""
    p, tag = layer.params, c.tag(layer)
    if layer.spike_out is not None:
        a, b = layer.inputs[p["a_input"]], layer.inputs[1 - p["a_input"]]
        channels = int(p["channels"])
        c.add_array("int32_t", f"{tag}_k", layer.consts["k"])
        neg = "0"
        if np.any(layer.consts["s_neg"]):
            c.add_array("int8_t", f"{tag}_n", -np.asarray(layer.consts["s_neg"], np.int64))
            neg = f"{tag}_n"
        c.structs.append(f"static const s2_add_spike_t {tag} = {{.pixels = {p['size'] // channels}, "
                         f".c = {channels}, .b_zp = {int(p['b_zp'])}, .m = {int(p['m'])}, .sh = {int(p['sh'])}, "
                         f"{_codes(layer)}, .flags = {_out_flags(layer)}, .k = {tag}_k, .neg = {neg}}};\n")
        return f"s2_add_spike(&{tag}, {c.buf(a)}, {c.buf(b)}, {c.buf(layer.outputs[0])});"
    fields = ", ".join(f".{k} = {int(p[v])}" for k, v in (
        ("size", "size"), ("in1_zp", "in_zp"), ("in2_zp", "in2_zp"), ("out_zp", "out_zp"), ("act_min", "act_min"),
        ("act_max", "act_max"), ("left_shift", "left_shift"), ("s1", "s1"), ("s2", "s2"), ("so", "so"),
        ("m1", "m1"), ("m2", "m2"), ("mo", "mo")))
    c.structs.append(f"static const s2_add_t {tag} = {{{fields}}};\n")
    return f"s2_add(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.inputs[1])}, {c.buf(layer.outputs[0])});"


@emits("avgpool", "maxpool")
def _emit_pool(c: _Writer, layer, layout):
    p, tag = layer.params, c.tag(layer)
    fields = _fields(p, ("in_h", "in_w", "c", "out_h", "out_w", "k_h", "k_w", "s_h", "s_w", "pad_t", "pad_l",
                         "act_min", "act_max"))
    div_m, div_s = division_magic(p["k_h"] * p["k_w"]) if layer.kind == "avgpool" else (0, 0)
    c.structs.append(f"static const s2_pool_t {tag} = {{{fields}, .div_m = {div_m}u, .div_s = {div_s}}};\n")
    return f"s2_{layer.kind}(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])});"


@emits("mean", scratch=lambda layer, layout, path, list_in_place: 4 * layer.params["inner"])
def _emit_mean(c: _Writer, layer, layout):
    tag = c.tag(layer)
    fields = _fields(layer.params, ("outer", "reduce", "inner", "in_zp", "out_zp", "mult", "shift"))
    c.structs.append(f"static const s2_mean_t {tag} = {{{fields}}};\n")
    return (f"s2_mean(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])}, "
            f"(int32_t *){c.scratch_ptr(layer.index)});")


#: the call of each boundary kernel: (function, cast of the input, cast of the output)
_QUANT_CALLS = {"quantize": ("s2_quantize", "(const float *)", ""), "requantize": ("s2_requantize", "", ""),
                "dequantize": ("s2_dequantize", "", "(float *)")}


@emits("quantize", "dequantize")
@emits("requantize", in_place=lambda layer: True)
def _emit_quant(c: _Writer, layer, layout):
    p, tag = layer.params, c.tag(layer)
    scale = float(layer.consts["scale"][0]) if "scale" in layer.consts else 1.0
    fields = ", ".join(f".{k} = {int(p.get(k, 0))}" for k in ("size", "in_zp", "out_zp", "mult", "shift"))
    c.structs.append(f"static const s2_quant_t {tag} = {{{fields}, .scale = {_c_float(scale)}}};\n")
    fn, cast_in, cast_out = _QUANT_CALLS[layer.kind]
    return f"{fn}(&{tag}, {cast_in}{c.buf(layer.inputs[0])}, {cast_out}{c.buf(layer.outputs[0])});"


# ------------------------------------------- shapes, broadcasts, more ops


def _operand_pointers(c: _Writer, layer, keys, tensors) -> List[str]:
    """The C pointer of each operand ``keys`` of a layer: ``<tag>_<key>``
    (a constant in flash: ``params[key + "_const"]``) or the next of ``tensors``."""
    tensors, tag, out = iter(tensors), c.tag(layer), []
    for key in keys:
        if layer.params[f"{key}_const"]:
            c.add_array("int8_t", f"{tag}_{key}", layer.consts[key])
            out.append(f"{tag}_{key}")
        else:
            out.append(c.buf(next(tensors)))
    return out


_BINARY_FIELDS = ("a_zp", "b_zp", "out_zp", "act_min", "act_max", "op", "left_shift", "s1", "s2", "so", "m1", "m2",
                  "mo")


@emits("binary", in_place=lambda layer: bool(layer.params["a_full"]))
def _emit_binary(c: _Writer, layer, layout):
    p, tag = layer.params, c.tag(layer)
    a, b = _operand_pointers(c, layer, ("a", "b"), layer.inputs)
    dims = {k: ", ".join(str(int(p[f"{k}{i}"])) for i in range(4)) for k in ("n", "sa", "sb")}
    c.structs.append(f"static const s2_binary_t {tag} = {{.shape = {{{dims['n']}}}, .a_stride = {{{dims['sa']}}}, "
                     f".b_stride = {{{dims['sb']}}},\n  {_fields(p, _BINARY_FIELDS)}}};\n")
    return f"s2_binary(&{tag}, {a}, {b}, {c.buf(layer.outputs[0])});"


@emits("select")
def _emit_select(c: _Writer, layer, layout):
    tag = c.tag(layer)
    x, y = _operand_pointers(c, layer, ("x", "y"), layer.inputs[1:])
    c.structs.append(f"static const s2_select_t {tag} = {{{_fields(layer.params, ('size', 'x_step', 'y_step'))}}};\n")
    return f"s2_select(&{tag}, {c.buf(layer.inputs[0])}, {x}, {y}, {c.buf(layer.outputs[0])});"


@emits("concat")
def _emit_concat(c: _Writer, layer, layout):
    p, tag = layer.params, c.tag(layer)
    pointers = []
    for i in range(p["count"]):
        if p[f"src{i}"] < 0:
            c.add_array("int8_t", f"{tag}_k{i}", layer.consts[f"k{i}"])
            pointers.append(f"{tag}_k{i}")
        else:
            pointers.append(c.buf(p[f"src{i}"]))
    c.add_array("int32_t", f"{tag}_n", layer.consts["sizes"])
    c.structs.append(f"static const int8_t *const {tag}_in[{p['count']}] = {{{', '.join(pointers)}}};\n"
                     f"static const s2_concat_t {tag} = {{{_fields(p, ('outer', 'count'))}, .sizes = {tag}_n, "
                     f".inputs = {tag}_in}};\n")
    return f"s2_concat(&{tag}, {c.buf(layer.outputs[0])});"


@emits("resize")
def _emit_resize(c: _Writer, layer, layout):
    tag = c.tag(layer)
    c.add_array("int32_t", f"{tag}_y", layer.consts["ys"])
    c.add_array("int32_t", f"{tag}_x", layer.consts["xs"])
    fields = _fields(layer.params, ("batch", "in_h", "in_w", "c", "out_h", "out_w"))
    c.structs.append(f"static const s2_resize_t {tag} = {{{fields}, .ys = {tag}_y, .xs = {tag}_x}};\n")
    return f"s2_resize_nearest(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])});"


_TCONV_FIELDS = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "s_h", "s_w", "pad_t", "pad_l",
                 "in_zp", "out_zp", "act_min", "act_max")


@emits("tconv", scratch=lambda layer, layout, path, list_in_place: 4 * layer.params["out_c"] + 16)
def _emit_tconv(c: _Writer, layer, layout):
    """Weights HWIO (per tap and input channel a row of output channels); the
    spike layout adds the rows of the inputs that fired, times the gain once."""
    p, tag = layer.params, c.tag(layer)
    spike = layout != DENSE
    gain = int(layer.spike[1]) - int(p["in_zp"]) if spike else 0
    w = np.transpose(layer.consts["w"], (1, 2, 3, 0))
    c.add_channel_consts(tag, w, _wrap32(layer.consts["bias"]), layer.consts)
    c.structs.append(f"static const s2_tconv_t {tag} = {{{_fields(p, _TCONV_FIELDS)}, .spike_gain = {gain}, "
                     f".flags = {int(spike)},\n  .w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s}};\n")
    c.check_scratch(layer, "s2_tconv_scratch")
    return (f"{c.prefix}_fired[{layer.index}] = s2_tconv(&{tag}, {c.buf(layer.inputs[0])}, "
            f"{c.buf(layer.outputs[0])}, {c.scratch_ptr(layer.index)});")


@emits("reduce_max")
def _emit_reduce_max(c: _Writer, layer, layout):
    tag = c.tag(layer)
    c.structs.append(f"static const s2_reduce_t {tag} = {{{_fields(layer.params, ('outer', 'reduce', 'inner'))}}};\n")
    return f"s2_reduce_max(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])});"


# ------------------------------------------------------------------ files


def generate(program: Program, layouts: Union[str, Dict, None] = DENSE, target: str = "host",
             prefix: str = "s2_model", model_name: str = "model", in_place: bool = True,
             dense_hwio_taps: Optional[int] = None) -> GeneratedCode:
    """C source of ``program``.

    Args:
      layouts: one layout for every layer that has it (``"dense"``,
        ``"spike_list"``, ``"spike_mask"``) or ``{layer index or name: layout}``
        (others dense).
      target: a name of :data:`export.mcu.targets.TARGETS` (a Cortex-M,
        ``"generic"`` or ``"host"``): the scratch sizes and the
        dense HWIO layout are planned for its kernel code path, and the
        sources compile for it only (``model.h``'s ``#error``).
      prefix: of the generated symbols (``<prefix>_invoke``; the board and
        host harnesses call ``s2_model_*``).
      in_place: let elementwise layers write over an input that dies there.
      dense_hwio_taps: overrides the target's
        :attr:`~export.mcu.targets.Target.dense_hwio_taps`.
    """
    spec = target_of(target)
    hwio_taps = spec.dense_hwio_taps if dense_hwio_taps is None else int(dense_hwio_taps)
    if hwio_taps and spec.kernel_path == "dsp":
        raise ValueError(f"the {target} (DSP) kernels have no HWIO dense path; dense_hwio_taps must be 0 there")
    chosen = _resolve_layouts(program, layouts)
    streams = _spike_streams(program, chosen, spec.kernel_path)
    in_place_lists = {l.index for l in program.layers if chosen[l.index] == "spike_list" and _reads_last(program, l)}
    scratch = {l.index: layer_scratch(l, chosen[l.index], target, l.index in in_place_lists) for l in program.layers}
    plan = plan_memory(program, scratch, _in_place(program) if in_place else {}, _stream_sizes(program, streams))
    c = _Writer(program, plan, prefix, hwio_taps, in_place_lists)
    c.path, c.streams = spec.kernel_path, streams
    calls = []
    for layer in program.layers:
        c.structs.append(f"/* layer {layer.index}: {layer.op} {layer.name} ({chosen[layer.index]}) */\n")
        calls.append(KERNELS[layer.kind].emit(c, layer, chosen[layer.index]))
    files = {"model.c": _model_c(program, c, chosen, calls, model_name),
             "model.h": _model_h(program, plan, spec.name, prefix, model_name)}
    return GeneratedCode(files, plan.arena_bytes, chosen, plan, spec.name, prefix, c.const_bytes)


def _model_c(program: Program, c: _Writer, chosen, calls, model_name) -> str:
    P, plan, n = c.prefix, c.plan, len(program.layers)
    in_off, out_off = plan.offset(f"t{program.root(program.input)}"), plan.offset(f"t{program.root(program.output)}")
    names = ", ".join(f'"{l.name}"' for l in program.layers)
    ops = ", ".join(f'"{l.op}"' for l in program.layers)
    lay_names = ", ".join(f'"{chosen[l.index]}"' for l in program.layers)
    body = "\n".join(f"  S2_LAYER_MARK({l.index});\n  {call}" for l, call in zip(program.layers, calls))
    return f"""/* Generated by export.mcu from {model_name}: do not edit.
 * {n} layers, activation buffer {plan.arena_bytes} bytes, constants {c.const_bytes} bytes. */
#include "s2mcu.h"
#include "model.h"

static int8_t {P}_arena[{max(plan.arena_bytes, 16)}] __attribute__((aligned(16)));
volatile uint32_t {P}_fired[{n}];
const char *const {P}_layer_names[{n}] = {{{names}}};
const char *const {P}_layer_ops[{n}] = {{{ops}}};
const char *const {P}_layer_layouts[{n}] = {{{lay_names}}};

{"".join(c.arrays)}
{"".join(c.structs)}
void *{P}_input(void) {{ return {P}_arena + {in_off}; }}
const void *{P}_output(void) {{ return {P}_arena + {out_off}; }}

int {P}_check(void) {{
{chr(10).join(c.checks)}
  return 0;
}}

void {P}_invoke(void) {{
{body}
  S2_LAYER_MARK({n});
}}
"""


def _tensor_macros(P: str, role: str, t) -> str:
    """``<P>_<ROLE>_*``: bytes, float or int8, shape, and an int8 tensor's
    scale, zero point and real-number helper."""
    R = f"{P.upper()}_{role.upper()}"
    shape = ", ".join(str(int(s)) for s in t.shape)
    lines = [f"#define {R}_BYTES {t.nbytes}",
             f"#define {R}_FLOAT {int(t.dtype == 'float32')}",
             f"#define {R}_RANK {len(t.shape)}",
             f"#define {R}_SHAPE {{{shape}}}",
             f"#define {R}_SIZE {int(np.prod(t.shape))}"]
    if t.dtype == "float32":
        return "\n".join(lines) + f"\n/* The {role} is float32: no quantization. */\n"
    lines += [f"#define {R}_SCALE {_c_float(t.scale)}", f"#define {R}_ZERO_POINT {int(t.zero_point)}"]
    if role == "input":
        lines.append(f"/* A real {role} value as its int8 code (export.tflite.runtimes.quantize: the export's "
                     "verification feeds these codes to TFLite Micro). */\n"
                     f"static inline int8_t {P}_quantize_input(float x) {{\n"
                     f"  return s2_quantize_real(x, {R}_SCALE, {R}_ZERO_POINT);\n}}")
    else:
        lines.append(f"/* The real value of an int8 {role} code (export.tflite.runtimes.dequantize). */\n"
                     f"static inline float {P}_dequantize_output(int8_t q) {{\n"
                     f"  return s2_dequantize_real(q, {R}_SCALE, {R}_ZERO_POINT);\n}}")
    return "\n".join(lines) + "\n"


def _model_h(program: Program, plan: MemoryPlan, target: str, P: str, model_name: str) -> str:
    n = len(program.layers)
    t_in, t_out = program.tensors[program.root(program.input)], program.tensors[program.output]
    return f"""/* Generated by export.mcu from {model_name} for {target}: do not edit. */
#ifndef {P.upper()}_H
#define {P.upper()}_H
#include <stdint.h>
#include "s2mcu.h"

{guard(target, P)}
#define {P.upper()}_ARENA_BYTES {plan.arena_bytes}
#define {P.upper()}_LAYERS {n}

/* The input tensor ({t_in.dtype}). */
{_tensor_macros(P, "input", t_in)}
/* The output tensor ({t_out.dtype}). */
{_tensor_macros(P, "output", t_out)}
#ifdef __cplusplus
extern "C" {{
#endif
/* The model's input and output bytes inside the activation buffer. */
void *{P}_input(void);
const void *{P}_output(void);
/* One inference: reads the input, writes the output. */
void {P}_invoke(void);
/* Per layer: how many input values fired in the last inference (spike-driven layers; 0 for the others). */
extern volatile uint32_t {P}_fired[{n}];
extern const char *const {P}_layer_names[{n}];
extern const char *const {P}_layer_ops[{n}];
extern const char *const {P}_layer_layouts[{n}];
/* Scratch-size self-check (host tests): 0 if every kernel's scratch fits its plan. */
int {P}_check(void);
#ifdef __cplusplus
}}
#endif
#endif
"""
