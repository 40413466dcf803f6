"""Writes the C of a lowered program: ``model.c`` / ``model.h``.

``model.c`` holds every constant as a ``const`` array (flash), one
parameter struct per layer, the activation buffer planned by
:mod:`export.mcu.plan` (``.bss``) and ``<prefix>_invoke()``, the kernels of
``export/mcu/c/s2mcu.c`` called in order. Each layer is generated in one
layout (:data:`export.mcu.lower.LAYOUTS`): ``dense`` (OHWI weights, the
bias carrying ``-zp * sum(w)``) or, for a conv reading a spike tensor, a
spike-driven one (HWIO weights; ``spike_list`` / ``spike_mask``).

Example::

    from export.mcu.lower import lower
    from export.mcu.generate import generate
    program = lower(flatbuffer, spike_levels)
    code = generate(program, layouts="spike_list", target="cortex-m55")
    code.files["model.c"], code.arena_bytes
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple, Union

import numpy as np

from export.mcu.lower import DENSE, LAYOUTS, Program
from export.mcu.plan import MemoryPlan, plan_memory

__all__ = ["GeneratedCode", "generate", "TARGETS", "layer_scratch", "spike_accumulator_bound", "division_magic"]

#: Code paths of s2mcu.c: Cortex-M55 (Helium), Cortex-M4 (DSP), portable C (host).
TARGETS = ("cortex-m55", "cortex-m4", "host")
#: Per target, a dense conv with at most this many taps (k_h k_w in_c; an
#: image stem) is generated with HWIO weights: per tap, one vector multiply
#: of the tap's code with a row of output channels (S2_DENSE_HWIO). Helium
#: only: on the M4 the dot products of the OHWI path are fewer instructions.
DENSE_HWIO_TAPS = {"cortex-m55": 32, "cortex-m4": 0, "host": 0}
INT16_MAX = 32767


@dataclasses.dataclass
class GeneratedCode:
    """``files``: ``{"model.c": text, "model.h": text}``; ``arena_bytes``: the
    activation buffer; ``layouts``: ``{layer index: layout}``; ``plan``: the
    :class:`~export.mcu.plan.MemoryPlan`; ``const_bytes``: bytes of constant
    arrays (weights, biases, multipliers, shifts)."""

    files: Dict[str, str]
    arena_bytes: int
    layouts: Dict[int, str]
    plan: MemoryPlan
    target: str
    prefix: str
    const_bytes: int


def spike_accumulator_bound(w_ohwi: np.ndarray) -> int:
    """``max_c max(sum of positive weights, -sum of negative weights)``: the
    largest |S| any set of fired inputs can give a channel."""
    rows = w_ohwi.reshape(w_ohwi.shape[0], -1).astype(np.int64)
    return int(max(np.max(np.sum(np.maximum(rows, 0), axis=1)), np.max(-np.sum(np.minimum(rows, 0), axis=1))))


def layer_scratch(layer, layout: str, target: str, list_in_place: bool = False) -> int:
    """Scratch bytes of a layer's kernel (the ``*_scratch`` functions of
    s2mcu.c); ``list_in_place``: the spike lists overwrite the input."""
    p = layer.params
    hw = p.get("in_h", 0) * p.get("in_w", 0)
    lists = 0 if list_in_place else hw * p.get("in_c", 0) * (2 if p.get("in_c", 0) > 256 else 1)
    if layer.kind == "conv":
        if layout == DENSE:
            k = p["k_h"] * p["k_w"] * p["in_c"]
            return 3 * k + 8 if target == "cortex-m4" else k + 16
        if layout == "spike_list":
            return ((hw * 2 + 3) & ~3) + lists + 64
        return hw * ((p["in_c"] + 31) // 32) * 4 + 64
    if layer.kind == "dwconv" and layout == "spike_list":
        return ((hw * 2 + 3) & ~3) + ((lists + 3) & ~3) + 4 * p["out_c"] + 64
    if layer.kind == "mean":
        return 4 * p["inner"]
    return 0


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
        items = [repr(float(np.float32(v))) + "f" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)] or ["0"]
    align = " __attribute__((aligned(4)))"
    return f"static const {ctype} {name}[{max(len(items), 1)}]{align} = {{\n  " + ",\n  ".join(lines) + "\n};\n"


def _wrap32(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.int64)
    return (((v + 2 ** 31) % 2 ** 32) - 2 ** 31).astype(np.int32)


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
    out = {}
    for layer in program.layers:
        p = layer.params
        if layer.kind in ("add", "requantize"):
            out[layer.index] = layer.inputs[0]
        elif layer.kind == "dwconv" and p["k_h"] == p["k_w"] == p["s_h"] == p["s_w"] == 1 and \
                p["depth_mult"] == 1 and p["pad_t"] == p["pad_l"] == 0:
            out[layer.index] = layer.inputs[0]
    return out


def generate(program: Program, layouts: Union[str, Dict, None] = DENSE, target: str = "host",
             prefix: str = "s2_model", model_name: str = "model", in_place: bool = True,
             dense_hwio_taps: Optional[int] = None) -> GeneratedCode:
    """C source of ``program``.

    Args:
      layouts: one layout for every layer that has it (``"dense"``,
        ``"spike_list"``, ``"spike_mask"``) or ``{layer index or name: layout}``
        (others dense).
      target: ``"cortex-m55"``, ``"cortex-m4"`` or ``"host"``: only the
        scratch sizes depend on it (the C picks its code path itself).
      prefix: of the generated symbols (``<prefix>_invoke``; the board and
        host harnesses call ``s2_model_*``).
      in_place: let elementwise layers write over an input that dies there.
      dense_hwio_taps: overrides :data:`DENSE_HWIO_TAPS` of the target.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    hwio_taps = DENSE_HWIO_TAPS[target] if dense_hwio_taps is None else int(dense_hwio_taps)
    if hwio_taps and target == "cortex-m4":
        raise ValueError("the Cortex-M4 (DSP) kernels have no HWIO dense path; dense_hwio_taps must be 0 there")
    chosen = _resolve_layouts(program, layouts)
    in_place_lists = {l.index for l in program.layers if chosen[l.index] == "spike_list" and _reads_last(program, l)}
    scratch = {l.index: layer_scratch(l, chosen[l.index], target, l.index in in_place_lists) for l in program.layers}
    plan = plan_memory(program, scratch, _in_place(program) if in_place else {})
    P = prefix
    arrays, structs, calls = [], [], []
    const_bytes = 0

    def buf(t):
        return f"({P}_arena + {plan.offset('t' + str(program.root(t)))})"

    def scratch_ptr(i):
        return f"({P}_arena + {plan.blocks['s' + str(i)].offset})" if f"s{i}" in plan.blocks else "0"

    def add_array(ctype, name, values):
        nonlocal const_bytes
        arrays.append(_c_array(ctype, name, values))
        const_bytes += int(np.asarray(values).size) * {"int8_t": 1, "int32_t": 4, "float": 4}[ctype]

    for layer in program.layers:
        i, p, c = layer.index, layer.params, layer.consts
        lay = chosen[i]
        tag = f"{P}_L{i}"
        structs.append(f"/* layer {i}: {layer.op} {layer.name} ({lay}) */\n")
        if layer.kind == "conv":
            w = c["w"]
            bias = c["bias"].astype(np.int64)
            flags = 0
            gain = 0
            if lay == DENSE:
                w_out = w
                bias = _wrap32(bias - int(p["in_zp"]) * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1))
                if p["k_h"] * p["k_w"] * p["in_c"] <= hwio_taps:
                    w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO: per tap a row of output channels
                    flags |= 4
            else:
                w_out = np.transpose(w, (1, 2, 3, 0))   # HWIO
                bias = _wrap32(bias)
                gain = int(layer.spike[1]) - int(p["in_zp"])
                if spike_accumulator_bound(w) <= INT16_MAX:
                    flags |= 1
            if i in in_place_lists:
                flags |= 2
            add_array("int8_t", f"{tag}_w", w_out)
            add_array("int32_t", f"{tag}_b", bias)
            add_array("int32_t", f"{tag}_m", c["mult"])
            add_array("int8_t", f"{tag}_s", c["shift"])
            fields = ", ".join(f".{k} = {int(p[k])}" for k in (
                "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "s_h", "s_w", "d_h", "d_w",
                "pad_t", "pad_l", "in_zp", "out_zp", "act_min", "act_max"))
            structs.append(f"static const s2_conv_t {tag} = {{{fields}, .spike_gain = {gain}, .flags = {flags},\n"
                           f"  .w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s}};\n")
            if lay == DENSE:
                calls.append(f"s2_conv_dense(&{tag}, {buf(layer.inputs[0])}, {buf(layer.outputs[0])}, "
                             f"{scratch_ptr(i)});")
            else:
                calls.append(f"{P}_fired[{i}] = s2_conv_{lay}(&{tag}, {buf(layer.inputs[0])}, "
                             f"{buf(layer.outputs[0])}, {scratch_ptr(i)});")
        elif layer.kind == "dwconv":
            w = c["w"]
            pointwise = int(p["k_h"] == p["k_w"] == p["s_h"] == p["s_w"] == 1 and p["pad_t"] == p["pad_l"] == 0)
            bias = c["bias"].astype(np.int64)
            gain = 0
            if lay != DENSE:
                pointwise = 0
                gain = int(layer.spike[1]) - int(p["in_zp"])
            elif pointwise:
                bias = bias - int(p["in_zp"]) * w.reshape(-1).astype(np.int64)
            add_array("int8_t", f"{tag}_w", w)
            add_array("int32_t", f"{tag}_b", _wrap32(bias))
            add_array("int32_t", f"{tag}_m", c["mult"])
            add_array("int8_t", f"{tag}_s", c["shift"])
            fields = ", ".join(f".{k} = {int(p[k])}" for k in (
                "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "s_h", "s_w", "d_h", "d_w",
                "depth_mult", "pad_t", "pad_l", "in_zp", "out_zp", "act_min", "act_max"))
            structs.append(f"static const s2_dwconv_t {tag} = {{{fields}, .pointwise = {pointwise}, "
                           f".spike_gain = {gain}, .flags = {2 if i in in_place_lists else 0},\n  .w = {tag}_w, .bias = {tag}_b, .mult = {tag}_m, .shift = {tag}_s}};\n")
            if lay == DENSE:
                calls.append(f"s2_dwconv(&{tag}, {buf(layer.inputs[0])}, {buf(layer.outputs[0])});")
            else:
                calls.append(f"{P}_fired[{i}] = s2_dwconv_{lay}(&{tag}, {buf(layer.inputs[0])}, "
                             f"{buf(layer.outputs[0])}, {scratch_ptr(i)});")
        elif layer.kind == "add":
            fields = ", ".join(f".{k} = {int(v)}" for k, v in (
                ("size", p["size"]), ("in1_zp", p["in_zp"]), ("in2_zp", p["in2_zp"]), ("out_zp", p["out_zp"]),
                ("act_min", p["act_min"]), ("act_max", p["act_max"]), ("left_shift", p["left_shift"]),
                ("s1", p["s1"]), ("s2", p["s2"]), ("so", p["so"]), ("m1", p["m1"]), ("m2", p["m2"]),
                ("mo", p["mo"])))
            structs.append(f"static const s2_add_t {tag} = {{{fields}}};\n")
            calls.append(f"s2_add(&{tag}, {buf(layer.inputs[0])}, {buf(layer.inputs[1])}, {buf(layer.outputs[0])});")
        elif layer.kind in ("avgpool", "maxpool"):
            fields = ", ".join(f".{k} = {int(p[k])}" for k in (
                "in_h", "in_w", "c", "out_h", "out_w", "k_h", "k_w", "s_h", "s_w", "pad_t", "pad_l", "act_min",
                "act_max"))
            div_m, div_s = division_magic(p["k_h"] * p["k_w"]) if layer.kind == "avgpool" else (0, 0)
            structs.append(f"static const s2_pool_t {tag} = {{{fields}, .div_m = {div_m}u, .div_s = {div_s}}};\n")
            calls.append(f"s2_{layer.kind}(&{tag}, {buf(layer.inputs[0])}, {buf(layer.outputs[0])});")
        elif layer.kind == "mean":
            fields = ", ".join(f".{k} = {int(p[k])}" for k in ("outer", "reduce", "inner", "in_zp", "out_zp",
                                                                  "mult", "shift"))
            structs.append(f"static const s2_mean_t {tag} = {{{fields}}};\n")
            calls.append(f"s2_mean(&{tag}, {buf(layer.inputs[0])}, {buf(layer.outputs[0])}, "
                         f"(int32_t *){scratch_ptr(i)});")
        elif layer.kind in ("quantize", "requantize", "dequantize"):
            scale = float(c["scale"][0]) if "scale" in c else 1.0
            fields = ", ".join(f".{k} = {int(p.get(k, 0))}" for k in ("size", "in_zp", "out_zp", "mult", "shift"))
            structs.append(f"static const s2_quant_t {tag} = {{{fields}, .scale = {float(np.float32(scale))!r}f}};\n")
            src = buf(layer.inputs[0])
            dst = buf(layer.outputs[0])
            if layer.kind == "quantize":
                calls.append(f"s2_quantize(&{tag}, (const float *){src}, {dst});")
            elif layer.kind == "requantize":
                calls.append(f"s2_requantize(&{tag}, {src}, {dst});")
            else:
                calls.append(f"s2_dequantize(&{tag}, {src}, (float *){dst});")
        else:  # pragma: no cover - lower() produces only these kinds
            raise AssertionError(layer.kind)

    n = len(program.layers)
    t_in, t_out = program.tensors[program.root(program.input)], program.tensors[program.output]
    in_off, out_off = plan.offset(f"t{program.root(program.input)}"), plan.offset(f"t{program.root(program.output)}")
    names = ", ".join(f'"{l.name}"' for l in program.layers)
    ops = ", ".join(f'"{l.op}"' for l in program.layers)
    lay_names = ", ".join(f'"{chosen[l.index]}"' for l in program.layers)
    header = f"""/* Generated by export.mcu from {model_name}: do not edit. */
#ifndef {P.upper()}_H
#define {P.upper()}_H
#include <stdint.h>

#define {P.upper()}_ARENA_BYTES {plan.arena_bytes}
#define {P.upper()}_INPUT_BYTES {t_in.nbytes}
#define {P.upper()}_OUTPUT_BYTES {t_out.nbytes}
#define {P.upper()}_INPUT_FLOAT {int(t_in.dtype == 'float32')}
#define {P.upper()}_OUTPUT_FLOAT {int(t_out.dtype == 'float32')}
#define {P.upper()}_LAYERS {n}

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
    checks = []
    for layer in program.layers:
        lay = chosen[layer.index]
        size = plan.blocks[f"s{layer.index}"].size if f"s{layer.index}" in plan.blocks else 0
        if layer.kind == "conv":
            fn = "dense" if lay == DENSE else lay
            checks.append(f"  if (s2_conv_{fn}_scratch(&{P}_L{layer.index}) > {size}u) return {layer.index + 1};")
        elif layer.kind == "dwconv" and lay != DENSE:
            checks.append(f"  if (s2_dwconv_{lay}_scratch(&{P}_L{layer.index}) > {size}u) return {layer.index + 1};")
    body = "\n".join(f"  S2_LAYER_MARK({l.index});\n  {call}" for l, call in zip(program.layers, calls))
    source = f"""/* Generated by export.mcu from {model_name}: do not edit.
 * {n} layers, activation buffer {plan.arena_bytes} bytes, constants {const_bytes} bytes. */
#include "s2mcu.h"
#include "model.h"

static int8_t {P}_arena[{max(plan.arena_bytes, 16)}] __attribute__((aligned(16)));
volatile uint32_t {P}_fired[{n}];
const char *const {P}_layer_names[{n}] = {{{names}}};
const char *const {P}_layer_ops[{n}] = {{{ops}}};
const char *const {P}_layer_layouts[{n}] = {{{lay_names}}};

{"".join(arrays)}
{"".join(structs)}
void *{P}_input(void) {{ return {P}_arena + {in_off}; }}
const void *{P}_output(void) {{ return {P}_arena + {out_off}; }}

int {P}_check(void) {{
{chr(10).join(checks)}
  return 0;
}}

void {P}_invoke(void) {{
{body}
  S2_LAYER_MARK({n});
}}
"""
    return GeneratedCode({"model.c": source, "model.h": header}, plan.arena_bytes, chosen, plan, target, P,
                         const_bytes)
