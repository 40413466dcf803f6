"""Lowers a verified int8 TFLite flatbuffer to the integer program of the generated C.

:func:`lower` reads the flatbuffer with :mod:`export.tflite.flatbuffer` (no
interpreter) and turns every operator into a :class:`Layer`: the C kernel
family, its integer parameters (shapes, strides, TFLite's padding, zero
points, fused-activation clamp) and its constants (int8 weights, int32
biases, per-channel quantized multipliers and shifts, computed as TFLite
Micro's ``Prepare`` computes them: :mod:`export.quant`).

The op set is the edge set of the export (``export.formats.EDGE_OPS``
restricted to what an int8 microcontroller graph holds):

============================  ===========================================
``CONV_2D``                    ``conv`` (dense, or spike-driven when its
                               input is a spike tensor)
``FULLY_CONNECTED``            ``conv`` on a 1 x B "image" of B rows, 1x1
``DEPTHWISE_CONV_2D``          ``dwconv``
``ADD``                        ``add`` (same shapes), else ``binary``
``MUL``, ``GREATER_EQUAL``     ``binary`` (broadcasting, either operand may
                               be a constant; GREATER_EQUAL writes bools)
``SELECT_V2``                  ``select`` (the compare neuron's)
``CONCATENATION``              ``concat`` (inputs on the output's grid)
``RESIZE_NEAREST_NEIGHBOR``    ``resize`` (index tables)
``TRANSPOSE_CONV``             ``tconv`` (dense, or spike-driven)
``REDUCE_MAX``                 ``reduce_max`` (a contiguous run of axes)
``AVERAGE_POOL_2D``            ``avgpool``
``MAX_POOL_2D``                ``maxpool``
``MEAN``                       ``mean`` (a contiguous run of axes)
``RESHAPE``/``SQUEEZE``/       no code: the output is the input's bytes
``EXPAND_DIMS``
``QUANTIZE``, ``DEQUANTIZE``   ``quantize`` (float32 -> int8, int8 -> int8),
                               ``dequantize`` (int8 -> float32)
============================  ===========================================

fused ``RELU``/``RELU6``/``RELU_N1_TO_1`` become the clamp of the op. Any
other op, dtype or option raises :class:`UnsupportedModelError` naming it.
Each operator is one entry of :data:`LOWERINGS` (``@lowers("CONV_2D")``):
a new op is a new entry (and, for a new kernel family, one of
:data:`export.mcu.generate.KERNELS`).

Spike tensors (``spike_codes``: ``{tensor index: (off code, on code)}``,
:func:`export.mcu.run.spike_codes` of a conversion) stay spike tensors
through ``MAX_POOL_2D``, 1x1 ``AVERAGE_POOL_2D`` (a subsample),
``RESHAPE``, ``RESIZE_NEAREST_NEIGHBOR``, ``REDUCE_MAX`` and a
``CONCATENATION`` of spike tensors; a ``conv`` reading one whose off code
is its zero point gets the spike-driven layouts (:data:`SPIKE_LAYOUTS`), a
``dwconv`` reading one :data:`DWCONV_SPIKE_LAYOUTS`, a ``tconv`` ``spike_list``.

Example::

    from export.tflite.flatbuffer import read_model
    from export.mcu.lower import lower
    program = lower(read_model(flatbuffer), spike_codes)    # or the bytes
    [(l.name, l.kind, l.layouts) for l in program.layers]
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from export import quant
from export.errors import InputError
from export.mcu.spike_out import plan_spike_outputs

__all__ = ["UnsupportedModelError", "TensorSpec", "Layer", "Program", "lower", "lowers", "LOWERINGS",
           "parsed_model", "DENSE", "SPIKE_LAYOUTS", "DWCONV_SPIKE_LAYOUTS", "LAYOUTS", "SUPPORTED_OPS"]

DENSE = "dense"
#: Spike-driven layouts of a conv reading a spike tensor: ``spike_list``
#: (per input pixel the list of channels that fired) and ``spike_mask``
#: (per input pixel a bit mask of the channels that fired).
SPIKE_LAYOUTS = ("spike_list", "spike_mask")
#: ... and of a depthwise conv reading one (per output pixel, each fired
#: channel adds its tap's weight to its own channels).
DWCONV_SPIKE_LAYOUTS = ("spike_list",)
LAYOUTS = (DENSE,) + SPIKE_LAYOUTS
#: Kernel families with spike-driven layouts, and those layouts.
#: (``tconv``: the spike_list layout sums the weights of the fired inputs, no lists.)
SPIKE_LAYOUTS_OF_KIND = {"conv": SPIKE_LAYOUTS, "dwconv": DWCONV_SPIKE_LAYOUTS, "tconv": ("spike_list",)}
#: Kernel taps (k_h k_w) up to which a layer gets the spike layouts (the
#: kernels' receptive-field list, S2_MAX_TAPS in export/mcu/c/s2mcu_internal.h).
MAX_SPIKE_TAPS = 64


class UnsupportedModelError(InputError, ValueError):
    """The flatbuffer holds something the generator has no kernel for (the
    message names the operator, its index and what is valid)."""


@dataclasses.dataclass
class TensorSpec:
    """One activation tensor of the program."""

    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: str                      # "int8", "float32" or "bool" (GREATER_EQUAL's output)
    scale: float = 1.0
    zero_point: int = 0
    spike: Optional[Tuple[int, int]] = None   # (off code, on code) of a spike tensor

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * (4 if self.dtype == "float32" else 1)


@dataclasses.dataclass
class Layer:
    """One kernel call of the generated code.

    Attributes:
      index: position in the program.
      op: the TFLite operator (``"CONV_2D"``), ``op_index`` its index in the subgraph.
      kind: kernel family (``conv``, ``dwconv``, ``add``, ``avgpool``,
        ``maxpool``, ``mean``, ``quantize``, ``dequantize``).
      name: a short name (the Keras layer's, read from the tensor names).
      inputs, outputs: activation tensor indices.
      params: integer parameters (``in_h``, ``out_c``, ``act_min``, ...).
      consts: ``w`` (int8, OHWI for ``conv``, HWC for ``dwconv``), ``bias``
        (int32), ``mult`` (int32), ``shift`` (int8), per output channel.
      macs: multiply-accumulates of the dense op (Appendix B's FLOPs:
        every output times every tap, padding included).
      layouts: the layouts this layer can be generated in (``dense`` first).
      spike: ``(off code, on code)`` of a spike input, else ``None``.
      spike_out: ``(off code, on code)`` when the layer writes a spike
        tensor by per-channel thresholds instead of requantizing
        (:mod:`export.mcu.spike_out`: the thresholds are in ``consts``).
    """

    index: int
    op: str
    op_index: int
    kind: str
    name: str
    inputs: List[int]
    outputs: List[int]
    params: Dict[str, int]
    consts: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    macs: int = 0
    layouts: Tuple[str, ...] = (DENSE,)
    spike: Optional[Tuple[int, int]] = None
    spike_out: Optional[Tuple[int, int]] = None

    @property
    def spike_capable(self) -> bool:
        return len(self.layouts) > 1


@dataclasses.dataclass
class Program:
    """The lowered model: layers in execution order and activation tensors
    (``aliases``: RESHAPE-like outputs that share their input's bytes)."""

    layers: List[Layer]
    tensors: Dict[int, TensorSpec]
    input: int
    output: int
    aliases: Dict[int, int]
    op_counts: Dict[str, int]

    def root(self, t: int) -> int:
        while t in self.aliases:
            t = self.aliases[t]
        return t

    @property
    def spike_layers(self) -> List[Layer]:
        return [l for l in self.layers if l.spike_capable]


# --------------------------------------------------------------------------


def short_name(tensor_name: str, fallback: str) -> str:
    """The Keras layer name in a converter tensor name
    (``model/model/stage1_block1_act2_1/Relu6;...`` -> ``stage1_block1_act2``)."""
    first = tensor_name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    if len(parts) >= 2:
        name = parts[-2]
        name = re.sub(r"_\d+$", "", name)
        if name and not name.startswith("StatefulPartitionedCall"):
            return name
    return fallback


def _err(op, what):
    return UnsupportedModelError(f"operator {op.index} ({op.name}): {what}")


def _padding(in_size, k, stride, dilation, out_size):
    eff = (k - 1) * dilation + 1
    total = max((out_size - 1) * stride + eff - in_size, 0)
    return total // 2


def _per_channel(op, s_in, w_tensor, s_out, channels):
    q = w_tensor.quantization
    if q is None:
        raise _err(op, f"weights {w_tensor.name!r} are not quantized")
    if np.any(q.zero_points != 0):
        raise _err(op, f"weights {w_tensor.name!r} have a nonzero zero point (TFLite int8 weights are symmetric)")
    scales = np.asarray(q.scales, np.float32)
    if scales.size == 1:
        scales = np.repeat(scales, channels)
    elif scales.size != channels:
        raise _err(op, f"weights {w_tensor.name!r} have {scales.size} scales for {channels} channels")
    mult = np.zeros(channels, np.int32)
    shift = np.zeros(channels, np.int8)
    for c in range(channels):
        m, s = quant.quantize_multiplier(float(np.float64(s_in) * np.float64(scales[c]) / np.float64(s_out)))
        mult[c], shift[c] = m, s
    return mult, shift


def _bias(graph, op, index, channels):
    if len(op.inputs) <= index or op.inputs[index] < 0:
        return np.zeros(channels, np.int32)
    b = graph.tensors[op.inputs[index]]
    if b.data is None or b.type_name != "INT32":
        raise _err(op, f"bias {b.name!r} must be a constant int32 tensor (got {b.type_name})")
    return np.asarray(b.data, np.int32).reshape(-1)


def _const_weights(graph, op, index):
    w = graph.tensors[op.inputs[index]]
    if w.data is None:
        raise _err(op, f"weights {w.name!r} are not a constant (the generator needs them in flash)")
    if w.type_name != "INT8":
        raise _err(op, f"weights {w.name!r} are {w.type_name}; only int8 weights are supported")
    return w, np.asarray(w.data, np.int8)


def _nhwc(shape):
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(shape)
    return shape


class _Io(NamedTuple):
    """An int8 op's first input and output: specs, scales, zero points and
    the fused activation's clamp."""

    x: TensorSpec
    out: TensorSpec
    s_in: float
    zp_in: int
    s_out: float
    zp_out: int
    act_min: int
    act_max: int

    @property
    def common(self) -> Dict[str, int]:
        return {"in_zp": self.zp_in, "out_zp": self.zp_out, "act_min": self.act_min, "act_max": self.act_max}


class _Lowering:
    """The state of one :func:`lower`: the graph, the activation tensors
    seen so far, the layers and aliases made so far."""

    def __init__(self, graph, spike_codes):
        self.graph = graph
        self.spikes = dict(spike_codes or {})
        self.tensors: Dict[int, TensorSpec] = {}
        self.layers: List[Layer] = []
        self.aliases: Dict[int, int] = {}

    def spec(self, t) -> TensorSpec:
        """The :class:`TensorSpec` of activation tensor ``t`` (checked once)."""
        if t not in self.tensors:
            tensor = self.graph.tensors[t]
            if tensor.type_name not in ("INT8", "FLOAT32", "BOOL"):
                raise UnsupportedModelError(f"tensor {tensor.name!r} is {tensor.type_name}; activations must be "
                                            "int8 (float32 only at a QUANTIZE/DEQUANTIZE boundary, bool only "
                                            "between GREATER_EQUAL and SELECT_V2)")
            if any(s <= 0 for s in tensor.shape_signature[1:]) or any(s <= 0 for s in tensor.shape):
                raise UnsupportedModelError(f"tensor {tensor.name!r} has a dynamic shape {tensor.shape_signature}")
            q = tensor.quantization
            one = q is not None and q.scales.size == 1
            scale, zp = (float(q.scales[0]), int(q.zero_points[0])) if one else (1.0, 0)
            self.tensors[t] = TensorSpec(t, tensor.name, tuple(int(s) for s in tensor.shape),
                                         {"FLOAT32": "float32", "BOOL": "bool"}.get(tensor.type_name, "int8"), scale, zp,
                                         self.spikes.get(t))
        return self.tensors[t]

    def int8(self, t, op, role) -> Tuple[float, int]:
        """``(scale, zero point)`` of an int8 activation with one of each."""
        tensor = self.graph.tensors[t]
        if tensor.type_name != "INT8":
            raise _err(op, f"{role} tensor {tensor.name!r} is {tensor.type_name}; the microcontroller generator runs "
                           "full-integer int8 models (export with quantization 'int8')")
        q = tensor.quantization
        if q is None or q.scales.size != 1:
            raise _err(op, f"{role} tensor {tensor.name!r} needs one per-tensor scale and zero point")
        return float(q.scales[0]), int(q.zero_points[0])

    def io(self, op, x_index: int = 0) -> _Io:
        """The int8 input ``x_index`` (0) and output of ``op``."""
        x_t, out_t = op.inputs[x_index], op.outputs[0]
        s_in, zp_in = self.int8(x_t, op, "input")
        s_out, zp_out = self.int8(out_t, op, "output")
        x = self.spec(x_t)
        act_min, act_max = quant.activation_range(op.fused_activation, s_out, zp_out)
        return _Io(x, self.spec(out_t), s_in, zp_in, s_out, zp_out, act_min, act_max)

    def layer(self, op, kind, params, consts=None, macs=0, inputs=None) -> Layer:
        """A :class:`Layer` of ``op`` (input 0 unless ``inputs``, output 0)."""
        out = self.spec(op.outputs[0])
        name = short_name(out.name, f"{op.name.lower()}_{op.index}")
        return Layer(len(self.layers), op.name, op.index, kind, name, list(inputs or op.inputs[:1]),
                     [op.outputs[0]], params, consts or {}, int(macs))


#: ``{TFLite operator: lowering}``, filled by :func:`lowers`.
LOWERINGS: Dict[str, Callable] = {}


def lowers(*ops: str):
    """Registers the decorated function as the lowering of ``ops``: called
    as ``fn(lowering, op)`` it returns the op's :class:`Layer`, or ``None``
    for an op that needs no code."""

    def register(fn):
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"operator {op} has two lowerings")
            LOWERINGS[op] = fn
        return fn

    return register


def _conv_window(lw, op, io, kh, kw):
    """Shapes, strides, dilations and padding of a conv-like op."""
    _, ih, iw, ic = _nhwc(io.x.shape)
    _, oh, ow, oc = _nhwc(io.out.shape)
    if io.x.shape[0] != 1:
        raise _err(op, f"batch {io.x.shape[0]}: the generator runs batch 1")
    o = op.options
    sh, sw = int(o.strideH), int(o.strideW)
    dh, dw = int(getattr(o, "dilationHFactor", 1) or 1), int(getattr(o, "dilationWFactor", 1) or 1)
    return dict(in_h=ih, in_w=iw, in_c=ic, out_h=oh, out_w=ow, out_c=oc, k_h=kh, k_w=kw, s_h=sh, s_w=sw, d_h=dh,
                d_w=dw, pad_t=_padding(ih, kh, sh, dh, oh), pad_l=_padding(iw, kw, sw, dw, ow), **io.common)


@lowers("CONV_2D")
def _conv2d(lw, op):
    io = lw.io(op)
    w_tensor, w = _const_weights(lw.graph, op, 1)
    oc, ic = _nhwc(io.out.shape)[3], _nhwc(io.x.shape)[3]
    if w.ndim != 4 or w.shape[0] != oc or w.shape[3] != ic:
        raise _err(op, f"weights of shape {w.shape} do not match input {io.x.shape} / output {io.out.shape}")
    params = _conv_window(lw, op, io, int(w.shape[1]), int(w.shape[2]))
    q_m, q_s = _per_channel(op, io.s_in, w_tensor, io.s_out, oc)
    consts = {"w": w, "bias": _bias(lw.graph, op, 2, oc), "mult": q_m, "shift": q_s}
    p = params
    return lw.layer(op, "conv", params, consts, p["out_h"] * p["out_w"] * oc * p["k_h"] * p["k_w"] * ic)


@lowers("DEPTHWISE_CONV_2D")
def _depthwise(lw, op):
    io = lw.io(op)
    w_tensor, w = _const_weights(lw.graph, op, 1)
    oc, ic = _nhwc(io.out.shape)[3], _nhwc(io.x.shape)[3]
    if w.ndim != 4 or w.shape[0] != 1 or w.shape[3] != oc:
        raise _err(op, f"depthwise weights of shape {w.shape} do not match output {io.out.shape}")
    kh, kw = int(w.shape[1]), int(w.shape[2])
    mult_d = int(op.options.depthMultiplier or 1)
    if oc != ic * mult_d:
        mult_d = oc // ic if ic and oc % ic == 0 else 0
    if mult_d < 1 or oc != ic * mult_d:
        raise _err(op, f"{oc} output channels are not a multiple of {ic} input channels")
    params = _conv_window(lw, op, io, kh, kw)
    q_m, q_s = _per_channel(op, io.s_in, w_tensor, io.s_out, oc)
    consts = {"w": w.reshape(kh, kw, oc), "bias": _bias(lw.graph, op, 2, oc), "mult": q_m, "shift": q_s}
    params["depth_mult"] = mult_d
    return lw.layer(op, "dwconv", params, consts, params["out_h"] * params["out_w"] * oc * kh * kw)


@lowers("FULLY_CONNECTED")
def _fully_connected(lw, op):
    io = lw.io(op)
    w_tensor, w = _const_weights(lw.graph, op, 1)
    if w.ndim != 2:
        raise _err(op, f"weights of shape {w.shape}: expected [units, inputs]")
    units, depth = int(w.shape[0]), int(w.shape[1])
    count = int(np.prod(io.x.shape))
    if count % depth:
        raise _err(op, f"input of {count} values is not a multiple of {depth} inputs per row")
    rows = count // depth
    if int(np.prod(io.out.shape)) != rows * units:
        raise _err(op, f"output shape {io.out.shape} is not {rows} x {units}")
    params = dict(in_h=1, in_w=rows, in_c=depth, out_h=1, out_w=rows, out_c=units, k_h=1, k_w=1, s_h=1,
                  s_w=1, d_h=1, d_w=1, pad_t=0, pad_l=0, **io.common)
    q_m, q_s = _per_channel(op, io.s_in, w_tensor, io.s_out, units)
    consts = {"w": w.reshape(units, 1, 1, depth), "bias": _bias(lw.graph, op, 2, units), "mult": q_m,
              "shift": q_s}
    return lw.layer(op, "conv", params, consts, rows * units * depth)


def _add_multipliers(op, s_in1, s_in2, s_out) -> Dict[str, int]:
    """TFLite's int8 ADD: both inputs scaled to a common 2^20 grid."""
    left = 20
    twice = 2.0 * max(float(np.float64(np.float32(s_in1))), float(np.float64(np.float32(s_in2))))
    m1, sh1 = quant.quantize_multiplier(float(np.float32(s_in1)) / twice)
    m2, sh2 = quant.quantize_multiplier(float(np.float32(s_in2)) / twice)
    mo, sho = quant.quantize_multiplier(twice / ((1 << left) * float(np.float32(s_out))))
    for s in (sh1, sh2, sho):
        if s > 0:
            raise _err(op, "ADD multipliers must be below 1")
    return dict(left_shift=left, m1=m1, s1=sh1, m2=m2, s2=sh2, mo=mo, so=sho)


@lowers("ADD")
def _add(lw, op):
    y_t = op.inputs[1]
    y_tensor, x_tensor = lw.graph.tensors[y_t], lw.graph.tensors[op.inputs[0]]
    if (x_tensor.data is not None or y_tensor.data is not None
            or tuple(x_tensor.shape) != tuple(y_tensor.shape)
            or tuple(x_tensor.shape) != tuple(lw.graph.tensors[op.outputs[0]].shape)):
        return _binary(lw, op, "ADD")     # broadcasting, or a constant operand
    io = lw.io(op)
    s_in2, zp_in2 = lw.int8(y_t, op, "second input")
    lw.spec(y_t)
    size = int(np.prod(io.out.shape))
    params = dict(size=size, in_zp=io.zp_in, in2_zp=zp_in2, out_zp=io.zp_out, act_min=io.act_min,
                  act_max=io.act_max, **_add_multipliers(op, io.s_in, s_in2, io.s_out))
    return lw.layer(op, "add", params, macs=size, inputs=[op.inputs[0], y_t])


@lowers("AVERAGE_POOL_2D", "MAX_POOL_2D")
def _pool(lw, op):
    io = lw.io(op)
    _, ih, iw, c = _nhwc(io.x.shape)
    _, oh, ow, oc = _nhwc(io.out.shape)
    if oc != c or io.x.shape[0] != 1:
        raise _err(op, "pooling must keep the channels, batch 1")
    o = op.options
    kh, kw, sh, sw = int(o.filterHeight), int(o.filterWidth), int(o.strideH), int(o.strideW)
    params = dict(in_h=ih, in_w=iw, c=c, out_h=oh, out_w=ow, k_h=kh, k_w=kw, s_h=sh, s_w=sw,
                  pad_t=_padding(ih, kh, sh, 1, oh), pad_l=_padding(iw, kw, sw, 1, ow),
                  act_min=io.act_min, act_max=io.act_max)
    kind = "avgpool" if op.name == "AVERAGE_POOL_2D" else "maxpool"
    subsample = kind == "maxpool" or (kh == 1 and kw == 1)
    spike = io.x.spike
    if spike is not None and subsample and (io.s_in, io.zp_in) == (io.s_out, io.zp_out) and \
            io.act_min <= min(spike) and io.act_max >= max(spike):
        io.out.spike = spike   # a subsample of a spike tensor is one
    return lw.layer(op, kind, params, macs=oh * ow * c * kh * kw)


def _reduced_axes(lw, op, shape) -> Tuple[int, int, int]:
    """``(outer, reduce, inner)`` of a reduction over the constant axes of
    input 1: a contiguous run of axes."""
    axis_t = lw.graph.tensors[op.inputs[1]]
    if axis_t.data is None:
        raise _err(op, "the axes must be a constant")
    axes = sorted({int(a) % len(shape) for a in np.asarray(axis_t.data).reshape(-1)})
    if not axes:
        return int(np.prod(shape)), 1, 1
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise _err(op, f"axes {axes} are not contiguous; supported: a contiguous run such as [1, 2]")
    return (int(np.prod(shape[:axes[0]])), int(np.prod(shape[axes[0]:axes[-1] + 1])),
            int(np.prod(shape[axes[-1] + 1:])))


@lowers("MEAN")
def _mean(lw, op):
    io = lw.io(op)
    outer, reduce_n, inner = _reduced_axes(lw, op, io.x.shape)
    m, sh = quant.quantize_multiplier(float(np.float64(np.float32(io.s_in)) / np.float64(np.float32(io.s_out))))
    # TFLM's Mean: 1/num_elements folded into the multiplier.
    shift_n = 63 - _clz64(reduce_n)
    shift_n = min(shift_n, 32, 31 + sh)
    m = int((m << shift_n) // reduce_n)
    sh = sh - shift_n
    params = dict(outer=outer, reduce=reduce_n, inner=inner, in_zp=io.zp_in, out_zp=io.zp_out, mult=m, shift=sh,
                  act_min=-128, act_max=127)
    return lw.layer(op, "mean", params, macs=outer * reduce_n * inner)


@lowers("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
def _alias(lw, op):
    """No code: the output is the input's bytes (a spike tensor stays one)."""
    x_t, out_t = op.inputs[0], op.outputs[0]
    x, out = lw.spec(x_t), lw.spec(out_t)
    if x.dtype != out.dtype or x.nbytes != out.nbytes:
        raise _err(op, "input and output differ in type or size")
    lw.aliases[out_t] = x_t
    if x.spike is not None and (x.scale, x.zero_point) == (out.scale, out.zero_point):
        out.spike = x.spike
    return None


@lowers("QUANTIZE")
def _quantize(lw, op):
    x, out = lw.spec(op.inputs[0]), lw.spec(op.outputs[0])
    if out.dtype != "int8":
        raise _err(op, "only QUANTIZE to int8 is supported")
    count = int(np.prod(out.shape))
    if x.dtype == "float32":
        return lw.layer(op, "quantize", {"size": count, "out_zp": out.zero_point},
                        {"scale": np.asarray([out.scale], np.float32)})
    s_in, zp_in = lw.int8(op.inputs[0], op, "input")
    m, s = quant.quantize_multiplier(float(np.float64(s_in) / np.float64(out.scale)))
    return lw.layer(op, "requantize", {"size": count, "in_zp": zp_in, "out_zp": out.zero_point, "mult": m,
                                       "shift": s})


@lowers("DEQUANTIZE")
def _dequantize(lw, op):
    x, out = lw.spec(op.inputs[0]), lw.spec(op.outputs[0])
    if x.dtype != "int8" or out.dtype != "float32":
        raise _err(op, "only DEQUANTIZE from int8 to float32 is supported")
    return lw.layer(op, "dequantize", {"size": int(np.prod(out.shape)), "in_zp": x.zero_point},
                    {"scale": np.asarray([x.scale], np.float32)})


# ------------------------------------------------- shapes, broadcasts, more ops


def _operand(lw, op, t, role):
    """``(activation spec or None, constant codes or None, scale, zero point)``
    of an int8 operand: an activation tensor, or a constant the C keeps in flash."""
    tensor = lw.graph.tensors[t]
    scale, zp = lw.int8(t, op, role)
    if tensor.data is not None:
        return None, np.asarray(tensor.data, np.int8).reshape(tensor.shape), scale, zp
    return lw.spec(t), None, scale, zp


def _broadcast(op, out_shape, shapes) -> Tuple[List[int], List[List[int]]]:
    """The output shape merged into 4 dimensions and, per operand, its stride
    in each (0 where it repeats): TFLite's broadcasting (shapes aligned at the
    last axis, size-1 axes repeat), adjacent axes with the same pattern merged."""
    rank = len(out_shape)
    if any(len(s) > rank for s in shapes):
        raise _err(op, f"operand shapes {[tuple(s) for s in shapes]} have more axes than the output {tuple(out_shape)}")
    ext = [(1,) * (rank - len(s)) + tuple(int(v) for v in s) for s in shapes]
    groups: List[list] = []
    for d, n in enumerate(int(v) for v in out_shape):
        if any(e[d] not in (1, n) for e in ext):
            raise _err(op, f"operand shapes {[tuple(s) for s in shapes]} do not broadcast to {tuple(out_shape)}")
        if n == 1:
            continue
        pattern = tuple(e[d] == 1 for e in ext)
        if groups and groups[-1][1] == pattern:
            groups[-1][0] *= n
        else:
            groups.append([n, pattern])
    if len(groups) > 4:
        raise _err(op, f"broadcasting {[tuple(s) for s in shapes]} to {tuple(out_shape)} needs {len(groups)} "
                       "dimensions after merging; the kernel takes 4")
    groups = [[1, (True,) * len(shapes)]] * (4 - len(groups)) + groups
    strides = []
    for k in range(len(shapes)):
        step, stride = 1, [0, 0, 0, 0]
        for g in range(3, -1, -1):
            if not groups[g][1][k]:
                stride[g] = step
                step *= groups[g][0]
        strides.append(stride)
    return [g[0] for g in groups], strides


def _contiguous(shape, stride) -> bool:
    """The operand has the output's shape (its strides are the output's)."""
    step = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n > 1 and s != step:
            return False
        step *= n
    return True


def _binary(lw, op, name):
    """Broadcast ``ADD``, ``MUL`` (TFLite's int8 arithmetic per element) and
    ``GREATER_EQUAL`` (a bool output): either operand may be a constant."""
    out_t = op.outputs[0]
    out = lw.spec(out_t)
    a, b = (_operand(lw, op, t, role) for t, role in zip(op.inputs[:2], ("first input", "second input")))
    if a[0] is None and b[0] is None:
        raise _err(op, "both operands are constants (the converter folds those)")
    shapes = [x.shape if x is not None else c.shape for x, c, _, _ in (a, b)]
    shape, (sa, sb) = _broadcast(op, out.shape, shapes)
    if name != "GREATER_EQUAL" and (a[0] is None or (not _contiguous(shape, sa) and _contiguous(shape, sb))):
        a, b, sa, sb = b, a, sb, sa   # commutative: the activation with the output's shape first
    (xa, ca, s1, zp1), (xb, cb, s2, zp2) = a, b
    params = dict(op={"ADD": 0, "MUL": 1, "GREATER_EQUAL": 2}[name], a_zp=zp1, b_zp=zp2, left_shift=0, m1=0, s1=0,
                  m2=0, s2=0, mo=0, so=0, a_const=int(xa is None), b_const=int(xb is None),
                  a_full=int(xa is not None and _contiguous(shape, sa)))
    if name == "GREATER_EQUAL":
        if out.dtype != "bool":
            raise _err(op, "GREATER_EQUAL must write a bool tensor")
        params.update(out_zp=0, act_min=0, act_max=1, left_shift=8)
        for i, s in ((1, s1), (2, s2)):
            m, sh = quant.quantize_multiplier(float(np.float64(np.float32(s))))
            if sh > 0:
                raise _err(op, f"input scale {s} is not below 1 (TFLite's comparison grid needs it)")
            params.update({f"m{i}": m, f"s{i}": sh})
    else:
        s_out, zp_out = lw.int8(out_t, op, "output")
        act_min, act_max = quant.activation_range(op.fused_activation, s_out, zp_out)
        params.update(out_zp=zp_out, act_min=act_min, act_max=act_max)
        if name == "ADD":
            params.update(_add_multipliers(op, s1, s2, s_out))
        else:
            params["mo"], params["so"] = quant.quantize_multiplier(
                float(np.float64(np.float32(s1)) * np.float64(np.float32(s2)) / np.float64(np.float32(s_out))))
    params.update({f"n{k}": int(v) for k, v in enumerate(shape)})
    params.update({f"sa{k}": int(v) for k, v in enumerate(sa)})
    params.update({f"sb{k}": int(v) for k, v in enumerate(sb)})
    consts = {k: c for k, c in (("a", ca), ("b", cb)) if c is not None}
    inputs = [x.index for x in (xa, xb) if x is not None]
    return lw.layer(op, "binary", params, consts, int(np.prod(out.shape)), inputs=inputs)


@lowers("MUL")
def _mul(lw, op):
    return _binary(lw, op, "MUL")


@lowers("GREATER_EQUAL")
def _greater_equal(lw, op):
    return _binary(lw, op, "GREATER_EQUAL")


@lowers("SELECT_V2")
def _select_v2(lw, op):
    """``SELECT_V2(cond, x, y)``: the codes of x where cond, else of y (no
    requantization), cond of the output's shape, x and y that or one value."""
    cond, out = lw.spec(op.inputs[0]), lw.spec(op.outputs[0])
    lw.int8(op.outputs[0], op, "output")
    size = int(np.prod(out.shape))
    if cond.dtype != "bool" or int(np.prod(cond.shape)) != size:
        raise _err(op, f"the condition must be a bool tensor of the output's {size} values")
    params, consts, inputs = {"size": size}, {}, [op.inputs[0]]
    for key, t, role in (("x", op.inputs[1], "second input"), ("y", op.inputs[2], "third input")):
        x, c, _, _ = _operand(lw, op, t, role)
        count = int(np.prod(x.shape if x is not None else c.shape))
        if count not in (1, size):
            raise _err(op, f"{role} of {count} values: supported are one value or the output's {size}")
        params[f"{key}_step"] = int(count == size)
        params[f"{key}_const"] = int(x is None)
        if x is None:
            consts[key] = c
        else:
            inputs.append(t)
    return lw.layer(op, "select", params, consts, size, inputs=inputs)


@lowers("CONCATENATION")
def _concatenation(lw, op):
    """A copy: TFLite Micro's int8 CONCATENATION requires every input on the
    output's grid (its Prepare fails otherwise, and so does this)."""
    out = lw.spec(op.outputs[0])
    s_out, zp_out = lw.int8(op.outputs[0], op, "output")
    if op.fused_activation not in (None, "NONE"):
        raise _err(op, f"fused {op.fused_activation}: TFLite Micro's CONCATENATION takes none")
    rank = len(out.shape)
    axis = int(op.options.axis) % rank
    inner = int(np.prod(out.shape[axis + 1:]))
    sizes, sources, consts, spikes = [], {}, {}, set()
    for i, t in enumerate(op.inputs):
        x, c, s, zp = _operand(lw, op, t, f"input {i}")
        shape = tuple(x.shape if x is not None else c.shape)
        if len(shape) != rank or any(shape[d] != out.shape[d] for d in range(rank) if d != axis):
            raise _err(op, f"input {i} of shape {shape} does not concatenate to {out.shape} on axis {axis}")
        if (np.float32(s), zp) != (np.float32(s_out), zp_out):
            raise _err(op, f"input {i} has scale {s} and zero point {zp}, the output {s_out} and {zp_out}: "
                           "TFLite Micro's int8 CONCATENATION requires the same (the converter requantizes first)")
        sizes.append(shape[axis] * inner)
        sources[f"src{i}"] = -1 if x is None else int(t)    # -1: the constant consts["k<i>"]
        if x is None:
            consts[f"k{i}"] = c
        else:
            spikes.add(x.spike)
    if len(spikes) == 1 and None not in spikes and not consts:
        out.spike = next(iter(spikes))     # spike tensors on one grid: the output is one
    consts["sizes"] = np.asarray(sizes, np.int32)
    return lw.layer(op, "concat", dict(outer=int(np.prod(out.shape[:axis])), count=len(sizes), **sources), consts,
                    int(np.prod(out.shape)), inputs=[t for t in sources.values() if t >= 0])


def _nearest_indices(out_size, in_size, align_corners, half_pixel) -> np.ndarray:
    """TFLite's ``GetNearestNeighbor`` for every output index, in its float32
    arithmetic (a constant table: the C only reads it)."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel else f32(0.0)
    out = np.zeros(out_size, np.int32)
    for i in range(out_size):
        v = (f32(i) + offset) * scale
        v = quant.round_half_away(float(v)) if align_corners else np.floor(v)
        v = min(int(v), in_size - 1)
        out[i] = max(v, 0) if half_pixel else v
    return out


@lowers("RESIZE_NEAREST_NEIGHBOR")
def _resize_nearest(lw, op):
    """A gather of input pixels (TFLite copies the codes: no requantization)."""
    io = lw.io(op)
    size_t = lw.graph.tensors[op.inputs[1]]
    if size_t.data is None:
        raise _err(op, "the output size must be a constant (TFLite Micro requires it)")
    if len(io.x.shape) != 4:
        raise _err(op, f"input of shape {io.x.shape}: TFLite Micro resizes 4-D NHWC tensors")
    n, ih, iw, c = _nhwc(io.x.shape)
    _, oh, ow, oc = _nhwc(io.out.shape)
    if tuple(int(v) for v in np.asarray(size_t.data).reshape(-1)) != (oh, ow) or oc != c:
        raise _err(op, f"output shape {io.out.shape} does not match size {np.asarray(size_t.data).tolist()}")
    o = op.options
    align, half = bool(o.alignCorners), bool(o.halfPixelCenters)
    if io.x.spike is not None and (io.s_in, io.zp_in) == (io.s_out, io.zp_out):
        io.out.spike = io.x.spike
    consts = {"ys": _nearest_indices(oh, ih, align, half), "xs": _nearest_indices(ow, iw, align, half)}
    params = dict(batch=n, in_h=ih, in_w=iw, c=c, out_h=oh, out_w=ow)
    return lw.layer(op, "resize", params, consts, n * oh * ow * c)


def _transpose_padding(same: bool, out_size: int, k: int, stride: int) -> int:
    """TFLite's padding of a TRANSPOSE_CONV: that of the conv from its output
    (the size of that conv's own output from SAME/VALID), the smaller half."""
    conv_out = (out_size + stride - 1) // stride if same else (out_size + stride - k) // stride
    return max((conv_out - 1) * stride + k - out_size, 0) // 2


@lowers("TRANSPOSE_CONV")
def _transpose_conv(lw, op):
    """Inputs: output shape, weights OHWI, the activation, optional bias."""
    from export.tflite.flatbuffer import schema

    if len(op.inputs) < 3:
        raise _err(op, "expected inputs (output shape, weights, input[, bias])")
    io = lw.io(op, x_index=2)
    shape_t = lw.graph.tensors[op.inputs[0]]
    if shape_t.data is None or tuple(int(v) for v in np.asarray(shape_t.data).reshape(-1)) != tuple(io.out.shape):
        raise _err(op, f"the output shape must be a constant equal to {io.out.shape}")
    w_tensor, w = _const_weights(lw.graph, op, 1)
    _, ih, iw, ic = _nhwc(io.x.shape)
    _, oh, ow, oc = _nhwc(io.out.shape)
    if io.x.shape[0] != 1:
        raise _err(op, f"batch {io.x.shape[0]}: the generator runs batch 1")
    if w.ndim != 4 or w.shape[0] != oc or w.shape[3] != ic:
        raise _err(op, f"weights of shape {w.shape} do not match input {io.x.shape} / output {io.out.shape}")
    kh, kw = int(w.shape[1]), int(w.shape[2])
    o = op.options
    sh, sw = int(o.strideH), int(o.strideW)
    same = int(o.padding) == schema().Padding.SAME
    params = dict(in_h=ih, in_w=iw, in_c=ic, out_h=oh, out_w=ow, out_c=oc, k_h=kh, k_w=kw, s_h=sh, s_w=sw,
                  pad_t=_transpose_padding(same, oh, kh, sh), pad_l=_transpose_padding(same, ow, kw, sw), **io.common)
    q_m, q_s = _per_channel(op, io.s_in, w_tensor, io.s_out, oc)
    consts = {"w": w, "bias": _bias(lw.graph, op, 3, oc), "mult": q_m, "shift": q_s}
    return lw.layer(op, "tconv", params, consts, ih * iw * ic * kh * kw * oc, inputs=[op.inputs[2]])


@lowers("REDUCE_MAX")
def _reduce_max(lw, op):
    """The largest code (TFLite Micro requires the output on the input's
    grid); of a spike tensor, a spike tensor (an OR of the spikes)."""
    io = lw.io(op)
    if (io.s_in, io.zp_in) != (io.s_out, io.zp_out):
        raise _err(op, f"input grid ({io.s_in}, {io.zp_in}) and output grid ({io.s_out}, {io.zp_out}) differ: "
                       "TFLite Micro's int8 REDUCE_MAX requires the same")
    outer, reduce_n, inner = _reduced_axes(lw, op, io.x.shape)
    if io.x.spike is not None:
        io.out.spike = io.x.spike
    return lw.layer(op, "reduce_max", dict(outer=outer, reduce=reduce_n, inner=inner),
                    macs=outer * reduce_n * inner)


#: The operators with a lowering, in the order of the table above.
SUPPORTED_OPS = tuple(LOWERINGS)


def _spike_layouts(lw, layer):
    """A conv or dwconv reading a spike tensor whose off code is its zero
    point gets the spike-driven layouts (small enough kernels only)."""
    layouts = SPIKE_LAYOUTS_OF_KIND.get(layer.kind)
    spike = lw.tensors[layer.inputs[0]].spike
    p = layer.params
    if (layouts and spike is not None and spike[0] == p["in_zp"] and spike[1] != p["in_zp"]
            and p["k_h"] * p["k_w"] <= MAX_SPIKE_TAPS):
        layer.spike = spike
        layer.layouts = (DENSE,) + layouts


def parsed_model(model):
    """``model`` as :func:`export.tflite.flatbuffer.read_model` gives it:
    a parsed model as it is, bytes or a ``.tflite`` path read."""
    from export.tflite.flatbuffer import TFLiteModel, read_model

    return model if isinstance(model, TFLiteModel) else read_model(model)


def lower(model, spike_codes: Optional[Dict[int, Tuple[int, int]]] = None) -> Program:
    """Lowers the main subgraph of an int8 flatbuffer (bytes, a path, or
    parsed: :func:`export.tflite.flatbuffer.read_model`) to a
    :class:`Program`. ``spike_codes``: ``{tensor index: (off code, on code)}``
    of the spike tensors (see the module docstring).

    Raises:
      UnsupportedModelError: an operator, dtype or option without a kernel.
    """
    from export.tflite.flatbuffer import op_counts

    model = parsed_model(model)
    if len(model.subgraphs) != 1:
        raise UnsupportedModelError(f"the model has {len(model.subgraphs)} subgraphs; the generator runs one")
    graph = model.main
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedModelError(f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                    "the generator supports one of each")
    lw = _Lowering(graph, spike_codes)
    lw.spec(graph.inputs[0])
    for op in graph.operators:
        lowering = LOWERINGS.get(op.name)
        if lowering is None:
            raise UnsupportedModelError(
                f"operator {op.index} ({op.name}) has no microcontroller kernel; supported: {', '.join(SUPPORTED_OPS)}")
        lw.spec(op.outputs[0])
        layer = lowering(lw, op)
        if layer is not None:
            _spike_layouts(lw, layer)
            lw.layers.append(layer)
    lw.spec(graph.outputs[0])
    program = Program(lw.layers, lw.tensors, graph.inputs[0], graph.outputs[0], lw.aliases, op_counts(model))
    plan_spike_outputs(program)   # 1x1 subsamples folded, ADD + neuron fused, spike outputs by thresholds
    return program


def _clz64(v: int) -> int:
    return 64 - int(v).bit_length()
