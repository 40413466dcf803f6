"""TFLite's quantization arithmetic in NumPy, once for the whole export:
the converter's rounding (transform, tflite) and the integer kernels' rules
exactly as the generated microcontroller C does them (mcu).

These are the rules of TFLite (Micro)'s reference kernels
(``tensorflow/lite/kernels/internal``), restated from their definitions;
the host build and the firmware implement the same functions in C
(``export/mcu/c/s2mcu.h``), and the tests check both against the
``tflite-micro`` interpreter.

* A real multiplier ``M > 0`` is stored as ``(q, shift)`` with
  ``M = q * 2^(shift - 31)``, ``q`` in ``[2^30, 2^31)`` (``QuantizeMultiplier``:
  ``frexp`` then ``round(f * 2^31)`` half away from zero; ``q = 2^31`` becomes
  ``2^30`` with ``shift + 1``; ``shift < -31`` flushes to 0).
* ``x * M`` on an int32 ``x`` ("double rounding", TFLite's default build, the
  one the ``tflite-micro`` wheel's interpreter uses -- see docs/MCU.md for
  the experiment): ``RDBP(SRDHM(x << max(shift, 0), q), max(-shift, 0))``
  with ``SRDHM(a, b) = floor((a b + 2^30) / 2^31)`` (saturating
  ``INT32_MIN * INT32_MIN`` to ``INT32_MAX``; gemmlowp writes it with a
  sign-dependent nudge and truncating division, which is the same
  function) and ``RDBP(x, e)`` = ``x / 2^e`` rounded half away from zero.
* "Single rounding" (``TFLITE_SINGLE_ROUNDING``, CMSIS-NN's option):
  ``floor((x q + 2^(30 - shift)) / 2^(31 - shift))``.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

__all__ = ["quantize_multiplier", "srdhm", "rdbp", "multiply_by_quantized_multiplier",
           "multiply_single_rounding", "quantize_value", "activation_range", "round_half_away",
           "int8_weights"]

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def round_half_away(x):
    """``std::round``: halves away from zero, on a number (a float back) or
    elementwise on an array. The one copy of this rule in the export: the
    converter's weight, bias and zero-point rounding, TFLite's
    ``Quantize`` and ``QuantizeMultiplier`` all use it."""
    if np.ndim(x) == 0:
        x = float(x)
        return float(math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5))
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def int8_weights(rows):
    """Per-channel symmetric int8 weights as the converter makes them, and the
    max |w| per channel (0 for zero channels)."""
    m = np.max(np.abs(rows), axis=1)
    safe = np.where(m > 0, m, 1.0)
    q = round_half_away(127.0 * rows / safe[:, None])
    return q, m


def quantize_multiplier(m: float) -> Tuple[int, int]:
    """``(q, shift)`` of TFLite's ``QuantizeMultiplier`` for ``m`` (a double)."""
    if m == 0.0:
        return 0, 0
    f, shift = math.frexp(m)
    q = int(round_half_away(f * 2.0 ** 31))
    if q == 2 ** 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if q > INT32_MAX:
        raise ValueError(f"multiplier {m} does not fit int32")
    return q, shift


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul on int64 NumPy arrays (or ints)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    out = (a * b + (1 << 30)) >> 31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)


def rdbp(x, e):
    """RoundingDivideByPOT: ``x / 2^e`` rounded half away from zero."""
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > thr)


def _wrap32(x):
    x = np.asarray(x, np.int64)
    return ((x + 2 ** 31) % 2 ** 32) - 2 ** 31


def multiply_by_quantized_multiplier(x, q, shift):
    """TFLite's default (double-rounding) ``MultiplyByQuantizedMultiplier``."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbp(srdhm(_wrap32(np.asarray(x, np.int64) << left), q), right)


def multiply_single_rounding(x, q, shift):
    """The ``TFLITE_SINGLE_ROUNDING`` variant."""
    total = 31 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * np.asarray(q, np.int64) + (np.int64(1) << (total - 1))) >> total


def quantize_value(f: float, scale: float, zero_point: int) -> int:
    """TFLite's ``Quantize``: ``zp + round(f / scale)`` in float32."""
    tmp = np.float32(f) / np.float32(scale)
    return int(zero_point) + int(round_half_away(float(tmp)))


def activation_range(activation, scale: float, zero_point: int, qmin: int = -128, qmax: int = 127):
    """``(act_min, act_max)`` of a fused activation on an int8 output
    (``CalculateActivationRangeQuantized``)."""
    if activation in (None, "NONE"):
        return qmin, qmax
    if activation == "RELU":
        return max(qmin, quantize_value(0.0, scale, zero_point)), qmax
    if activation == "RELU6":
        return (max(qmin, quantize_value(0.0, scale, zero_point)),
                min(qmax, quantize_value(6.0, scale, zero_point)))
    if activation == "RELU_N1_TO_1":
        return (max(qmin, quantize_value(-1.0, scale, zero_point)),
                min(qmax, quantize_value(1.0, scale, zero_point)))
    raise ValueError(f"fused activation {activation} is not supported by the microcontroller generator "
                     "(valid: NONE, RELU, RELU6, RELU_N1_TO_1)")
