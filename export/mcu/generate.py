"""Writes the C of a lowered program: ``model.c`` / ``model.h``.

``model.c`` holds every constant as a ``const`` array (flash), one
parameter struct per layer, the activation buffer planned by
:mod:`export.mcu.plan` (``.bss``) and ``<prefix>_invoke()``, the kernels of
``export/mcu/c/s2mcu_*.c`` called in order. Each layer is generated in one
layout (:data:`export.mcu.lower.LAYOUTS`): ``dense`` (OHWI weights, the
bias carrying ``-zp * sum(w)``) or, for a conv reading a spike tensor, a
spike-driven one (HWIO weights; ``spike_list`` / ``spike_mask``).

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
from export.mcu.targets import guard, target as target_of

__all__ = ["GeneratedCode", "generate", "Kernel", "KERNELS", "emits", "layer_scratch", "spike_accumulator_bound",
           "division_magic"]

INT16_MAX = 32767
# s2_conv_t.flags (s2mcu.h)
S2_ACC16, S2_LIST_IN_PLACE, S2_DENSE_HWIO = 1, 2, 4


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
        self.const_bytes += int(np.asarray(values).size) * {"int8_t": 1, "int32_t": 4, "float": 4}[ctype]

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


def _conv_scratch(layer, layout, path, list_in_place):
    p = layer.params
    hw, lists = _spike_lists(p, list_in_place)
    if layout == DENSE:
        k = p["k_h"] * p["k_w"] * p["in_c"]
        return 3 * k + 8 if path == "dsp" else k + 16
    if layout == "spike_list":
        return ((hw * 2 + 3) & ~3) + lists + 64
    return hw * ((p["in_c"] + 31) // 32) * 4 + 64


_CONV_FIELDS = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "s_h", "s_w", "d_h", "d_w",
                "pad_t", "pad_l", "in_zp", "out_zp", "act_min", "act_max")


@emits("conv", scratch=_conv_scratch)
def _emit_conv(c: _Writer, layer, layout):
    p, w, tag = layer.params, layer.consts["w"], c.tag(layer)
    bias = layer.consts["bias"].astype(np.int64)
    flags = 0
    gain = 0
    if layout == DENSE:
        w_out = w
        bias = _wrap32(bias - int(p["in_zp"]) * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1))
        if p["k_h"] * p["k_w"] * p["in_c"] <= c.hwio_taps:
            w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO: per tap a row of output channels
            flags |= S2_DENSE_HWIO
    else:
        w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO
        bias = _wrap32(bias)
        gain = int(layer.spike[1]) - int(p["in_zp"])
        if spike_accumulator_bound(w) <= INT16_MAX:
            flags |= S2_ACC16
    if layer.index in c.in_place_lists:
        flags |= S2_LIST_IN_PLACE
    c.add_channel_consts(tag, w_out, bias, layer.consts)
    c.structs.append(f"static const s2_conv_t {tag} = {{{_fields(p, _CONV_FIELDS)}, .spike_gain = {gain}, "
                     f".flags = {flags},\n  .w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s}};\n")
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


@emits("dwconv", scratch=_dwconv_scratch, in_place=lambda l: _pointwise(l.params) and l.params["depth_mult"] == 1)
def _emit_dwconv(c: _Writer, layer, layout):
    p, w, tag = layer.params, layer.consts["w"], c.tag(layer)
    pointwise = int(_pointwise(p))
    bias = layer.consts["bias"].astype(np.int64)
    gain = 0
    if layout != DENSE:
        pointwise = 0
        gain = int(layer.spike[1]) - int(p["in_zp"])
    elif pointwise:
        bias = bias - int(p["in_zp"]) * w.reshape(-1).astype(np.int64)
    c.add_channel_consts(tag, w, _wrap32(bias), layer.consts)
    fields = _fields(p, _CONV_FIELDS[:12] + ("depth_mult",) + _CONV_FIELDS[12:])
    flags = S2_LIST_IN_PLACE if layer.index in c.in_place_lists else 0
    c.structs.append(f"static const s2_dwconv_t {tag} = {{{fields}, .pointwise = {pointwise}, "
                     f".spike_gain = {gain}, .flags = {flags},\n  .w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, "
                     f".shift = {tag}_s}};\n")
    if layout == DENSE:
        return f"s2_dwconv(&{tag}, {c.buf(layer.inputs[0])}, {c.buf(layer.outputs[0])});"
    c.check_scratch(layer, f"s2_dwconv_{layout}_scratch")
    return (f"{c.prefix}_fired[{layer.index}] = s2_dwconv_{layout}(&{tag}, {c.buf(layer.inputs[0])}, "
            f"{c.buf(layer.outputs[0])}, {c.scratch_ptr(layer.index)});")


@emits("add", in_place=lambda layer: True)
def _emit_add(c: _Writer, layer, layout):
    p, tag = layer.params, c.tag(layer)
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


# ------------------------------------------------------------------ files


def generate(program: Program, layouts: Union[str, Dict, None] = DENSE, target: str = "host",
             prefix: str = "s2_model", model_name: str = "model", in_place: bool = True,
             dense_hwio_taps: Optional[int] = None) -> GeneratedCode:
    """C source of ``program``.

    Args:
      layouts: one layout for every layer that has it (``"dense"``,
        ``"spike_list"``, ``"spike_mask"``) or ``{layer index or name: layout}``
        (others dense).
      target: ``"cortex-m55"``, ``"cortex-m4"`` or ``"host"``
        (:data:`export.mcu.targets.TARGETS`): the scratch sizes and the
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
    in_place_lists = {l.index for l in program.layers if chosen[l.index] == "spike_list" and _reads_last(program, l)}
    scratch = {l.index: layer_scratch(l, chosen[l.index], target, l.index in in_place_lists) for l in program.layers}
    plan = plan_memory(program, scratch, _in_place(program) if in_place else {})
    c = _Writer(program, plan, prefix, hwio_taps, in_place_lists)
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
