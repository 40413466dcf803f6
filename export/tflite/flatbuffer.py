"""Reads a ``.tflite`` flatbuffer: operators, tensors, quantization, weights.

The one TFLite op reader of the project, built on the TFLite flatbuffer
schema (the generated ``schema_py_generated`` module that ships with LiteRT,
``ai-edge-litert``; the copy inside ``tflite-micro`` or TensorFlow is used
when LiteRT is absent). No interpreter is created and nothing runs: the
file is parsed.

Per subgraph it gives

* the operators in execution order: builtin name (``"CONV_2D"``;
  ``"CUSTOM:<code>"`` for custom ops), input/output tensor indices (``-1``
  for an omitted optional input), the builtin options object, and the
  fused activation function (``"NONE"``, ``"RELU"``, ``"RELU6"``,
  ``"RELU_N1_TO_1"``, ``"TANH"``, ``"SIGN_BIT"``) of the ops whose options
  carry one (``None`` for the others);
* the tensors: name, shape (and shape signature, ``-1`` for a dynamic
  dimension), NumPy dtype, quantization (scales, zero points,
  quantized dimension) and, for constants, the buffer contents as a NumPy
  array of that dtype and shape.

Example::

    from export.tflite.flatbuffer import read_model, op_counts

    model = read_model("model_int8.tflite")
    graph = model.subgraphs[0]
    for op in graph.operators:
        print(op.name, op.fused_activation, [graph.tensors[i].name for i in op.inputs if i >= 0])
    conv = next(op for op in graph.operators if op.name == "CONV_2D")
    w = graph.tensors[conv.inputs[1]]
    w.data, w.quantization.scales, w.quantization.quantized_dimension
    w.dequantized()                          # float64 weights (data - zp) * scale
    op_counts(open("m.tflite", "rb").read())  # {"CONV_2D": 3, "FULLY_CONNECTED": 1, ...}
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["Quantization", "Tensor", "Operator", "Subgraph", "TFLiteModel", "read_model", "op_counts",
           "schema"]

_SCHEMA_MODULES = (
    "ai_edge_litert.schema_py_generated",
    "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
    "tensorflow.lite.python.schema_py_generated",
)


@functools.lru_cache(maxsize=1)
def schema():
    """The generated TFLite schema module (``tflite`` flatbuffer namespace)."""
    import importlib

    for name in _SCHEMA_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("reading .tflite files needs the TFLite schema from LiteRT: "
                      "pip install 's2nn_keras[tf]' (ai-edge-litert)")


def _enum_names(cls) -> Dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


@functools.lru_cache(maxsize=1)
def _tables():
    s = schema()
    tensor_types = _enum_names(s.TensorType)
    dtypes = {}
    for code, name in tensor_types.items():
        try:
            dtypes[code] = np.dtype({"BOOL": "bool", "STRING": "object"}.get(name, name.lower()))
        except TypeError:  # INT4, BFLOAT16, RESOURCE, VARIANT, FLOAT8...: no NumPy dtype
            dtypes[code] = None
    dtypes[_code(s.TensorType, "STRING")] = None
    return {
        "ops": _enum_names(s.BuiltinOperator),
        "options": _enum_names(s.BuiltinOptions),
        "activations": _enum_names(s.ActivationFunctionType),
        "types": tensor_types,
        "dtypes": dtypes,
    }


def _code(cls, name):
    return getattr(cls, name, -1)


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


@dataclasses.dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale``.

    ``scales``/``zero_points`` hold one entry per tensor (per-tensor) or one
    per index of axis ``quantized_dimension`` (per-channel)."""

    scales: np.ndarray
    zero_points: np.ndarray
    quantized_dimension: int
    min: Optional[np.ndarray] = None
    max: Optional[np.ndarray] = None

    @property
    def per_channel(self) -> bool:
        return self.scales.size > 1

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """``(values - zero_point) * scale`` in float64, broadcast along
        ``quantized_dimension`` when per-channel."""
        values = np.asarray(values)
        scales = self.scales.astype(np.float64)
        zps = self.zero_points.astype(np.float64) if self.zero_points.size else np.zeros_like(scales)
        if scales.size == 1:
            return (values.astype(np.float64) - zps.reshape(())) * scales.reshape(())
        shape = [1] * values.ndim
        shape[self.quantized_dimension] = scales.size
        return (values.astype(np.float64) - zps.reshape(shape)) * scales.reshape(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Tensor:
    """One tensor of a subgraph.

    Attributes:
      index: position in ``Subgraph.tensors`` (what operators refer to).
      name: the converter's tensor name (holds the Keras layer path).
      shape: static shape (batch included).
      shape_signature: shape with ``-1`` for dynamic dimensions (``shape``
        when the file records none).
      type_name: schema type (``"FLOAT32"``, ``"INT8"``, ``"INT4"``, ...).
      dtype: the NumPy dtype, or ``None`` for types NumPy lacks (INT4, ...).
      quantization: a :class:`Quantization`, or ``None`` if not quantized.
      buffer: index of the buffer holding the constant (0 = none).
      data: the constant's contents as an array of ``dtype`` and ``shape``
        (raw ``uint8`` bytes when ``dtype`` is ``None``), or ``None`` for
        activations and inputs.
      is_variable: a variable tensor (state), not a constant.
    """

    index: int
    name: str
    shape: Tuple[int, ...]
    shape_signature: Tuple[int, ...]
    type_name: str
    dtype: Optional[np.dtype]
    quantization: Optional[Quantization]
    buffer: int
    data: Optional[np.ndarray]
    is_variable: bool = False

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    def dequantized(self) -> Optional[np.ndarray]:
        """The constant's real values (float64): dequantized when quantized,
        else the data itself; ``None`` for non-constants."""
        if self.data is None:
            return None
        if self.quantization is not None and self.dtype is not None and self.dtype.kind in "iu":
            return self.quantization.dequantize(self.data)
        return np.asarray(self.data, dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
    """One operator of a subgraph (in execution order).

    Attributes:
      index: position in ``Subgraph.operators``.
      name: builtin op name (``"CONV_2D"``), ``"CUSTOM:<code>"`` for custom ops.
      opcode: the builtin operator code.
      version: the op version recorded in the file.
      inputs, outputs: tensor indices (``-1``: omitted optional input).
      options_type: name of the builtin options table (``"Conv2DOptions"``), or ``None``.
      options: the schema's options object (fields in camelCase, e.g.
        ``strideW``, ``padding``, ``depthMultiplier``), or ``None``.
      fused_activation: the ``fused_activation_function`` of the options
        (``"NONE"``, ``"RELU"``, ``"RELU6"``, ...) for ops that have one,
        else ``None``.
    """

    index: int
    name: str
    opcode: int
    version: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options_type: Optional[str]
    options: object
    fused_activation: Optional[str]


@dataclasses.dataclass(frozen=True, eq=False)
class Subgraph:
    """Operators and tensors of one subgraph."""

    index: int
    name: str
    tensors: Tuple[Tensor, ...]
    operators: Tuple[Operator, ...]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]

    @functools.cached_property
    def _producers(self) -> Dict[int, Operator]:
        return {t: op for op in self.operators for t in op.outputs if t >= 0}

    @functools.cached_property
    def _consumers(self) -> Dict[int, List[Operator]]:
        out = collections.defaultdict(list)
        for op in self.operators:
            for t in dict.fromkeys(op.inputs):
                if t >= 0:
                    out[t].append(op)
        return out

    def producer(self, tensor: int) -> Optional[Operator]:
        """The operator writing tensor ``tensor``; ``None`` for inputs and constants."""
        return self._producers.get(tensor)

    def consumers(self, tensor: int) -> List[Operator]:
        """The operators reading tensor ``tensor``, in execution order."""
        return list(self._consumers.get(tensor, ()))


@dataclasses.dataclass(frozen=True, eq=False)
class TFLiteModel:
    """A parsed ``.tflite`` file."""

    version: int
    description: str
    subgraphs: Tuple[Subgraph, ...]

    @property
    def main(self) -> Subgraph:
        """Subgraph 0, the one the interpreter runs."""
        return self.subgraphs[0]


def _as_bytes(model: Union[bytes, bytearray, memoryview, str, os.PathLike]) -> bytes:
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    raise TypeError(f"expected .tflite bytes or a path, got {type(model).__name__}")


def _quantization(q) -> Optional[Quantization]:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    scales = np.asarray(q.scale, dtype=np.float32)
    zps = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(scales.size), dtype=np.int64)
    mins = np.asarray(q.min, dtype=np.float32) if q.min is not None and len(q.min) else None
    maxs = np.asarray(q.max, dtype=np.float32) if q.max is not None and len(q.max) else None
    return Quantization(scales, zps, int(q.quantizedDimension or 0), mins, maxs)


def _buffer_bytes(buf, raw: bytes) -> Optional[np.ndarray]:
    if buf is None:
        return None
    if buf.offset and buf.offset > 1:  # data outside the flatbuffer (models > 2 GB)
        return np.frombuffer(raw, dtype=np.uint8, count=int(buf.size), offset=int(buf.offset))
    if buf.data is None or len(buf.data) == 0:
        return None
    return np.asarray(buf.data, dtype=np.uint8)


def read_model(model: Union[bytes, str, os.PathLike]) -> TFLiteModel:
    """Parses a TFLite flatbuffer (bytes or a ``.tflite`` path).

    Raises:
      ValueError: the bytes are not a TFLite flatbuffer.
      ImportError: no TFLite schema module is installed (the ``tf`` extra).
    """
    raw = _as_bytes(model)
    s = schema()
    tables = _tables()
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (file identifier 'TFL3' missing)")
    try:
        m = s.ModelT.InitFromObj(s.Model.GetRootAs(raw, 0))
    except Exception as err:  # corrupt offsets surface as struct/index errors
        raise ValueError(f"corrupt TFLite flatbuffer: {type(err).__name__}: {err}") from None
    if not m.subgraphs:
        raise ValueError("not a usable TFLite model: it has no subgraph")
    codes = []
    for oc in m.operatorCodes or []:
        code = max(int(oc.builtinCode or 0), int(oc.deprecatedBuiltinCode or 0))
        name = tables["ops"].get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM:{_text(oc.customCode)}"
        codes.append((code, name, int(oc.version or 1)))
    buffers = m.buffers or []
    subgraphs = []
    for si, sg in enumerate(m.subgraphs or []):
        tensors = []
        for ti, t in enumerate(sg.tensors or []):
            shape = tuple(int(v) for v in (t.shape if t.shape is not None else ()))
            signature = tuple(int(v) for v in t.shapeSignature) if t.shapeSignature is not None and len(
                t.shapeSignature) else shape
            dtype = tables["dtypes"].get(int(t.type))
            raw_data = _buffer_bytes(buffers[t.buffer], raw) if 0 < t.buffer < len(buffers) else None
            data = None
            if raw_data is not None:
                data = raw_data
                if dtype is not None and dtype.itemsize and raw_data.size == int(np.prod(shape)) * dtype.itemsize:
                    data = raw_data.view(dtype).reshape(shape)
            tensors.append(Tensor(ti, _text(t.name), shape, signature, tables["types"].get(int(t.type), str(t.type)),
                                  dtype, _quantization(t.quantization), int(t.buffer), data, bool(t.isVariable)))
        operators = []
        for oi, op in enumerate(sg.operators or []):
            code, name, version = codes[op.opcodeIndex]
            options_type = tables["options"].get(int(op.builtinOptionsType or 0))
            options = op.builtinOptions
            act = getattr(options, "fusedActivationFunction", None) if options is not None else None
            operators.append(Operator(
                oi, name, code, version,
                tuple(int(v) for v in (op.inputs if op.inputs is not None else ())),
                tuple(int(v) for v in (op.outputs if op.outputs is not None else ())),
                None if options_type in (None, "NONE") else options_type, options,
                None if act is None else tables["activations"].get(int(act), str(act))))
        subgraphs.append(Subgraph(si, _text(sg.name), tuple(tensors), tuple(operators),
                                  tuple(int(v) for v in (sg.inputs if sg.inputs is not None else ())),
                                  tuple(int(v) for v in (sg.outputs if sg.outputs is not None else ()))))
    return TFLiteModel(int(m.version or 0), _text(m.description), tuple(subgraphs))


def tensor_names_layer(tensor_name: str, layer_name: str) -> bool:
    """Whether a TFLite tensor name carries the Keras layer ``layer_name``:
    the converter names a tensor ``.../layer/op``, ``layer:0`` or
    ``layer_1/...`` (a reused name), several fused names joined by ``;``.
    ``tensor_names_layer("model/conv1/BiasAdd;model/bn1", "conv1")`` is
    True; ``"conv10/..."`` does not carry ``"conv1"``."""
    return re.search(r"(^|/)" + re.escape(layer_name) + r"(_\d+)?(/|:|;|$)", tensor_name) is not None


def op_counts(model: Union[bytes, str, os.PathLike, TFLiteModel]) -> Dict[str, int]:
    """``{op name: count}`` over every subgraph, sorted by name."""
    parsed = model if isinstance(model, TFLiteModel) else read_model(model)
    found = collections.Counter(op.name for sg in parsed.subgraphs for op in sg.operators)
    return dict(sorted(found.items()))
