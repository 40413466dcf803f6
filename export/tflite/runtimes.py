"""Runs TFLite flatbuffers in LiteRT (``ai-edge-litert``) and TensorFlow
Lite Micro (``tflite-micro``'s Python interpreter), one image at a time.

:func:`interpreter` is the export's one interpreter factory, for the three
runtimes every check uses (:data:`RUNTIMES`):

* ``"litert"``: LiteRT with its default XNNPACK delegate;
* ``"litert_builtin"``: LiteRT builtin kernels only
  (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``);
* ``"tflm"``: the TensorFlow Lite Micro interpreter (reference kernels),
  with a tensor arena measured by :func:`tflm_arena_size` unless given.

:class:`Session` puts one API over both interpreter kinds (set the input,
invoke, read the outputs). Inputs are float32 images in the model's
convention; for integer models they are quantized with the input tensor's
scale and zero point (``q = clip(round(x / scale) + zero_point)``) and the
outputs dequantized (``(q - zero_point) * scale``), exactly what firmware
does around the model.

Example::

    from export.tflite.runtimes import Session, run_litert

    run_litert(flat, images)["outputs"]               # [N, ...] float32
    s = Session(flat, "tflm")
    raw = s.run(s.quantize_input(images[:1]))        # every output, raw codes
"""

from __future__ import annotations

import os
import re
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from export.errors import InputError
from export.tflite.quiet import filtered_stderr

__all__ = ["RUNTIMES", "interpreter", "Session", "run_litert", "run_tflm", "tflm_arena_size", "quantize",
           "dequantize", "TFLMError", "tflm_failure"]

RUNTIMES = ("litert", "litert_builtin", "tflm")


class TFLMError(InputError, RuntimeError):
    """TFLite Micro cannot run a model: it has no kernel for one of its ops,
    or the kernel refuses the op's types. ``op`` is the builtin op's name,
    ``layers`` the Keras layers its output tensor carries (when known),
    ``reason`` what TFLite Micro said."""

    def __init__(self, message, op=None, layers=(), reason=None):
        super().__init__(message)
        self.op, self.layers, self.reason = op, tuple(layers), reason


def _qparams(details):
    q = details.get("quantization_parameters") or {}
    scales = np.asarray(q.get("scales", []), dtype=np.float64)
    zps = np.asarray(q.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        scale, zp = details.get("quantization", (0.0, 0))
        scales, zps = np.asarray([scale]), np.asarray([zp])
    return float(scales[0]), int(zps[0])


def quantize(x, details):
    """Float -> the tensor's integer dtype (identity for float tensors)."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return np.asarray(x, dtype=np.float32)
    scale, zp = _qparams(details)
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float64) / scale) + zp, info.min, info.max).astype(dtype)


def dequantize(q, details):
    """The tensor's values as float32."""
    if np.dtype(details["dtype"]) == np.float32:
        return np.asarray(q, dtype=np.float32)
    scale, zp = _qparams(details)
    return ((np.asarray(q, np.float64) - zp) * scale).astype(np.float32)


def interpreter(tflite_model: bytes, runtime: str = "litert", *, num_threads: Optional[int] = 1,
                arena_size: Optional[int] = None, preserve_all_tensors: bool = False):
    """The interpreter of ``runtime`` (:data:`RUNTIMES`) over ``tflite_model``,
    tensors allocated.

    Args:
      num_threads: LiteRT threads (default one: what a microcontroller has,
        and comparable latencies; ``None``: LiteRT's default).
      arena_size: TFLite Micro tensor arena in bytes (default: the smallest
        that works, :func:`tflm_arena_size`).
      preserve_all_tensors: LiteRT keeps every intermediate tensor readable
        (``get_tensor`` on any index; builtin kernels only -- a delegate's
        tensors are not readable).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    flat = bytes(tflite_model)
    if runtime == "tflm":
        try:
            from tflite_micro.python.tflite_micro import runtime as tflm
        except ImportError:
            raise ImportError("running TFLite Micro needs tflite-micro: pip install 's2nn_keras[tf]'") from None
        size = tflm_arena_size(flat) if arena_size is None else int(arena_size)
        return tflm.Interpreter.from_bytes(flat, arena_size=size)
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise ImportError("running a TFLite model needs LiteRT: pip install 's2nn_keras[tf]'") from None
    kwargs = {} if num_threads is None else {"num_threads": int(num_threads)}
    if runtime == "litert_builtin":
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    with warnings.catch_warnings(), filtered_stderr():
        warnings.simplefilter("ignore")
        interp = Interpreter(model_content=flat, **kwargs)
        interp.allocate_tensors()
    return interp


class Session:
    """One flatbuffer in one runtime, behind one API.

    Attributes:
      runtime: one of :data:`RUNTIMES`.
      interp: the underlying interpreter (:func:`interpreter`).
      inputs, outputs: the tensor details (``dtype``, quantization, ...) of
        the model inputs and outputs, in order.
    """

    def __init__(self, tflite_model: bytes, runtime: str = "litert", **kwargs):
        self.runtime = runtime
        self.interp = interpreter(tflite_model, runtime, **kwargs)
        if runtime == "tflm":  # the TFLM binding has no tensor counts: the flatbuffer's main subgraph
            from export.tflite.flatbuffer import schema

            graph = schema().Model.GetRootAs(bytes(tflite_model), 0).Subgraphs(0)
            self.inputs = [self.interp.get_input_details(i) for i in range(graph.InputsLength())]
            self.outputs = [self.interp.get_output_details(i) for i in range(graph.OutputsLength())]
        else:
            self.inputs = self.interp.get_input_details()
            self.outputs = self.interp.get_output_details()

    def quantize_input(self, x):
        """Float inputs in the input tensor's dtype."""
        return quantize(x, self.inputs[0])

    def set_input(self, q) -> None:
        """Sets the (already quantized) first input."""
        if self.runtime == "tflm":
            self.interp.set_input(q, 0)
        else:
            self.interp.set_tensor(self.inputs[0]["index"], q)

    def invoke(self) -> float:
        """Runs the model; returns the seconds ``invoke()`` took."""
        start = time.perf_counter()
        self.interp.invoke()
        return time.perf_counter() - start

    def output(self, i: int = 0) -> np.ndarray:
        """Output ``i``, raw (its own dtype: int8/int16 codes, or float32)."""
        if self.runtime == "tflm":
            return np.array(self.interp.get_output(i))
        return np.array(self.interp.get_tensor(self.outputs[i]["index"]))

    def run(self, q) -> List[np.ndarray]:
        """Sets ``q`` (quantized, batch 1), invokes, returns every output raw."""
        self.set_input(q)
        self.invoke()
        return [self.output(i) for i in range(len(self.outputs))]

    def predict(self, images: np.ndarray) -> Dict:
        """Every image (float32, one at a time) through the model:
        ``{"outputs": first output dequantized [N, ...], "latency_ms": mean
        invoke time per image}``."""
        outputs, seconds = [], 0.0
        for image in images:
            self.set_input(self.quantize_input(image[None]))
            seconds += self.invoke()
            outputs.append(dequantize(self.output(0), self.outputs[0])[0])
        return {"outputs": np.stack(outputs), "latency_ms": 1e3 * seconds / max(len(images), 1)}


def run_litert(tflite_model: bytes, images: np.ndarray, num_threads: int = 1) -> Dict:
    """Runs every image through LiteRT (default delegates, ``num_threads``).

    Returns ``{"outputs": float32 [N, ...], "latency_ms": mean invoke time per
    image}`` (host CPU).
    """
    return Session(tflite_model, "litert", num_threads=num_threads).predict(images)


_ARENA_WORKER = r"""
import sys
import numpy as np
from export.tflite.quiet import silenced_stderr
from export.tflite.runtimes import Session
flat = open(sys.argv[1], "rb").read()
sample = np.load(sys.argv[2]) if sys.argv[2] != "-" else None
for line in sys.stdin:
    try:
        with silenced_stderr():  # TFLM prints each failed allocation
            s = Session(flat, "tflm", arena_size=int(line))
            x = np.zeros(s.inputs[0]["shape"], np.float32) if sample is None else sample[None]
            s.set_input(s.quantize_input(x))
            s.invoke()
        ok = 1
    except Exception:  # TFLM raises RuntimeError when the arena is too small
        ok = 0
    print(ok, flush=True)
"""


class _ArenaProbe:
    """Tries arena sizes in a worker process: TFLite Micro's allocator
    sometimes crashes the process outright on an arena that is too small
    (seen on FULLY_CONNECTED and MEAN models), which must count as "too
    small", not take the caller down. A crashed worker is replaced."""

    def __init__(self, tflite_model, sample):
        import subprocess
        import sys
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="s2nn_arena_")
        self._model = os.path.join(self._dir.name, "model.tflite")
        with open(self._model, "wb") as f:
            f.write(bytes(tflite_model))
        self._sample = "-"
        if sample is not None:
            self._sample = os.path.join(self._dir.name, "sample.npy")
            np.save(self._sample, np.asarray(sample, np.float32))
        self._cmd = [sys.executable, "-c", _ARENA_WORKER, self._model, self._sample]
        self._popen = subprocess.Popen
        self._proc = None

    def works(self, size: int) -> bool:
        import subprocess

        if self._proc is None or self._proc.poll() is not None:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            self._proc = self._popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            self._proc.stdin.write(f"{int(size)}\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            answer = ""
        if answer.strip() not in ("0", "1"):  # the worker died on this size
            self._proc.wait()
            self._proc = None
            return False
        return answer.strip() == "1"

    def close(self):
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()
        self._dir.cleanup()


_DIAGNOSE = r"""
import sys
import numpy as np
from export.tflite.runtimes import Session
flat = open(sys.argv[1], "rb").read()
sample = np.load(sys.argv[2]) if sys.argv[2] != "-" else None
s = Session(flat, "tflm", arena_size=int(sys.argv[3]))
x = np.zeros(s.inputs[0]["shape"], np.float32) if sample is None else sample[None]
s.set_input(s.quantize_input(x))
s.invoke()
"""
_MISSING_KERNEL = re.compile(r"Didn't find op for builtin opcode '(\w+)'")
_FAILED_NODE = re.compile(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke)")
_DIAGNOSIS_ARENA = 1 << 28


def _layers_of_op(tflite_model, op, index, layer_names):
    """Names in ``layer_names`` carried by the output tensors of operator
    ``index`` (or, without an index, of the first ``op``) of the main
    subgraph, and those carried by its first input."""
    from export.tflite.flatbuffer import read_model, tensor_names_layer

    graph = read_model(tflite_model).main
    ops = [graph.operators[index]] if index is not None else [o for o in graph.operators if o.name == op][:1]

    def carried(tensors):
        parts = [p for t in tensors if t >= 0 for p in graph.tensors[t].name.split(";")]
        return [name for name in layer_names if any(tensor_names_layer(p, name) for p in parts)]

    return carried([t for o in ops for t in o.outputs]), carried([o.inputs[0] for o in ops if o.inputs])


def tflm_failure(tflite_model: bytes, sample: np.ndarray = None, layer_names=()) -> "TFLMError | None":
    """Why TFLite Micro cannot run ``tflite_model`` with a generous arena
    (256 MiB), as a :class:`TFLMError` naming the op and the layers of
    ``layer_names`` (names, or ``{name: class name}``) its output carries;
    ``None`` when it runs (or fails for
    a reason it does not print). Runs in a worker process (TFLite Micro
    prints its reasons on the C-level stderr)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="s2nn_tflm_") as d:
        model, data = os.path.join(d, "model.tflite"), "-"
        with open(model, "wb") as f:
            f.write(bytes(tflite_model))
        if sample is not None:
            data = os.path.join(d, "sample.npy")
            np.save(data, np.asarray(sample, np.float32))
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, "-c", _DIAGNOSE, model, data, str(_DIAGNOSIS_ARENA)],
                              capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return None
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
    op, index, reason = None, None, None
    for i, line in enumerate(lines):
        missing, failed = _MISSING_KERNEL.search(line), _FAILED_NODE.search(line)
        if missing:
            op, reason = missing.group(1), "it has no kernel for this op"
            break
        if failed:
            op, index = failed.group(1), int(failed.group(2))
            said = lines[i - 1] if i > 0 and not lines[i - 1].startswith("Node ") else ""
            reason = f"its kernel failed to {failed.group(3)}" + (f" ({said.rstrip('.')})" if said else "")
            break
    if op is None:
        return None
    layers, before = _layers_of_op(tflite_model, op, index, layer_names)
    kinds = layer_names if isinstance(layer_names, dict) else {}

    def named(names):
        return ", ".join(f"{n!r}" + (f" ({kinds[n]})" if n in kinds else "") for n in names)

    where = (f"Keras layer {named(layers)}" if layers else f"the layer after Keras layer {named(before)}" if before
             else "no Keras layer named in its tensors")
    return TFLMError(f"TFLite Micro cannot run op {op} ({where}): {reason}", op, layers, reason)


def tflm_arena_size(tflite_model: bytes, sample: np.ndarray = None, granularity: int = 16,
                    layer_names=()) -> int:
    """Smallest tensor arena (bytes, rounded up to ``granularity``) with
    which TFLite Micro allocates the model and runs one inference, found by
    bisection in a worker process (a size that crashes TFLite Micro counts
    as too small). ``sample`` is one float32 input (zeros if None).

    Raises:
      TFLMError: TFLite Micro cannot run the model at any arena size (an op
        without a kernel, a kernel that refuses its types): names the op and
        the Keras layers of ``layer_names`` it computes (:func:`tflm_failure`).
    """
    probe = _ArenaProbe(tflite_model, sample)
    try:
        hi = max(4096, len(tflite_model))
        if not probe.works(hi):
            failure = tflm_failure(tflite_model, sample, layer_names)
            if failure is not None:
                raise failure
        while not probe.works(hi):
            hi *= 2
            if hi > 1 << 31:
                raise TFLMError("TFLite Micro could not allocate or run the model with any arena up to 2 GiB "
                                "(it named no op)")
        lo = 0
        while hi - lo > granularity:
            mid = (lo + hi) // 2
            if probe.works(mid):
                hi = mid
            else:
                lo = mid
    finally:
        probe.close()
    return int(-(-hi // granularity) * granularity)


def run_tflm(tflite_model: bytes, images: np.ndarray, arena_size: int = None) -> Dict:
    """Runs every image through the TFLite Micro interpreter (reference
    kernels). ``arena_size`` defaults to :func:`tflm_arena_size`.

    Returns ``{"outputs", "latency_ms", "arena_size"}``.
    """
    if arena_size is None:
        arena_size = tflm_arena_size(tflite_model, images[0] if len(images) else None)
    result = Session(tflite_model, "tflm", arena_size=arena_size).predict(images)
    return {**result, "arena_size": int(arena_size)}
