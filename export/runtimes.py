"""Runs TFLite flatbuffers in LiteRT (``ai-edge-litert``) and TensorFlow
Lite Micro (``tflite-micro``'s Python interpreter), one image at a time.

Inputs are float32 images in the model's convention; for integer models they
are quantized with the input tensor's scale and zero point
(``q = clip(round(x / scale) + zero_point)``) and the outputs dequantized
(``(q - zero_point) * scale``), exactly what firmware does around the model.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from typing import Dict

import numpy as np

__all__ = ["run_litert", "run_tflm", "tflm_arena_size", "quantize", "dequantize", "quiet_stderr",
           "filtered_stderr", "CHATTER"]

#: C-level stderr lines of the converter and LiteRT that are information,
#: not warnings: dropped by :func:`filtered_stderr`.
CHATTER = (re.compile(r"^fully_quantize: "), re.compile(r"^INFO: "), re.compile(r"^I\d{4} "),
           re.compile(r"^WARNING: All log messages before absl::InitializeLog"))


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


def run_litert(tflite_model: bytes, images: np.ndarray, num_threads: int = 1) -> Dict:
    """Runs every image through LiteRT.

    Returns ``{"outputs": float32 [N, ...], "latency_ms": mean invoke time per
    image}`` (host CPU, ``num_threads`` threads, LiteRT's default delegates).
    """
    from ai_edge_litert.interpreter import Interpreter

    with filtered_stderr():
        interp = Interpreter(model_content=tflite_model, num_threads=num_threads)
        interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    outputs, seconds = [], 0.0
    for image in images:
        interp.set_tensor(inp["index"], quantize(image[None], inp))
        start = time.perf_counter()
        interp.invoke()
        seconds += time.perf_counter() - start
        outputs.append(dequantize(interp.get_tensor(out["index"]), out)[0])
    return {"outputs": np.stack(outputs), "latency_ms": 1e3 * seconds / max(len(images), 1)}


@contextlib.contextmanager
def quiet_stderr():
    """Silences C-level stderr (fd 2) inside the block: TFLM prints
    allocation failures there, TensorFlow its device start-up lines."""
    sys.stderr.flush()
    fd = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(fd, 2)
        os.close(fd)


@contextlib.contextmanager
def filtered_stderr(drop=CHATTER):
    """Captures C-level stderr (fd 2) inside the block and writes back every
    line that matches none of ``drop`` (the converter's and LiteRT's INFO
    lines), so warnings and errors still show, after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(p.search(line) for p in drop)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _tflm(tflite_model, arena_size):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(bytes(tflite_model), arena_size=int(arena_size))


def tflm_arena_size(tflite_model: bytes, sample: np.ndarray = None, granularity: int = 16) -> int:
    """Smallest tensor arena (bytes, rounded up to ``granularity``) with
    which TFLite Micro allocates the model and runs one inference, found by
    bisection. ``sample`` is one float32 input (zeros if None)."""

    def works(size):
        try:
            with quiet_stderr():
                interp = _tflm(tflite_model, size)
                details = interp.get_input_details(0)
                x = np.zeros(details["shape"], np.float32) if sample is None else sample[None]
                interp.set_input(quantize(x, details), 0)
                interp.invoke()
            return True
        except Exception:  # TFLM raises RuntimeError when the arena is too small
            return False

    hi = max(4096, len(tflite_model))
    while not works(hi):
        hi *= 2
        if hi > 1 << 31:
            raise RuntimeError("TFLite Micro could not run the model with a 2 GiB arena")
    lo = 0
    while hi - lo > granularity:
        mid = (lo + hi) // 2
        if works(mid):
            hi = mid
        else:
            lo = mid
    return int(-(-hi // granularity) * granularity)


def run_tflm(tflite_model: bytes, images: np.ndarray, arena_size: int = None) -> Dict:
    """Runs every image through the TFLite Micro interpreter (reference
    kernels). ``arena_size`` defaults to :func:`tflm_arena_size`.

    Returns ``{"outputs", "latency_ms", "arena_size"}``.
    """
    if arena_size is None:
        arena_size = tflm_arena_size(tflite_model, images[0] if len(images) else None)
    interp = _tflm(tflite_model, arena_size)
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    outputs, seconds = [], 0.0
    for image in images:
        interp.set_input(quantize(image[None], inp), 0)
        start = time.perf_counter()
        interp.invoke()
        seconds += time.perf_counter() - start
        outputs.append(dequantize(interp.get_output(0), out)[0])
    return {"outputs": np.stack(outputs), "latency_ms": 1e3 * seconds / max(len(images), 1),
            "arena_size": int(arena_size)}
