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
import time
import warnings
from typing import Dict, List, Optional

import numpy as np

from export.tflite.quiet import filtered_stderr

__all__ = ["RUNTIMES", "interpreter", "Session", "run_litert", "run_tflm", "tflm_arena_size", "quantize",
           "dequantize"]

RUNTIMES = ("litert", "litert_builtin", "tflm")


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


def tflm_arena_size(tflite_model: bytes, sample: np.ndarray = None, granularity: int = 16) -> int:
    """Smallest tensor arena (bytes, rounded up to ``granularity``) with
    which TFLite Micro allocates the model and runs one inference, found by
    bisection in a worker process (a size that crashes TFLite Micro counts
    as too small). ``sample`` is one float32 input (zeros if None)."""
    probe = _ArenaProbe(tflite_model, sample)
    try:
        hi = max(4096, len(tflite_model))
        while not probe.works(hi):
            hi *= 2
            if hi > 1 << 31:
                raise RuntimeError("TFLite Micro could not run the model with a 2 GiB arena")
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
