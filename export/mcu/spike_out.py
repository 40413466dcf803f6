"""Spike outputs without requantization: per-channel integer thresholds.

A layer whose output is a spike tensor of the saturate export (two codes,
``off`` and ``on``) requantizes its int32 accumulator as TFLite does,

    out = clamp(MBQM(acc, q, shift) + zp, act_min, act_max)

(:mod:`export.quant`), and the output is one of the two codes. With
``q >= 0`` that function is **monotone non-decreasing in acc** wherever the
left shift of ``MBQM`` (``acc << max(shift, 0)`` in int32) does not wrap:
SRDHM by a non-negative multiplier, a rounding right shift, adding the zero
point and clamping all keep the order. So on an accumulator range
``[lo, hi]`` inside that domain, with ``on > off``,

    out == on   <=>   acc >= T,    T = min{acc in [lo, hi] : out(acc) >= on}

exactly, provided ``out(lo..T-1) == off`` and ``out(T..hi) == on``; by
monotonicity it is enough to check the four points ``lo, T-1, T, hi``
(``T`` is found by bisection). If an intermediate code lies between the
two, or the range leaves the monotone domain, there is no threshold and
the layer keeps TFLite's requantization. The thresholds are computed here
with :mod:`export.quant`'s exact arithmetic, so a kernel that writes a
spike when ``acc >= T`` is bit-exact with TFLite Micro on every input.

Which accumulator, per kind of layer (one compare per output):

* a conv / Dense reading a spike tensor (codes ``{zp, on_in}``):
  ``acc = bias + g S``, ``g = on_in - zp > 0`` and ``S`` the sum of the
  weights of the inputs that fired, ``S in [sum w-, sum w+]``: the
  threshold is on ``S`` (:func:`spike_sum_thresholds`), no multiply;
* a conv / Dense / depthwise reading other int8 values: ``acc`` over the
  range the inputs ``[-128, 127]`` can give (:func:`accumulator_thresholds`);
* a 1x1 depthwise neuron (the BN + neuron of a shared tensor): ``acc =
  bias + (x - zp) w`` has one input per channel, so all 256 codes are
  enumerated: a threshold on the int8 input itself, with a polarity for
  ``w < 0`` (:func:`int8_thresholds`);
* ``ADD`` then that neuron: the ADD's inputs meet on TFLite's 2^20 grid,
  ``s = r1(a) + r2(b)``, and its output ``clamp(MBQM(s) + zp)`` is monotone
  in ``s``, so the spike is a threshold on ``s`` (polarity from the
  neuron's weight), checked on all 65,536 input pairs
  (:func:`add_thresholds`).

Example::

    from export.mcu.spike_out import spike_sum_thresholds
    ts = spike_sum_thresholds(w_ohwi, bias, gain=255, mult=q, shift=s, zp=-128, act=(-128, 127), codes=(-128, 127))
    # spike at output channel c  <=>  sum of the fired weights of c >= ts[c]
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from export import quant

__all__ = ["output_stage", "monotone_range", "first_reaching", "threshold", "spike_sum_thresholds",
           "accumulator_thresholds", "int8_thresholds", "add_sums", "add_thresholds", "INT32_MIN", "INT32_MAX"]

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def output_stage(acc, mult: int, shift: int, zp: int, act: Tuple[int, int]) -> np.ndarray:
    """TFLite's int8 output stage of an int32 accumulator:
    ``clamp(MBQM(acc, mult, shift) + zp, act_min, act_max)`` (int64 array)."""
    v = quant.multiply_by_quantized_multiplier(np.asarray(acc, np.int64), int(mult), int(shift)) + int(zp)
    return np.clip(v, act[0], act[1])


def monotone_range(shift: int) -> Tuple[int, int]:
    """The int32 accumulators on which ``MBQM(., q >= 0, shift)`` is
    non-decreasing: those whose left shift ``acc << max(shift, 0)`` does not
    wrap in int32."""
    ls = max(int(shift), 0)
    return -(2 ** (31 - ls)), 2 ** (31 - ls) - 1


def first_reaching(f: Callable, lo: int, hi: int, level: int) -> int:
    """The smallest integer ``v`` in ``[lo, hi]`` with ``f(v) >= level``
    (``hi + 1`` if none), for ``f`` non-decreasing there (bisection)."""
    if f(hi) < level:
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if f(mid) >= level:
            hi = mid
        else:
            lo = mid + 1
    return lo


def threshold(f: Callable, lo: int, hi: int, codes: Tuple[int, int]) -> Optional[int]:
    """``T`` with ``f(v) == on`` for ``T <= v <= hi`` and ``f(v) == off`` for
    ``lo <= v < T`` (``f`` non-decreasing on the integers ``[lo, hi]``,
    ``codes = (off, on)`` with ``on > off``), or ``None`` if ``f`` takes any
    other value there. ``T`` is ``lo`` when every value fires and ``hi + 1``
    when none does."""
    off, on = (int(c) for c in codes)
    if on <= off or lo > hi:
        return None
    t = first_reaching(f, lo, hi, on)
    ok = True
    if t > lo:
        ok &= f(lo) == off and f(t - 1) == off
    if t <= hi:
        ok &= f(t) == on and f(hi) == on
    return t if ok else None


def _scalar(fn):
    return lambda v: int(fn(np.asarray([v], np.int64))[0])


def _in_domain(lo: int, hi: int, mult: int, shift: int) -> bool:
    d_lo, d_hi = monotone_range(shift)
    return mult >= 0 and d_lo <= lo and hi <= d_hi


def spike_sum_thresholds(w_rows: np.ndarray, bias: np.ndarray, gain: int, mult: np.ndarray, shift: np.ndarray,
                         zp: int, act: Tuple[int, int], codes: Tuple[int, int]) -> Optional[np.ndarray]:
    """Per output channel ``c`` of a layer reading a spike tensor, the
    ``Ts[c]`` with ``out[c] == on  <=>  S[c] >= Ts[c]`` for every
    ``S[c] = sum of the weights of the fired inputs`` (``acc = bias + gain S``,
    ``gain > 0``), clamped to ``[sum w-, sum w+ + 1]``; ``None`` if a
    channel has no threshold (then the layer requantizes).

    Args:
      w_rows: the weights as ``[channels, taps]`` (every weight that can add
        to the channel's sum).
    """
    if gain <= 0:
        return None
    rows = np.asarray(w_rows, np.int64).reshape(len(bias), -1)
    s_lo, s_hi = np.minimum(rows, 0).sum(axis=1), np.maximum(rows, 0).sum(axis=1)
    out = np.zeros(len(bias), np.int64)
    for c in range(len(bias)):
        b, m, s = int(bias[c]), int(mult[c]), int(shift[c])
        lo, hi = int(s_lo[c]), int(s_hi[c])
        if not _in_domain(b + gain * lo, b + gain * hi, m, s):
            return None
        t = threshold(_scalar(lambda v: output_stage(b + gain * v, m, s, zp, act)), lo, hi, codes)
        if t is None:
            return None
        out[c] = t
    return out


def accumulator_thresholds(acc_lo: np.ndarray, acc_hi: np.ndarray, mult: np.ndarray, shift: np.ndarray, zp: int,
                           act: Tuple[int, int], codes: Tuple[int, int]) -> Optional[np.ndarray]:
    """Per channel the int32 ``T[c]`` with ``out[c] == on  <=>  acc >= T[c]``
    for every accumulator in ``[acc_lo[c], acc_hi[c]]``, clamped to that range
    (``acc_hi + 1``: never), or ``None``."""
    out = np.zeros(len(acc_lo), np.int64)
    for c in range(len(acc_lo)):
        lo, hi, m, s = int(acc_lo[c]), int(acc_hi[c]), int(mult[c]), int(shift[c])
        if not _in_domain(lo, hi, m, s) or not INT32_MIN <= lo <= hi < INT32_MAX:
            return None
        t = threshold(_scalar(lambda v: output_stage(v, m, s, zp, act)), lo, hi, codes)
        if t is None:
            return None
        out[c] = t
    return out


def int8_thresholds(bias: np.ndarray, w: np.ndarray, in_zp: int, mult: np.ndarray, shift: np.ndarray, zp: int,
                    act: Tuple[int, int], codes: Tuple[int, int]):
    """A 1x1 depthwise (one input code per output channel): all 256 codes
    enumerated, ``out[c](x) = clamp(MBQM(bias + (x - in_zp) w) + zp)``.
    Returns ``(t, neg, never)`` with, for every int8 ``x``,
    ``out[c] == on  <=>  ((x ^ neg[c]) >= t[c]) and not never[c]``
    (``neg`` 0 or -1: a falling channel compares the complement), or ``None``
    when a channel takes a third code or is not monotone in ``x``."""
    off, on = codes
    x = np.arange(-128, 128, dtype=np.int64)
    t = np.zeros(len(bias), np.int64)
    neg = np.zeros(len(bias), np.int64)
    never = np.zeros(len(bias), bool)
    for c in range(len(bias)):
        y = output_stage(int(bias[c]) + (x - int(in_zp)) * int(w[c]), int(mult[c]), int(shift[c]), zp, act)
        if not np.all((y == off) | (y == on)):
            return None
        fire = y == on
        if not fire.any():
            never[c] = True
            continue
        k = int(np.argmax(fire))                       # the first code that fires
        if fire[k:].all() and not fire[:k].any():      # rising: x >= -128 + k
            t[c] = -128 + k
            continue
        k = int(np.argmin(fire))                       # falling: x <= -129 + k, ~x >= 128 - k
        if fire[:k].all() and not fire[k:].any():
            t[c], neg[c] = 128 - k, -1
            continue
        return None
    return t, neg, never


def add_sums(p) -> Tuple[np.ndarray, np.ndarray]:
    """TFLite's int8 ADD up to its output stage: ``r1[a + 128]`` and
    ``r2[b + 128]`` for every code, ``s = r1(a) + r2(b)`` on the 2^20 grid
    (``p``: the ADD's parameters, ``in_zp``, ``in2_zp``, ``left_shift``,
    ``m1``, ``s1``, ``m2``, ``s2``)."""
    x = np.arange(-128, 128, dtype=np.int64)
    left = 1 << int(p["left_shift"])
    r1 = quant.multiply_by_quantized_multiplier((x - int(p["in_zp"])) * left, int(p["m1"]), int(p["s1"]))
    r2 = quant.multiply_by_quantized_multiplier((x - int(p["in2_zp"])) * left, int(p["m2"]), int(p["s2"]))
    return r1, r2


def add_thresholds(p, dw, codes: Tuple[int, int]):
    """``ADD`` (parameters ``p``) followed by a 1x1 depthwise neuron
    (``dw``: ``bias``, ``w``, ``mult``, ``shift`` per channel, ``in_zp`` the
    ADD's output zero point, ``out_zp``, ``act``). Returns ``(T, neg)``: spike
    at channel ``c``  <=>  ``(s >= T[c]) != neg[c]``, with ``s`` the ADD's sum
    on its 2^20 grid; checked on every pair of int8 inputs. ``None`` if some
    channel has no such threshold."""
    thr = int8_thresholds(dw["bias"], dw["w"], dw["in_zp"], dw["mult"], dw["shift"], dw["out_zp"], dw["act"],
                          codes)
    if thr is None or int(p["so"]) > 0:
        return None
    t8, neg8, never = thr
    r1, r2 = add_sums(p)
    act = (int(p["act_min"]), int(p["act_max"]))

    def add_out(s):
        return output_stage(s, int(p["mo"]), int(p["so"]), int(p["out_zp"]), act)

    s_all = (r1[:, None] + r2[None, :]).reshape(-1)
    s_lo, s_hi = int(s_all.min()), int(s_all.max())
    o_all = add_out(s_all)
    f = _scalar(add_out)
    channels = len(t8)
    t = np.zeros(channels, np.int64)
    neg = np.zeros(channels, np.int64)
    for c in range(channels):
        if never[c]:
            t[c] = s_hi + 1                                  # never reached
        elif neg8[c] == 0:                                   # fires iff o >= t8
            t[c] = first_reaching(f, s_lo, s_hi, int(t8[c]))
        else:                                                # fires iff ~o >= t8, o <= ~t8: not (s >= T)
            t[c], neg[c] = first_reaching(f, s_lo, s_hi, int(~t8[c]) + 1), 1
        fire = (((o_all ^ neg8[c]) >= t8[c]) & ~never[c])
        if not np.array_equal(fire, (s_all >= t[c]) != bool(neg[c])):
            return None
    return t, neg


# ------------------------------------------------------ the lowering pass


def _readers(program, t):
    root = program.root(t)
    return [l for l in program.layers if any(program.root(x) == root for x in l.inputs)]


def _pointwise(p) -> bool:
    return (p["k_h"] == p["k_w"] == p["s_h"] == p["s_w"] == 1 and p["pad_t"] == p["pad_l"] == 0
            and p.get("depth_mult", 1) == 1)


def _identity_subsample(program, pool) -> bool:
    """A 1x1 ``AVERAGE_POOL_2D`` that copies every code it keeps (same grid,
    a clamp that cuts nothing the input can hold)."""
    p = pool.params
    x, y = program.tensors[program.root(pool.inputs[0])], program.tensors[program.root(pool.outputs[0])]
    if pool.kind != "avgpool" or p["k_h"] != 1 or p["k_w"] != 1 or x.dtype != "int8" or y.dtype != "int8":
        return False
    if (x.scale, x.zero_point) != (y.scale, y.zero_point):
        return False
    low, high = (min(x.spike), max(x.spike)) if x.spike is not None else (-128, 127)
    return p["act_min"] <= low and p["act_max"] >= high


def fold_subsamples(program) -> None:
    """A 1x1 strided ``AVERAGE_POOL_2D`` that only feeds 1x1 stride-1 convs
    (a ResNet's projection shortcut) becomes those convs' stride: the conv
    reads every ``s``-th pixel of the pool's input, the same codes."""
    for pool in list(program.layers):
        if pool.kind != "avgpool" or not _identity_subsample(program, pool):
            continue
        readers = _readers(program, pool.outputs[0])
        if not readers or any(r.kind != "conv" or not _pointwise(r.params) or r.params["d_h"] != 1 or
                              r.params["d_w"] != 1 for r in readers):
            continue
        p = pool.params
        for conv in readers:
            conv.inputs[0] = pool.inputs[0]
            conv.params.update(in_h=p["in_h"], in_w=p["in_w"], s_h=p["s_h"], s_w=p["s_w"], pad_t=p["pad_t"],
                               pad_l=p["pad_l"])
        program.layers.remove(pool)
    _reindex(program)


def _reindex(program):
    for i, layer in enumerate(program.layers):
        layer.index = i


def _fc_rows(layer) -> np.ndarray:
    w = np.asarray(layer.consts["w"], np.int64)
    return w.reshape(w.shape[0], -1)


def _act(p) -> Tuple[int, int]:
    return int(p["act_min"]), int(p["act_max"])


def _dense_acc_range(rows, bias, in_zp):
    """Per channel the accumulators ``bias + sum (x - in_zp) w`` can reach
    with every ``x`` in ``[-128, 127]``."""
    a, b = rows * (-128 - in_zp), rows * (127 - in_zp)
    return bias + np.minimum(a, b).sum(axis=1), bias + np.maximum(a, b).sum(axis=1)


def _dw_rows(layer) -> np.ndarray:
    """Depthwise weights ``[k_h, k_w, C]`` as ``[C, taps]``."""
    w = np.asarray(layer.consts["w"], np.int64)
    return w.reshape(-1, w.shape[-1]).T


def _thresholds(program, layer, codes):
    """``{name: array}`` of the layer's thresholds for ``codes``, or ``None``."""
    if layer.kind not in ("conv", "dwconv"):
        return None
    p, k = layer.params, layer.consts
    bias = np.asarray(k.get("bias", ()), np.int64)
    act, zp = _act(p), int(p["out_zp"])
    rows = _fc_rows(layer) if layer.kind == "conv" else _dw_rows(layer)
    if layer.spike is not None:      # reads spikes: a threshold on the sum of the fired weights
        ts = spike_sum_thresholds(rows, bias, int(layer.spike[1]) - int(p["in_zp"]), k["mult"], k["shift"], zp,
                                  act, codes)
        return None if ts is None else {"spike_thr": ts}
    if layer.kind == "dwconv" and _pointwise(p):
        t = int8_thresholds(bias, np.asarray(k["w"]).reshape(-1), int(p["in_zp"]), k["mult"], k["shift"], zp, act,
                            codes)
        return None if t is None else {"t8": t[0], "neg8": t[1], "never8": t[2]}
    if layer.kind == "dwconv" and p.get("depth_mult", 1) != 1:
        return None
    lo, hi = _dense_acc_range(rows, bias, int(p["in_zp"]))
    t = accumulator_thresholds(lo, hi, k["mult"], k["shift"], zp, act, codes)
    return None if t is None else {"acc_thr": t}


def fuse_add_neurons(program) -> None:
    """``ADD`` whose only reader is a 1x1 depthwise neuron (the BN + neuron
    after a residual sum) becomes one layer: the spikes from a threshold on
    the ADD's sum (:func:`add_thresholds`); the ADD's int8 output is never
    written."""
    for add in list(program.layers):
        if add.kind != "add" or getattr(add, "spike_out", None) is not None:
            continue
        readers = _readers(program, add.outputs[0])
        if len(readers) != 1 or program.root(add.outputs[0]) == program.root(program.output):
            continue
        dw = readers[0]
        codes = program.tensors[program.root(dw.outputs[0])].spike
        if dw.kind != "dwconv" or not _pointwise(dw.params) or codes is None or dw.spike is not None:
            continue
        q = dw.params
        neuron = {"bias": dw.consts["bias"], "w": np.asarray(dw.consts["w"]).reshape(-1), "in_zp": q["in_zp"],
                  "mult": dw.consts["mult"], "shift": dw.consts["shift"], "out_zp": q["out_zp"], "act": _act(q)}
        thr = add_thresholds(add.params, neuron, codes)
        kernel = None if thr is None else add_kernel_constants(add.params, thr[0], thr[1])
        if kernel is None:
            continue
        add.op = f"{add.op}+{dw.op}"
        add.name = f"{add.name}+{dw.name}"
        add.outputs = list(dw.outputs)
        add.macs += dw.macs
        add.params["channels"] = int(q["out_c"])
        add.consts.update(s_thr=thr[0], s_neg=thr[1], k=kernel["k"])
        add.params.update(a_input=kernel["a"], m=kernel["m"], sh=kernel["sh"], b_zp=kernel["b_zp"])
        add.spike_out = tuple(int(c) for c in codes)
        program.layers.remove(dw)
    _reindex(program)


def mark_spike_outputs(program) -> None:
    """Every conv, Dense or depthwise layer whose output is a spike tensor
    gets its thresholds (``layer.consts``: ``spike_thr`` on the sum of the
    fired weights, ``acc_thr`` on the accumulator, or ``t8``/``neg8``/``never8``
    on the int8 input of a 1x1 depthwise) and ``layer.spike_out = (off, on)``
    when every channel has one; the others keep TFLite's requantization."""
    for layer in program.layers:
        if getattr(layer, "spike_out", None) is not None:
            continue
        codes = program.tensors[program.root(layer.outputs[0])].spike
        if codes is None or layer.outputs[0] == program.output:
            continue
        thr = _thresholds(program, layer, tuple(int(c) for c in codes))
        if thr is not None:
            layer.consts.update(thr)
            layer.spike_out = tuple(int(c) for c in codes)


def plan_spike_outputs(program) -> None:
    """The lowering's last pass: 1x1 subsamples folded into the convs that
    read them, ``ADD`` + neuron fused, spike outputs marked."""
    fold_subsamples(program)
    fuse_add_neurons(program)
    mark_spike_outputs(program)
    for layer in program.layers:   # the spike_list kernel lists channel indices as bytes
        if layer.kind == "conv" and layer.params["in_c"] > 255:
            layer.layouts = tuple(lay for lay in layer.layouts if lay != "spike_list")


# ------------------------------------- the kernels' layouts (export/mcu/c)

#: Helium, int16 sums, a block of 32 output channels: the channel of each
#: weight-row byte / accumulator lane (4 vectors of 8 lanes: the even and odd
#: channels of 0..15, then of 16..31), so that narrowing vectors 0 and 1
#: (2 and 3) into the even and odd bytes of one vector gives 0..15 (16..31).
MVE16_LANES = np.array([2 * i for i in range(8)] + [2 * i + 1 for i in range(8)] +
                       [16 + 2 * i for i in range(8)] + [17 + 2 * i for i in range(8)])
#: ... and the order of bias, multiplier and shift: each int16 vector widened
#: to int32 as its even lanes, then its odd lanes.
MVE16_PARAMS = np.concatenate([MVE16_LANES[8 * k:8 * k + 8][list(lanes)]
                               for k in range(4) for lanes in ((0, 2, 4, 6), (1, 3, 5, 7))])
#: Cortex-M4, int16 pairs, a block of 16: byte 4 w + 2 h + r of a row feeds
#: register 2 w + r (SXTAB16, rotated by 8 when r = 1), half h: channel
#: 2 w + r + 8 h (register k holds channels k and k + 8).
DSP16_LANES = np.array([2 * (b // 4) + (b % 2) + 8 * ((b // 2) % 2) for b in range(16)])
#: Helium ADD + neuron: byte j of the narrowed (int32 -> int16 -> int8) vector
#: of 16 channels holds channel 4 (2 (j & 1) + (j >> 1 & 1)) + (j >> 2).
MVE_ADD_LANES = np.array([4 * (2 * (j & 1) + ((j >> 1) & 1)) + (j >> 2) for j in range(16)])


#: Helium, int16 sums, a block of 8 (one vector, natural order): bias,
#: multiplier and shift in the widening's order, even lanes then odd.
MVE8_PARAMS = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def spike_list_blocks(path: str, out_c: int, acc16: bool) -> int:
    """Output channels per weight block of the spike_list kernel on a code
    path (``"mve"``, ``"dsp"``, ``"portable"``): Helium's int16 blocks take
    4, 2 or 1 vectors of 8 (the widest that divides ``out_c``)."""
    if path == "mve":
        if not acc16:
            return 16
        return next((b for b in (32, 16, 8) if out_c % b == 0), 32)
    if path == "dsp" and acc16:
        return 16
    return min(out_c, 64)


def lane_order(path: str, blk: int, nb: int, acc16: bool) -> Optional[np.ndarray]:
    """The channel order inside a block of ``nb`` channels (``None``: natural)."""
    if nb != blk or not acc16:
        return None
    if path == "mve" and blk in (32, 16):
        return MVE16_LANES[:blk]
    if path == "dsp" and blk == 16:
        return DSP16_LANES
    return None


def param_order(path: str, blk: int, nb: int, acc16: bool) -> Optional[np.ndarray]:
    """The order of bias, multiplier and shift inside a full block of a
    requantizing spike_list conv (Helium widens even lanes, then odd)."""
    if path != "mve" or not acc16 or nb != blk:
        return None
    return {32: MVE16_PARAMS, 16: MVE16_PARAMS[:16], 8: MVE8_PARAMS}.get(blk)


def add_kernel_constants(p, thr: np.ndarray, neg: np.ndarray):
    """The fused kernel's operands (``s2_add_spike_t``): which input is ``a``
    (multiplier exactly 1/2: ``r(a) = (a - a_zp) 2^19``), ``b``'s multiplier,
    shift and zero point, and ``k[c] = -2^19 a_zp - thr[c]``; checked on all
    65,536 input pairs against :func:`add_sums`. ``None`` if neither input
    has multiplier 1/2."""
    r1, r2 = add_sums(p)
    x = np.arange(-128, 128, dtype=np.int64)
    half = 1 << (int(p["left_shift"]) - 1)
    if (int(p["m1"]), int(p["s1"])) == (2 ** 30, 0):
        a, a_zp, m, sh, b_zp, ra, rb = 0, int(p["in_zp"]), int(p["m2"]), int(p["s2"]), int(p["in2_zp"]), r1, r2
    elif (int(p["m2"]), int(p["s2"])) == (2 ** 30, 0):
        a, a_zp, m, sh, b_zp, ra, rb = 1, int(p["in2_zp"]), int(p["m1"]), int(p["s1"]), int(p["in_zp"]), r2, r1
    else:
        return None
    if not np.array_equal(ra, (x - a_zp) * half):
        return None
    k = -half * a_zp - np.asarray(thr, np.int64)
    d = rb[None, :, None] + (x * half)[:, None, None] + k[None, None, :]       # [a, b, channel]
    s = ra[:, None, None] + rb[None, :, None]
    falling = np.asarray(neg)[None, None, :] != 0
    if np.abs(d).max() >= 2 ** 31 or not np.array_equal((d >= 0) != falling,
                                                         (s >= np.asarray(thr)[None, None, :]) != falling):
        return None
    return {"a": a, "m": m, "sh": sh, "b_zp": b_zp, "k": k}
