"""What an export is asked to do: :class:`ExportConfig`, every field checked
on construction, and the checks of a model against it.

:class:`ExportConfig` holds everything :func:`export.pipeline.export_run`
needs besides the model; a field that does not fit raises
:class:`ExportConfigError` (an :class:`export.errors.InputError`: exit
status 2 on the command lines) with one line naming the field and what is
valid. :func:`resolve_task` decides how a model's outputs are compared,
:func:`check_model` whether a model and the data fit each other.

Importing this module loads neither Keras nor TensorFlow.

Example::

    from export.config import ExportConfig, ExportConfigError

    config = ExportConfig("run/export", x_test, y_test, formats=("int8",), calibration_images=x_train[-500:])
    try:
        ExportConfig("run/export", x_test, formats=("int4",))
    except ExportConfigError as err:
        print(err)   # ExportConfig.formats must be names among float32, int8, int16x8; got ['int4']
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from export.errors import InputError
from export.formats import DEFAULT_FORMATS, DEFAULT_NEURON, DEFAULT_REWRITES, NEURON_FORMULATIONS, QUANTIZATIONS, \
    REWRITES
from export.metrics import TASK_CHOICES
from export.report import FormatReporter

__all__ = ["ExportConfig", "ExportConfigError", "resolve_task", "check_model"]


class ExportConfigError(InputError, ValueError):
    """An :class:`ExportConfig` field, or the data, does not fit (one-line
    message naming the field and what is valid)."""


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype") or isinstance(value, (list, tuple))


def _check_images(field, value, required):
    if value is None:
        if required:
            raise ExportConfigError(f"ExportConfig.{field} is required: the verification inputs, [N, ...]")
        return
    if not _is_array(value):
        raise ExportConfigError(f"ExportConfig.{field} must be an array [N, ...], got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.ndim < 2 or len(arr) == 0:
        raise ExportConfigError(f"ExportConfig.{field} must be a non-empty array [N, ...], got shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise ExportConfigError(f"ExportConfig.{field} must hold numbers (uint8 images, or float in the model's "
                                f"input convention), got dtype {arr.dtype}")


def _check_count(field, value, allow_none):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExportConfigError(f"ExportConfig.{field} must be an integer >= 1{' or None' if allow_none else ''}, "
                                f"got {value!r}")


def _check_labels(labels, n):
    if labels is None:
        return
    if not _is_array(labels):
        raise ExportConfigError(f"ExportConfig.labels must be an integer array [N] or None, got "
                                f"{type(labels).__name__}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.reshape(len(labels), -1).shape[1:] not in ((), (1,)) \
            or labels.ndim > 2:
        raise ExportConfigError(f"ExportConfig.labels must be integer class indices [N], got dtype "
                                f"{labels.dtype} shape {labels.shape}")
    if len(labels) != n:
        raise ExportConfigError(f"ExportConfig.labels has {len(labels)} entries for {n} images")


def _check_qat(qat, qat_images):
    if qat is None:
        return
    from export.transform.qat import QATConfig

    if not isinstance(qat, QATConfig):
        raise ExportConfigError(f"ExportConfig.qat must be an export.transform.qat.QATConfig or None, got "
                                f"{type(qat).__name__}")
    if qat_images is None or len(qat_images) == 0:
        raise ExportConfigError("ExportConfig.qat needs qat_images: the training inputs to fine-tune on")
    _check_images("qat_images", qat_images, required=True)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Everything :func:`export.pipeline.export_run` needs besides the model;
    every field is validated on construction (:class:`ExportConfigError`),
    the defaults are what ``python -m export`` does without flags.

    Attributes:
      output_dir: where the artefacts and ``export_report.json`` go
        (published only when the checks pass, :mod:`export.pipeline`).
      images: the verification inputs ``[N, ...]`` (uint8 images are divided
        by 255; float inputs are taken as they are, in the model's input
        convention).
      labels: integer class labels ``[N]`` for the accuracy figures, or
        ``None`` (regression, or no labels: agreement only).
      formats: any of ``"float32"``, ``"int8"``, ``"int16x8"``.
      calibration_images: inputs for integer calibration (training data,
        ideally); the first ``num_calibration`` of them are used (pass
        ``train_images[-500:]`` for the last 500). ``None`` uses the
        verification inputs (recorded in the report).
      num_calibration: how many calibration inputs are used.
      max_tflm_examples: cap on inputs run through TFLite Micro (its
        reference kernels are slow); ``None`` runs all.
      c_array: write ``model_int8.cc``/``.h`` when int8 is exported.
      neuron: ``"saturate"`` (default) or ``"compare"`` (the ablation).
      threshold_in_bias: move ``u_th`` of neurons that follow a Conv/Dense
        into its bias (default; see :func:`export.fold_batchnorm`). False is
        for measuring what that buys.
      merge_shortcuts: export strided shortcuts as one strided 1x1 conv
        (:func:`export.tflite.convert.merge_strided_shortcuts`).
      rewrites: graph rewrites before converting
        (:data:`export.formats.REWRITES`; default both: a ReLU model's
        unabsorbed BNs as 1x1 depthwise convs, global average pooling as
        ``AVERAGE_POOL_2D``); ``()`` keeps the converter's forms.
      spike_checks: run :func:`export.tflite.verify.verify_spikes` per format
        (spiking models); without them the spike checks are not judged.
      reporters: extra per-format figures and checks
        (:class:`export.report.FormatReporter`).
      qat: an :class:`export.transform.qat.QATConfig` to fine-tune the model
        quantization-aware first (spiking models): the fine-tuned model is
        saved as ``model_qat.keras`` and replaces the trained one as the
        reference of every check; the report keeps the trained model's
        accuracy under ``float`` and the fine-tuning under ``qat``.
        ``None`` (default): post-training quantization.
      qat_images: the training inputs the fine-tuning reads (no labels:
        the trained model's outputs are the targets); needed with ``qat``.
      task: how outputs are compared (:func:`resolve_task`):
        ``"classification"`` (same top-1), ``"regression"`` (RMS difference
        within 1 % of the output range) or ``"auto"``.
      verbose: print the summary at the end.
      extra: additional fields stored under ``"run"`` in the report.
      allow_failed_checks: keep the files of an export whose checks failed
        (the report says which) instead of raising
        :class:`export.checks.ExportCheckError`.

    Example::

        ExportConfig("run/export", x_test, y_test, formats=("int8",), max_tflm_examples=100)
    """

    output_dir: str
    images: Any
    labels: Any = None
    formats: Tuple[str, ...] = DEFAULT_FORMATS
    calibration_images: Any = None
    num_calibration: int = 500
    max_tflm_examples: Optional[int] = None
    c_array: bool = True
    neuron: str = DEFAULT_NEURON
    threshold_in_bias: bool = True
    merge_shortcuts: bool = False
    rewrites: Tuple[str, ...] = DEFAULT_REWRITES
    spike_checks: bool = True
    reporters: Tuple[FormatReporter, ...] = ()
    qat: Any = None
    qat_images: Any = None
    task: str = "auto"
    verbose: bool = True
    extra: Optional[Dict] = None
    allow_failed_checks: bool = False

    def __post_init__(self):
        self._set("output_dir", _output_dir(self.output_dir))
        _check_images("images", self.images, required=True)
        _check_labels(self.labels, len(self.images))
        if isinstance(self.formats, str) or not isinstance(self.formats, (list, tuple)):
            raise ExportConfigError(f"ExportConfig.formats must be a sequence of format names, e.g. ('int8',), "
                                    f"got {self.formats!r}")
        if not self.formats or any(f not in QUANTIZATIONS for f in self.formats):
            raise ExportConfigError(f"ExportConfig.formats must be names among {', '.join(QUANTIZATIONS)}; "
                                    f"got {list(self.formats)}")
        self._set("formats", tuple(dict.fromkeys(self.formats)))
        _check_images("calibration_images", self.calibration_images, required=False)
        _check_count("num_calibration", self.num_calibration, allow_none=False)
        _check_count("max_tflm_examples", self.max_tflm_examples, allow_none=True)
        for flag in ("c_array", "threshold_in_bias", "merge_shortcuts", "spike_checks", "verbose",
                     "allow_failed_checks"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ExportConfigError(f"ExportConfig.{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.neuron not in NEURON_FORMULATIONS:
            raise ExportConfigError(f"ExportConfig.neuron must be one of {', '.join(NEURON_FORMULATIONS)}; "
                                    f"got {self.neuron!r}")
        if isinstance(self.rewrites, str) or not isinstance(self.rewrites, (list, tuple)) or any(
                r not in REWRITES for r in self.rewrites):
            raise ExportConfigError(f"ExportConfig.rewrites must be a sequence of names among {', '.join(REWRITES)} "
                                    f"(or ()); got {self.rewrites!r}")
        self._set("rewrites", tuple(dict.fromkeys(self.rewrites)))
        if self.task not in TASK_CHOICES:
            raise ExportConfigError(f"ExportConfig.task must be one of {', '.join(TASK_CHOICES)}; got {self.task!r}")
        self._set("reporters", _reporters(self.reporters))
        _check_qat(self.qat, self.qat_images)
        if self.extra is not None and not isinstance(self.extra, dict):
            raise ExportConfigError(f"ExportConfig.extra must be a dict or None, got {type(self.extra).__name__}")

    def _set(self, field, value):
        object.__setattr__(self, field, value)


def _output_dir(value):
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ExportConfigError(f"ExportConfig.output_dir must be a folder path, got {value!r}")
    out = os.fspath(value)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportConfigError(f"ExportConfig.output_dir {out!r} is a file, not a folder")
    return out


def _reporters(value):
    reporters = tuple(value or ())
    for rep in reporters:
        if not all(hasattr(rep, a) for a in ("name", "formats", "run")):
            raise ExportConfigError(f"ExportConfig.reporters must hold export.FormatReporter objects, got "
                                    f"{type(rep).__name__}")
    return reporters


def resolve_task(task: str, model) -> str:
    """``"classification"`` or ``"regression"`` for ``task`` (:data:`export.metrics.TASK_CHOICES`).

    ``"auto"``: regression when the model's output has the shape of its
    input (an autoencoder) or is not a ``[N, classes >= 2]`` vector,
    classification otherwise. An explicit ``"classification"`` needs a
    ``[N, classes >= 2]`` output (top-1 of one logit means nothing).

    Example::

        resolve_task("auto", autoencoder)   # "regression"
    """
    out_shape = tuple(model.outputs[0].shape[1:])
    in_shape = tuple(model.inputs[0].shape[1:])
    vector = len(out_shape) == 1 and (out_shape[0] or 0) >= 2
    if task == "auto":
        return "regression" if out_shape == in_shape or not vector else "classification"
    if task == "classification" and not vector:
        raise ExportConfigError(f"task classification needs a model output of shape (N, classes >= 2); "
                                f"{model.name!r} outputs (N, {', '.join(str(d) for d in out_shape)}): "
                                "use task regression")
    return task


def check_model(model, images, calibration_images) -> None:
    """Raises :class:`ExportConfigError` unless ``model`` has one input and
    one output and a static input shape that ``images`` and
    ``calibration_images`` (arrays ``[N, ...]``) have.

    Example::

        check_model(model, x_test, x_train[-500:])
    """
    name = getattr(model, "name", "model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportConfigError(f"the export takes a model with one input and one output; {name!r} has "
                                f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ExportConfigError(f"the export needs a static input shape (TFLite Micro has no dynamic shapes); "
                                f"{name!r} takes {shape}")
    for what, arr in (("images", images), ("calibration_images", calibration_images)):
        if tuple(arr.shape[1:]) != shape:
            raise ExportConfigError(f"{what} of shape {tuple(arr.shape[1:])} do not fit the input of {name!r}, "
                                    f"{shape}")
