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
``ADD``                        ``add`` (same shapes)
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
through ``MAX_POOL_2D``, 1x1 ``AVERAGE_POOL_2D`` (a subsample) and
``RESHAPE``; a ``conv`` reading one whose off code is its zero point gets
the spike-driven layouts (:data:`SPIKE_LAYOUTS`), a ``dwconv`` reading one
:data:`DWCONV_SPIKE_LAYOUTS`.

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
SPIKE_LAYOUTS_OF_KIND = {"conv": SPIKE_LAYOUTS, "dwconv": DWCONV_SPIKE_LAYOUTS}
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
    dtype: str                      # "int8" or "float32"
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
            if tensor.type_name not in ("INT8", "FLOAT32"):
                raise UnsupportedModelError(f"tensor {tensor.name!r} is {tensor.type_name}; activations must be "
                                            "int8 (float32 only at a QUANTIZE/DEQUANTIZE boundary)")
            if any(s <= 0 for s in tensor.shape_signature[1:]) or any(s <= 0 for s in tensor.shape):
                raise UnsupportedModelError(f"tensor {tensor.name!r} has a dynamic shape {tensor.shape_signature}")
            q = tensor.quantization
            one = q is not None and q.scales.size == 1
            scale, zp = (float(q.scales[0]), int(q.zero_points[0])) if one else (1.0, 0)
            self.tensors[t] = TensorSpec(t, tensor.name, tuple(int(s) for s in tensor.shape),
                                         "float32" if tensor.type_name == "FLOAT32" else "int8", scale, zp,
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

    def io(self, op) -> _Io:
        """The int8 input 0 and output of ``op``."""
        x_t, out_t = op.inputs[0], op.outputs[0]
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


@lowers("ADD")
def _add(lw, op):
    io = lw.io(op)
    y_t = op.inputs[1]
    s_in2, zp_in2 = lw.int8(y_t, op, "second input")
    y = lw.spec(y_t)
    if tuple(io.x.shape) != tuple(y.shape) or tuple(io.x.shape) != tuple(io.out.shape):
        raise _err(op, f"broadcasting ADD {io.x.shape} + {y.shape} is not supported (same shapes only)")
    left = 20
    twice = 2.0 * max(float(np.float64(np.float32(io.s_in))), float(np.float64(np.float32(s_in2))))
    m1, sh1 = quant.quantize_multiplier(float(np.float32(io.s_in)) / twice)
    m2, sh2 = quant.quantize_multiplier(float(np.float32(s_in2)) / twice)
    mo, sho = quant.quantize_multiplier(twice / ((1 << left) * float(np.float32(io.s_out))))
    for s in (sh1, sh2, sho):
        if s > 0:
            raise _err(op, "ADD multipliers must be below 1")
    size = int(np.prod(io.out.shape))
    params = dict(size=size, in_zp=io.zp_in, in2_zp=zp_in2, out_zp=io.zp_out, act_min=io.act_min,
                  act_max=io.act_max, left_shift=left, m1=m1, s1=sh1, m2=m2, s2=sh2, mo=mo, so=sho)
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


@lowers("MEAN")
def _mean(lw, op):
    io = lw.io(op)
    axis_t = lw.graph.tensors[op.inputs[1]]
    if axis_t.data is None:
        raise _err(op, "the axes must be a constant")
    shape = io.x.shape
    axes = sorted({int(a) % len(shape) for a in np.asarray(axis_t.data).reshape(-1)})
    if axes != list(range(axes[0], axes[-1] + 1)):
        raise _err(op, f"axes {axes} are not contiguous; supported: a contiguous run such as [1, 2]")
    outer = int(np.prod(shape[:axes[0]]))
    reduce_n = int(np.prod(shape[axes[0]:axes[-1] + 1]))
    inner = int(np.prod(shape[axes[-1] + 1:]))
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
    return Program(lw.layers, lw.tensors, graph.inputs[0], graph.outputs[0], lw.aliases, op_counts(model))


def _clz64(v: int) -> int:
    return 64 - int(v).bit_length()
