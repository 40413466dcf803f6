"""How closely a deployed model's outputs follow its reference (the Keras
model): the one definition of each figure the export's checks, reports,
quantization-aware fine-tuning and benchmarks use.

* :func:`agreement_report` -- the agreeing fraction of the examples and its
  details, per task (:data:`TASKS`); :func:`agreement_fraction` -- the
  fraction alone;
* :func:`output_correlation` -- whether the outputs follow the reference
  input by input (about 0 at chance);
* :func:`relative_error` -- the RMS difference over the reference's spread;
* :func:`model_logits` -- a Keras model's float32 outputs, in batches
  (:func:`batches`).

Pure NumPy (the Keras model is only called): importing this module imports
neither Keras nor TensorFlow.

Example::

    from export.metrics import agreement_fraction, model_logits
    agreement_fraction(model_logits(model, x), tflite_outputs, "classification")
"""

from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["TASKS", "TASK_CHOICES", "REGRESSION_TOLERANCE", "agreement_report", "agreement_fraction",
           "output_correlation", "relative_error", "model_logits", "batches"]

#: What a model's outputs mean (:func:`agreement_report`).
TASKS = ("classification", "regression")
#: What an export verifies a model's outputs as (``ExportConfig.task``,
#: ``--task``): one of :data:`TASKS`, or ``"auto"`` (decided from the model).
TASK_CHOICES = ("auto",) + TASKS
#: Regression: an example agrees when the RMS difference of its outputs is
#: at most this fraction of the reference outputs' range over the set.
REGRESSION_TOLERANCE = 0.01


def batches(n, size):
    """Slices ``[0, size), [size, 2 size), ...`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def model_logits(model, images, batch_size=256) -> np.ndarray:
    """``model``'s float32 outputs (inference mode) on ``images``, in batches."""
    return np.concatenate([np.asarray(model(images[sl], training=False), np.float32)
                           for sl in batches(len(images), batch_size)])


def _ranks(x):
    """Ranks 1..n of ``x``, ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def _spearman(a, b):
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denom) if denom > 0 else (1.0 if np.array_equal(ra, rb) else 0.0)


def agreement_report(reference_outputs, outputs, task: str = "classification", inputs=None) -> Dict:
    """How often a deployed model gives the same answer as its reference
    (the Keras model) on the same examples: the one definition every
    check, report and benchmark of the export uses.

    * ``"classification"``: an example agrees when the two outputs have the
      same argmax (the predicted class).
    * ``"regression"`` (e.g. the MLPerf Tiny autoencoder): an example agrees
      when the RMS difference of its outputs,
      ``sqrt(mean_j (y_j - r_j)^2)``, is at most
      :data:`REGRESSION_TOLERANCE` (1 %) of the range ``max(r) - min(r)`` of
      the reference outputs over the whole set -- about 2.5 steps of an int8
      output that spans that range (``range / 255``). With ``inputs`` (the
      examples the model reconstructs) it also gives the Spearman rank
      correlation of the per-example reconstruction errors
      ``mean_j (x_j - y_j)^2`` (the anomaly score) of the two models.

    Args:
      reference_outputs, outputs: arrays ``[N, ...]`` (the first axis the examples).
      task: one of :data:`TASKS`.
      inputs: regression only, optional: the inputs ``[N, ...]`` (same shape as the outputs).

    Returns:
      ``{"task", "examples", "agreement"}`` (the agreeing fraction; 1.0 for
      no examples), and for regression ``"tolerance"`` (absolute),
      ``"reference_range"``, ``"rms_mean"``, ``"rms_max"`` and, with
      ``inputs``, ``"score_spearman"``.

    Example:
      >>> import numpy as np
      >>> agreement_report(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([[0.3, 0.7], [0.4, 0.6]]))["agreement"]
      0.5
      >>> ref = np.linspace(0, 1, 20).reshape(2, 10)
      >>> agreement_report(ref, ref + 0.005, "regression")["agreement"]
      1.0
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    ref, out = np.asarray(reference_outputs, np.float64), np.asarray(outputs, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"reference outputs {ref.shape} and outputs {out.shape} differ in shape")
    n = int(ref.shape[0]) if ref.ndim else 0
    result = {"task": task, "examples": n}
    if task == "classification":
        result["agreement"] = float(np.mean(ref.argmax(-1) == out.argmax(-1))) if n else 1.0
        return result
    ref2, out2 = ref.reshape(n, -1), out.reshape(n, -1)
    span = float(ref2.max() - ref2.min()) if n else 0.0
    rms = np.sqrt(np.mean((out2 - ref2) ** 2, axis=1)) if n else np.zeros(0)
    tol = REGRESSION_TOLERANCE * span
    result.update(agreement=float(np.mean(rms <= tol)) if n else 1.0, tolerance=tol, reference_range=span,
                  rms_mean=float(rms.mean()) if n else 0.0, rms_max=float(rms.max()) if n else 0.0)
    if inputs is not None and n:
        x = np.asarray(inputs, np.float64).reshape(n, -1)
        result["score_spearman"] = _spearman(np.mean((x - ref2) ** 2, axis=1), np.mean((x - out2) ** 2, axis=1))
    return result


def agreement_fraction(reference, outputs, task: str) -> float:
    """The agreeing fraction of :func:`agreement_report` alone (same top-1
    for classification, per-example RMS within :data:`REGRESSION_TOLERANCE`
    of the reference range for regression).

    Example:
      >>> import numpy as np
      >>> agreement_fraction(np.eye(4), np.eye(4)[[0, 1, 2, 0]], "classification")
      0.75
    """
    return agreement_report(reference, outputs, task)["agreement"]


def output_correlation(reference, outputs) -> float:
    """How closely ``outputs`` follow ``reference`` input by input: the
    correlation of the two after centring each output unit over the
    examples, ``sum(r' o') / sqrt(sum(r'^2) sum(o'^2))`` with ``r' = r -
    mean_n(r)``. About 1 for a faithful export, about 0 for outputs that
    ignore the input (at chance) -- also where the reference nearly always
    predicts one class and top-1 agreement says little. A reference that
    does not vary at all gives 1 if the outputs do not either, else 0."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(outputs, np.float64)
    n = min(len(ref), len(out))
    ref, out = ref[:n].reshape(n, -1), out[:n].reshape(n, -1)
    rc, oc = ref - ref.mean(0), out - out.mean(0)
    rr, oo = float(np.sum(rc * rc)), float(np.sum(oc * oc))
    if rr == 0.0 or oo == 0.0:
        return 1.0 if rr == oo else 0.0
    return float(np.sum(rc * oc) / np.sqrt(rr * oo))


def relative_error(reference, outputs) -> float:
    """RMS of ``outputs - reference`` over the RMS spread of ``reference``
    around its per-unit mean over the examples: about 0 for a faithful
    export, about sqrt(2) for outputs of the right distribution that ignore
    the input, and >= 1 for outputs off by a scale factor of 2 or more. A
    reference that does not vary gives 0 if the outputs equal it, else inf."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(outputs, np.float64)
    n = min(len(ref), len(out))
    ref, out = ref[:n].reshape(n, -1), out[:n].reshape(n, -1)
    spread = float(np.sqrt(np.mean((ref - ref.mean(0)) ** 2)))
    err = float(np.sqrt(np.mean((out - ref) ** 2)))
    if spread == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / spread
