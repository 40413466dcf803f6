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

Spike tensors (``spike_levels``: ``{tensor index: (off code, on code)}``,
from :func:`export.tflite.convert.convert`'s ``spike_tensors``) stay spike tensors
through ``MAX_POOL_2D``, 1x1 ``AVERAGE_POOL_2D`` (a subsample) and
``RESHAPE``; a ``conv`` reading one whose off code is its zero point gets
the spike-driven layouts (:data:`SPIKE_LAYOUTS`), a ``dwconv`` reading one
:data:`DWCONV_SPIKE_LAYOUTS`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from export import quant

__all__ = ["UnsupportedModelError", "TensorSpec", "Layer", "Program", "lower", "DENSE", "SPIKE_LAYOUTS",
           "DWCONV_SPIKE_LAYOUTS", "LAYOUTS", "SUPPORTED_OPS"]

DENSE = "dense"
#: Spike-driven layouts of a conv reading a spike tensor: ``spike_list``
#: (per input pixel the list of channels that fired) and ``spike_mask``
#: (per input pixel a bit mask of the channels that fired).
SPIKE_LAYOUTS = ("spike_list", "spike_mask")
#: ... and of a depthwise conv reading one (per output pixel, each fired
#: channel adds its tap's weight to its own channels).
DWCONV_SPIKE_LAYOUTS = ("spike_list",)
LAYOUTS = (DENSE,) + SPIKE_LAYOUTS
#: Kernel taps (k_h k_w) up to which a layer gets the spike layouts (the
#: kernels' receptive-field list, S2_MAX_TAPS in s2mcu.c).
MAX_SPIKE_TAPS = 64
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                 "MEAN", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE")
_ALIAS_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
_INT16_MAX = 32767


class UnsupportedModelError(ValueError):
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


def _int8_act(graph, t, op, role):
    tensor = graph.tensors[t]
    if tensor.type_name != "INT8":
        raise _err(op, f"{role} tensor {tensor.name!r} is {tensor.type_name}; the microcontroller generator runs "
                       "full-integer int8 models (export with quantization 'int8')")
    q = tensor.quantization
    if q is None or q.scales.size != 1:
        raise _err(op, f"{role} tensor {tensor.name!r} needs one per-tensor scale and zero point")
    return float(q.scales[0]), int(q.zero_points[0])


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


def lower(flatbuffer, spike_levels: Optional[Dict[int, Tuple[int, int]]] = None) -> Program:
    """Lowers the main subgraph of an int8 flatbuffer (bytes or path) to a
    :class:`Program`. ``spike_levels``: ``{tensor index: (off code, on code)}``
    of the spike tensors (see the module docstring).

    Raises:
      UnsupportedModelError: an operator, dtype or option without a kernel.
    """
    from export.tflite.flatbuffer import op_counts, read_model

    model = read_model(flatbuffer)
    if len(model.subgraphs) != 1:
        raise UnsupportedModelError(f"the model has {len(model.subgraphs)} subgraphs; the generator runs one")
    graph = model.main
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedModelError(f"the model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                                    "the generator supports one of each")
    tensors: Dict[int, TensorSpec] = {}
    spikes = dict(spike_levels or {})

    def spec(t):
        if t not in tensors:
            tensor = graph.tensors[t]
            if tensor.type_name not in ("INT8", "FLOAT32"):
                raise UnsupportedModelError(f"tensor {tensor.name!r} is {tensor.type_name}; activations must be "
                                            "int8 (float32 only at a QUANTIZE/DEQUANTIZE boundary)")
            if any(s <= 0 for s in tensor.shape_signature[1:]) or any(s <= 0 for s in tensor.shape):
                raise UnsupportedModelError(f"tensor {tensor.name!r} has a dynamic shape {tensor.shape_signature}")
            q = tensor.quantization
            scale, zp = (float(q.scales[0]), int(q.zero_points[0])) if q is not None and q.scales.size == 1 else (1.0, 0)
            tensors[t] = TensorSpec(t, tensor.name, tuple(int(s) for s in tensor.shape),
                                    "float32" if tensor.type_name == "FLOAT32" else "int8", scale, zp,
                                    spikes.get(t))
        return tensors[t]

    layers: List[Layer] = []
    aliases: Dict[int, int] = {}
    spec(graph.inputs[0])
    for op in graph.operators:
        if op.name not in SUPPORTED_OPS:
            raise UnsupportedModelError(
                f"operator {op.index} ({op.name}) has no microcontroller kernel; supported: {', '.join(SUPPORTED_OPS)}")
        out_t = op.outputs[0]
        x_t = op.inputs[0]
        out = spec(out_t)
        name = short_name(out.name, f"{op.name.lower()}_{op.index}")
        act = op.fused_activation

        if op.name in _ALIAS_OPS:
            x = spec(x_t)
            if x.dtype != out.dtype or x.nbytes != out.nbytes:
                raise _err(op, "input and output differ in type or size")
            aliases[out_t] = x_t
            if x.spike is not None and (x.scale, x.zero_point) == (out.scale, out.zero_point):
                out.spike = x.spike
            continue

        if op.name == "QUANTIZE":
            x = spec(x_t)
            if out.dtype != "int8":
                raise _err(op, "only QUANTIZE to int8 is supported")
            count = int(np.prod(out.shape))
            if x.dtype == "float32":
                layers.append(Layer(len(layers), op.name, op.index, "quantize", name, [x_t], [out_t],
                                    {"size": count, "out_zp": out.zero_point},
                                    {"scale": np.asarray([out.scale], np.float32)}))
            else:
                s_in, zp_in = _int8_act(graph, x_t, op, "input")
                m, s = quant.quantize_multiplier(float(np.float64(s_in) / np.float64(out.scale)))
                layers.append(Layer(len(layers), op.name, op.index, "requantize", name, [x_t], [out_t],
                                    {"size": count, "in_zp": zp_in, "out_zp": out.zero_point, "mult": m,
                                     "shift": s}))
            continue
        if op.name == "DEQUANTIZE":
            x = spec(x_t)
            if x.dtype != "int8" or out.dtype != "float32":
                raise _err(op, "only DEQUANTIZE from int8 to float32 is supported")
            layers.append(Layer(len(layers), op.name, op.index, "dequantize", name, [x_t], [out_t],
                                {"size": int(np.prod(out.shape)), "in_zp": x.zero_point},
                                {"scale": np.asarray([x.scale], np.float32)}))
            continue

        s_in, zp_in = _int8_act(graph, x_t, op, "input")
        s_out, zp_out = _int8_act(graph, out_t, op, "output")
        x = spec(x_t)
        act_min, act_max = quant.activation_range(act, s_out, zp_out)
        common = {"in_zp": zp_in, "out_zp": zp_out, "act_min": act_min, "act_max": act_max}

        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _, ih, iw, ic = _nhwc(x.shape)
            _, oh, ow, oc = _nhwc(out.shape)
            w_tensor, w = _const_weights(graph, op, 1)
            o = op.options
            sh, sw = int(o.strideH), int(o.strideW)
            dh, dw = int(getattr(o, "dilationHFactor", 1) or 1), int(getattr(o, "dilationWFactor", 1) or 1)
            if op.name == "CONV_2D":
                if w.ndim != 4 or w.shape[0] != oc or w.shape[3] != ic:
                    raise _err(op, f"weights of shape {w.shape} do not match input {x.shape} / output {out.shape}")
                kh, kw = int(w.shape[1]), int(w.shape[2])
            else:
                if w.ndim != 4 or w.shape[0] != 1 or w.shape[3] != oc:
                    raise _err(op, f"depthwise weights of shape {w.shape} do not match output {out.shape}")
                kh, kw = int(w.shape[1]), int(w.shape[2])
                mult_d = int(o.depthMultiplier or 1)
                if oc != ic * mult_d:
                    mult_d = oc // ic if ic and oc % ic == 0 else 0
                if mult_d < 1 or oc != ic * mult_d:
                    raise _err(op, f"{oc} output channels are not a multiple of {ic} input channels")
            if x.shape[0] != 1:
                raise _err(op, f"batch {x.shape[0]}: the generator runs batch 1")
            params = dict(in_h=ih, in_w=iw, in_c=ic, out_h=oh, out_w=ow, out_c=oc, k_h=kh, k_w=kw, s_h=sh,
                          s_w=sw, d_h=dh, d_w=dw, pad_t=_padding(ih, kh, sh, dh, oh),
                          pad_l=_padding(iw, kw, sw, dw, ow), **common)
            q_m, q_s = _per_channel(op, s_in, w_tensor, s_out, oc)
            consts = {"w": w if op.name == "CONV_2D" else w.reshape(kh, kw, oc), "bias": _bias(graph, op, 2, oc),
                      "mult": q_m, "shift": q_s}
            if op.name == "CONV_2D":
                macs = oh * ow * oc * kh * kw * ic
                layer = Layer(len(layers), op.name, op.index, "conv", name, [x_t], [out_t], params, consts, macs)
            else:
                params["depth_mult"] = mult_d
                macs = oh * ow * oc * kh * kw
                layer = Layer(len(layers), op.name, op.index, "dwconv", name, [x_t], [out_t], params, consts, macs)
        elif op.name == "FULLY_CONNECTED":
            w_tensor, w = _const_weights(graph, op, 1)
            if w.ndim != 2:
                raise _err(op, f"weights of shape {w.shape}: expected [units, inputs]")
            units, depth = int(w.shape[0]), int(w.shape[1])
            count = int(np.prod(x.shape))
            if count % depth:
                raise _err(op, f"input of {count} values is not a multiple of {depth} inputs per row")
            rows = count // depth
            if int(np.prod(out.shape)) != rows * units:
                raise _err(op, f"output shape {out.shape} is not {rows} x {units}")
            params = dict(in_h=1, in_w=rows, in_c=depth, out_h=1, out_w=rows, out_c=units, k_h=1, k_w=1, s_h=1,
                          s_w=1, d_h=1, d_w=1, pad_t=0, pad_l=0, **common)
            q_m, q_s = _per_channel(op, s_in, w_tensor, s_out, units)
            consts = {"w": w.reshape(units, 1, 1, depth), "bias": _bias(graph, op, 2, units), "mult": q_m,
                      "shift": q_s}
            layer = Layer(len(layers), op.name, op.index, "conv", name, [x_t], [out_t], params, consts,
                          rows * units * depth)
        elif op.name == "ADD":
            y_t = op.inputs[1]
            s_in2, zp_in2 = _int8_act(graph, y_t, op, "second input")
            y = spec(y_t)
            if tuple(x.shape) != tuple(y.shape) or tuple(x.shape) != tuple(out.shape):
                raise _err(op, f"broadcasting ADD {x.shape} + {y.shape} is not supported (same shapes only)")
            left = 20
            twice = 2.0 * max(float(np.float64(np.float32(s_in))), float(np.float64(np.float32(s_in2))))
            m1, sh1 = quant.quantize_multiplier(float(np.float32(s_in)) / twice)
            m2, sh2 = quant.quantize_multiplier(float(np.float32(s_in2)) / twice)
            mo, sho = quant.quantize_multiplier(twice / ((1 << left) * float(np.float32(s_out))))
            for s in (sh1, sh2, sho):
                if s > 0:
                    raise _err(op, "ADD multipliers must be below 1")
            params = dict(size=int(np.prod(out.shape)), in_zp=zp_in, in2_zp=zp_in2, out_zp=zp_out,
                          act_min=act_min, act_max=act_max, left_shift=left, m1=m1, s1=sh1, m2=m2, s2=sh2, mo=mo,
                          so=sho)
            layer = Layer(len(layers), op.name, op.index, "add", name, [x_t, y_t], [out_t], params,
                          macs=int(np.prod(out.shape)))
        elif op.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            _, ih, iw, c = _nhwc(x.shape)
            _, oh, ow, oc = _nhwc(out.shape)
            if oc != c or x.shape[0] != 1:
                raise _err(op, "pooling must keep the channels, batch 1")
            o = op.options
            kh, kw, sh, sw = int(o.filterHeight), int(o.filterWidth), int(o.strideH), int(o.strideW)
            params = dict(in_h=ih, in_w=iw, c=c, out_h=oh, out_w=ow, k_h=kh, k_w=kw, s_h=sh, s_w=sw,
                          pad_t=_padding(ih, kh, sh, 1, oh), pad_l=_padding(iw, kw, sw, 1, ow),
                          act_min=act_min, act_max=act_max)
            kind = "avgpool" if op.name == "AVERAGE_POOL_2D" else "maxpool"
            layer = Layer(len(layers), op.name, op.index, kind, name, [x_t], [out_t], params,
                          macs=oh * ow * c * kh * kw)
            subsample = kind == "maxpool" or (kh == 1 and kw == 1)
            if x.spike is not None and subsample and (s_in, zp_in) == (s_out, zp_out) and \
                    act_min <= min(x.spike) and act_max >= max(x.spike):
                out.spike = x.spike
        else:  # MEAN
            axis_t = graph.tensors[op.inputs[1]]
            if axis_t.data is None:
                raise _err(op, "the axes must be a constant")
            rank = len(x.shape)
            axes = sorted({int(a) % rank for a in np.asarray(axis_t.data).reshape(-1)})
            if axes != list(range(axes[0], axes[-1] + 1)):
                raise _err(op, f"axes {axes} are not contiguous; supported: a contiguous run such as [1, 2]")
            outer = int(np.prod(x.shape[:axes[0]]))
            reduce_n = int(np.prod(x.shape[axes[0]:axes[-1] + 1]))
            inner = int(np.prod(x.shape[axes[-1] + 1:]))
            m, sh = quant.quantize_multiplier(float(np.float64(np.float32(s_in)) / np.float64(np.float32(s_out))))
            # TFLM's Mean: 1/num_elements folded into the multiplier.
            shift_n = 63 - _clz64(reduce_n)
            shift_n = min(shift_n, 32, 31 + sh)
            m = int((m << shift_n) // reduce_n)
            sh = sh - shift_n
            params = dict(outer=outer, reduce=reduce_n, inner=inner, in_zp=zp_in, out_zp=zp_out, mult=m, shift=sh,
                          act_min=-128, act_max=127)
            layer = Layer(len(layers), op.name, op.index, "mean", name, [x_t], [out_t], params,
                          macs=outer * reduce_n * inner)
        if (layer.kind in ("conv", "dwconv") and x.spike is not None and x.spike[0] == zp_in and x.spike[1] != zp_in
                and layer.params["k_h"] * layer.params["k_w"] <= MAX_SPIKE_TAPS):
            layer.spike = x.spike
            layer.layouts = (DENSE,) + (SPIKE_LAYOUTS if layer.kind == "conv" else DWCONV_SPIKE_LAYOUTS)
        layers.append(layer)
    root_out = graph.outputs[0]
    spec(root_out)
    return Program(layers, tensors, graph.inputs[0], root_out, aliases, op_counts(model))


def _clz64(v: int) -> int:
    return 64 - int(v).bit_length()
