"""End-to-end export of a trained model: fold -> verify -> convert -> run -> check -> publish.

:func:`export_run` (``export_run(model, ExportConfig(...))``) is what
``python -m export`` and the trainer's ``--export`` call. It writes into
``config.output_dir``:

* ``model_qat.keras`` (with ``qat=``): the quantization-aware fine-tuned
  model (:mod:`export.transform.qat`), which is then "the Keras model" every format is
  verified against;
* ``model_folded.keras``: the BN-free inference model (ThresholdNeuron
  layers; a ReLU model is not folded: its BatchNorms are the converter's);
* ``model_<format>.tflite`` for each requested format;
* ``model_int8.cc`` / ``model_int8.h``: the int8 flatbuffer as a C array for
  TFLite Micro firmware (with the measured tensor-arena size);
* ``export_report.json``: every figure below and the checks,

and returns an :class:`ExportResult` (``result.report`` is the JSON dict;
``result["formats"]`` reads it too).

Nothing half-written is left as if it were good: every file is written into
a staging folder beside ``output_dir`` (``.<name>.partial-XXXX``) and moved
into ``output_dir`` only once the export's own checks
(:mod:`export.checks`) have passed -- replacing the files of an earlier
export there, and removing that export's artefacts this one did not write.
If a check fails, :class:`export.checks.ExportCheckError` is raised and the
staging folder is deleted (``output_dir`` keeps what it had), unless
``allow_failed_checks=True`` asked for the files anyway (the report then
says ``checks.passed: false``). Any other error also deletes the staging
folder.

Figures: fold verification (output agreement, largest output difference,
spike-map mismatches per neuron layer), and per format: file size, op list
and whether it is edge-only (:data:`export.formats.EDGE_OPS`), leftover BN
arithmetic, in LiteRT and TFLite Micro accuracy, agreement with the Keras
model's outputs (:func:`export.checks.agreement`: same top-1 for
classification, RMS difference within 1 % of the output range for
regression), largest output difference, host latency per image, the TFLM
tensor-arena size, and for spiking models the spike checks of
:func:`export.tflite.verify.verify_spikes` (two levels, runtimes bit for bit,
agreement with the folded float model end to end and locally, tie
distances). Extra per-format figures (Ethos-U / Vela, microcontroller
code) come from :class:`FormatReporter` objects in ``config.reporters``.

Example::

    from export import ExportConfig, export_run

    result = export_run(model, ExportConfig("run/export", x_test, y_test, formats=("int8",),
                                            calibration_images=x_train[-500:]))
    result.report["checks"]["passed"], result.report["formats"]["int8"]["litert"]["agreement_with_keras"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from export.checks import (TASKS, ExportCheckError, agreement, evaluate, failure_line, output_correlation,
                           relative_error)
from export.formats import (COMPARE_OPS, DEFAULT_FORMATS, DEFAULT_NEURON, DEFAULT_REWRITES, EDGE_OPS,
                            FORBIDDEN_EDGE_OPS, NEURON_FORMULATIONS, QUANTIZATIONS, REWRITES)
from export.loader import load_model
from export.tflite.verify import batches, model_logits

__all__ = ["export_run", "ExportConfig", "ExportConfigError", "ExportResult", "ExportCheckError", "FormatReporter",
           "load_model", "verify_fold", "write_c_array", "format_summary", "inner_quantize_ops", "resolve_task",
           "ARTEFACTS", "DEFAULT_FORMATS"]

#: Files an export writes (``model_<format>.tflite`` for each format); the
#: publishing step removes those of an earlier export it did not rewrite.
ARTEFACTS = ("export_report.json", "model_folded.keras", "model_qat.keras", "model_int8.cc", "model_int8.h") + tuple(
    f"model_{fmt}.tflite" for fmt in QUANTIZATIONS)


def verify_fold(*args, **kwargs):
    """:func:`export.tflite.verify.verify_fold` (kept importable from here)."""
    from export.tflite.verify import verify_fold as _verify_fold

    return _verify_fold(*args, **kwargs)


def write_c_array(*args, **kwargs):
    """:func:`export.tflite.c_array.write_c_array` (kept importable from here)."""
    from export.tflite.c_array import write_c_array as _write

    return _write(*args, **kwargs)


class ExportConfigError(ValueError):
    """An :class:`ExportConfig` field, or the data, does not fit (one-line
    message naming the field and what is valid)."""


@dataclasses.dataclass
class FormatReporter:
    """An extra per-format figure for the export report.

    Attributes:
      name: its key in ``report["formats"][fmt]`` (e.g. ``"vela"``).
      formats: the formats it applies to (e.g. ``("int8",)``).
      run: ``run(fmt, conversion) -> dict`` (JSON-friendly) given the
        :class:`export.tflite.convert.Conversion` of that format; with
        ``writes_files=True`` it is called as ``run(fmt, conversion,
        output_dir)`` and may write files there (they are published with
        the export's own, or deleted with them).
      summary: optional ``summary(fmt, figures) -> str``: lines appended to
        the printed summary.
      checks: optional ``checks(fmt, figures) -> [CheckResult or dict]``:
        the reporter's own checks (:class:`export.checks.CheckResult`
        fields), judged with the export's (a failed one fails the export);
        recorded as ``"<fmt>.<name>.<check>"``.
      writes_files: see ``run``.
    """

    name: str
    formats: Sequence[str]
    run: Callable
    summary: Optional[Callable] = None
    checks: Optional[Callable] = None
    writes_files: bool = False


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


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Everything :func:`export_run` needs besides the model; every field is
    validated on construction (:class:`ExportConfigError`), the defaults are
    what ``python -m export`` does without flags.

    Attributes:
      output_dir: where the artefacts and ``export_report.json`` go
        (published only when the checks pass, module docstring).
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
      reporters: extra per-format figures and checks (:class:`FormatReporter`).
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
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ExportConfigError(f"ExportConfig.output_dir must be a folder path, got {self.output_dir!r}")
        out = os.fspath(self.output_dir)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ExportConfigError(f"ExportConfig.output_dir {out!r} is a file, not a folder")
        object.__setattr__(self, "output_dir", out)
        _check_images("images", self.images, required=True)
        n = len(self.images)
        if self.labels is not None:
            if not _is_array(self.labels):
                raise ExportConfigError(f"ExportConfig.labels must be an integer array [N] or None, got "
                                        f"{type(self.labels).__name__}")
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "iu" or labels.reshape(len(labels), -1).shape[1:] not in ((), (1,)) \
                    or labels.ndim > 2:
                raise ExportConfigError(f"ExportConfig.labels must be integer class indices [N], got dtype "
                                        f"{labels.dtype} shape {labels.shape}")
            if len(labels) != n:
                raise ExportConfigError(f"ExportConfig.labels has {len(labels)} entries for {n} images")
        if isinstance(self.formats, str) or not isinstance(self.formats, (list, tuple)):
            raise ExportConfigError(f"ExportConfig.formats must be a sequence of format names, e.g. ('int8',), "
                                    f"got {self.formats!r}")
        formats = tuple(dict.fromkeys(self.formats))
        if not formats or any(f not in QUANTIZATIONS for f in formats):
            raise ExportConfigError(f"ExportConfig.formats must be names among {', '.join(QUANTIZATIONS)}; "
                                    f"got {list(self.formats)}")
        object.__setattr__(self, "formats", formats)
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
        object.__setattr__(self, "rewrites", tuple(dict.fromkeys(self.rewrites)))
        if self.task not in TASKS:
            raise ExportConfigError(f"ExportConfig.task must be one of {', '.join(TASKS)}; got {self.task!r}")
        reporters = tuple(self.reporters or ())
        for rep in reporters:
            if not all(hasattr(rep, a) for a in ("name", "formats", "run")):
                raise ExportConfigError(f"ExportConfig.reporters must hold export.FormatReporter objects, got "
                                        f"{type(rep).__name__}")
        object.__setattr__(self, "reporters", reporters)
        if self.qat is not None:
            from export.transform.qat import QATConfig

            if not isinstance(self.qat, QATConfig):
                raise ExportConfigError(f"ExportConfig.qat must be an export.transform.qat.QATConfig or None, got "
                                        f"{type(self.qat).__name__}")
            if self.qat_images is None or len(self.qat_images) == 0:
                raise ExportConfigError("ExportConfig.qat needs qat_images: the training inputs to fine-tune on")
            _check_images("qat_images", self.qat_images, required=True)
        if self.extra is not None and not isinstance(self.extra, dict):
            raise ExportConfigError(f"ExportConfig.extra must be a dict or None, got {type(self.extra).__name__}")


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_run` produced.

    Attributes:
      report: the dict written to ``export_report.json``.
      output_dir: where the files are (``None`` when the checks failed and
        the files were not kept).
      folded: the folded Keras model (the model itself for a ReLU model).
      conversions: ``{format: export.tflite.convert.Conversion}``.
    """

    report: Dict
    output_dir: Optional[str]
    folded: object
    conversions: Dict

    def __getitem__(self, key):
        return self.report[key]

    def __contains__(self, key):
        return key in self.report

    def get(self, key, default=None):
        return self.report.get(key, default)


def _as_float(images):
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _residual_adds(model):
    return sum(1 for l in model.layers if type(l).__name__ == "Add")


def _bn_residue(ops, folded, conversion):
    """Arithmetic ops beyond what the folded graph needs, i.e. per-channel
    BN-style affine maps left in the flatbuffer: any MUL/SUB/DIV, ADDs beyond
    the residual Add layers, and DEPTHWISE_CONV_2Ds beyond the model's own
    and the neurons' (the saturate neuron's depthwise ops and the compare
    int16x8 ramp's are the neurons, not BN residue)."""
    extra_add = max(0, ops.get("ADD", 0) - _residual_adds(folded))
    own_dw = sum(1 for l in folded.layers if type(l).__name__ == "DepthwiseConv2D")
    neuron_dw = 0
    if conversion.plan is not None:
        for n in conversion.plan.neurons.values():
            neuron_dw += (1 if n.kind == "tensor" else 0) + (1 if n.level_multiplier else 0)
    elif conversion.neuron == "compare" and conversion.quantization == "int16x8":
        neuron_dw = sum(1 for l in conversion.model.layers
                        if getattr(l, "formulation", None) == "ramp" and not (
                            np.all(l.thresholds == 0.0) and np.all(l.polarity == 1)))
    extra_dw = max(0, ops.get("DEPTHWISE_CONV_2D", 0) - own_dw - neuron_dw)
    return int(ops.get("MUL", 0) + ops.get("SUB", 0) + ops.get("DIV", 0) + extra_add + extra_dw)


def inner_quantize_ops(tflite_model) -> Dict[str, int]:
    """QUANTIZE/DEQUANTIZE ops that are *not* at the model boundary (neither
    reading a model input nor writing a model output): ``{op name: count}``,
    empty for a clean integer model."""
    from export.tflite.flatbuffer import read_model

    graph = read_model(tflite_model).main
    inner = {}
    for op in graph.operators:
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            if not (set(op.inputs) & set(graph.inputs) or set(op.outputs) & set(graph.outputs)):
                inner[op.name] = inner.get(op.name, 0) + 1
    return inner


def _op_check(ops, tflite_model):
    """Edge-only verdict of an op histogram, from :data:`export.formats.EDGE_OPS`."""
    inner = inner_quantize_ops(tflite_model)
    return {
        "edge_only": not (set(ops) - EDGE_OPS) and not inner,
        "non_edge_ops": sorted(set(ops) - EDGE_OPS),
        "forbidden_ops": sorted(set(ops) & FORBIDDEN_EDGE_OPS),
        "inner_quantize_ops": inner,
    }


def resolve_task(task: str, model) -> str:
    """``"classification"`` or ``"regression"`` for ``task`` (:data:`export.checks.TASKS`).

    ``"auto"``: regression when the model's output has the shape of its
    input (an autoencoder) or is not a ``[N, classes >= 2]`` vector,
    classification otherwise. An explicit ``"classification"`` needs a
    ``[N, classes >= 2]`` output (top-1 of one logit means nothing).
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


def _score(outputs, labels, ref_outputs, task):
    n = len(outputs)
    out = {"num_examples": int(n),
           "accuracy": (float(np.mean(outputs.argmax(1) == labels[:n]))
                        if labels is not None and task == "classification" else None),
           "agreement_with_keras": agreement(ref_outputs[:n], outputs, task),
           "correlation_with_keras": output_correlation(ref_outputs[:n], outputs),
           "relative_error_vs_keras": relative_error(ref_outputs[:n], outputs),
           "max_logit_abs_diff_vs_keras": float(np.max(np.abs(outputs - ref_outputs[:n])))}
    return out


def _fold(model, threshold_in_bias):
    """fold: the folded model and its report (a ReLU model is not folded)."""
    from export.transform.fold import fold_batchnorm_with_report
    from export.tflite.convert import is_spiking_model

    if not is_spiking_model(model):
        return model, {"skipped": "no spiking neurons: the BatchNorms are left to the TFLite converter"}
    if threshold_in_bias:
        return fold_batchnorm_with_report(model)
    return fold_batchnorm_with_report(model, threshold_in_bias=False)


def _run_format(conversion, x, y, ref_outputs, task, max_tflm_examples, float_outputs=None):
    """run: accuracy, agreement and latency in LiteRT and TFLite Micro."""
    from export.tflite.runtimes import run_litert, run_tflm, tflm_arena_size

    flat = conversion.flatbuffer
    lite = run_litert(flat, x)
    out = {"litert": {**_score(lite["outputs"], y, ref_outputs, task), "latency_ms_per_image": lite["latency_ms"]}}
    if float_outputs is not None:  # quantization-aware export: also against the trained float model
        out["litert"]["agreement_with_float"] = agreement(float_outputs, lite["outputs"], task)
    n_micro = len(x) if max_tflm_examples is None else min(len(x), int(max_tflm_examples))
    arena = tflm_arena_size(flat, x[0])
    micro = run_tflm(flat, x[:n_micro], arena)
    out["tflm"] = {**_score(micro["outputs"], y, ref_outputs, task),
                   "agreement_with_litert": agreement(lite["outputs"][:n_micro], micro["outputs"], task),
                   "latency_ms_per_image": micro["latency_ms"], "arena_bytes": int(arena)}
    return out


def _check_model(model, x, calib):
    """One input, one output, a static input shape that the data has."""
    name = getattr(model, "name", "model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportConfigError(f"the export takes a model with one input and one output; {name!r} has "
                                f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ExportConfigError(f"the export needs a static input shape (TFLite Micro has no dynamic shapes); "
                                f"{name!r} takes {shape}")
    for what, arr in (("images", x), ("calibration_images", calib)):
        if tuple(arr.shape[1:]) != shape:
            raise ExportConfigError(f"{what} of shape {tuple(arr.shape[1:])} do not fit the input of {name!r}, "
                                    f"{shape}")


def _staging(output_dir):
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.partial-", dir=parent)


def _publish(staging, output_dir):
    """Moves every file of ``staging`` into ``output_dir`` (replacing), and
    removes the :data:`ARTEFACTS` of an earlier export that this one did
    not write; then deletes ``staging``."""
    os.makedirs(output_dir, exist_ok=True)
    written = set(os.listdir(staging))
    for name in ARTEFACTS:
        old = os.path.join(output_dir, name)
        if name not in written and os.path.isfile(old):
            os.remove(old)
    for name in written:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)


def export_run(model_or_path, config: ExportConfig) -> ExportResult:
    """Folds, verifies, converts, runs, checks and publishes; see the module docstring.

    Args:
      model_or_path: a trained Keras model (S2NN or ReLU, one input and one
        output, a static input shape) or a ``.keras`` path
        (:func:`export.loader.load_model`).
      config: an :class:`ExportConfig`.

    Returns:
      An :class:`ExportResult`; its ``report`` is also written to
      ``output_dir/export_report.json``.

    Raises:
      ExportConfigError: the model or the data do not fit (one line).
      export.checks.ExportCheckError: the export's own checks failed (the
        files were not kept; ``allow_failed_checks=True`` keeps them).
      export.FoldError, export.EdgeError, export.transform.qat.QATError: a model the
        export cannot write exactly (the message names the layer).
    """
    from export.tflite.convert import convert, is_spiking_model, op_names
    from export.tflite.verify import verify_spikes

    if not isinstance(config, ExportConfig):
        raise ExportConfigError(f"export_run takes an export.ExportConfig, got {type(config).__name__}")
    c = config
    model_path = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    model = load_model(model_path) if model_path else model_or_path
    x = _as_float(c.images)
    y = None if c.labels is None else np.asarray(c.labels).astype(np.int64).reshape(-1)
    if c.calibration_images is None:
        calib, calib_source = x[:c.num_calibration], "verification images"
    else:
        calib, calib_source = _as_float(c.calibration_images)[:c.num_calibration], "calibration images"
    _check_model(model, x, calib)
    task = resolve_task(c.task, model)
    if task == "classification" and y is not None:
        classes = int(model.outputs[0].shape[-1])
        if y.min() < 0 or y.max() >= classes:
            raise ExportConfigError(f"labels must be class indices in [0, {classes}) for {model.name!r}; got "
                                    f"values in [{y.min()}, {y.max()}]")
    if c.qat is not None and not is_spiking_model(model):
        raise ExportConfigError("qat: quantization-aware fine-tuning needs a spiking model; this one has no "
                                "spiking neurons (a ReLU model is exported by post-training quantization)")
    if c.qat is not None:
        _check_model(model, _as_float(c.qat_images[:1]), calib)
    staging = _staging(c.output_dir)
    try:
        result = _export(model, model_path, c, x, y, calib, calib_source, task, staging, convert, op_names,
                         verify_spikes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    checks = result.report["checks"]
    if checks["passed"] or c.allow_failed_checks:
        _publish(staging, c.output_dir)
        return result
    shutil.rmtree(staging, ignore_errors=True)
    result.output_dir = None
    raise ExportCheckError(f"the export's checks failed: {failure_line(checks)}", result)


def _export(model, model_path, c, x, y, calib, calib_source, task, out_dir, convert, op_names, verify_spikes):
    t0 = time.perf_counter()

    # 0. quantization-aware fine-tuning (optional): the fine-tuned model is
    # the reference from here on.
    float_model, qat_report = model, None
    if c.qat is not None:
        from export.transform.qat import quantization_aware_fine_tune

        # the fine-tuning distils what the checks compare: logits, or a regression's outputs
        tuned = quantization_aware_fine_tune(model, c.qat_images, calib,
                                             dataclasses.replace(c.qat, task=task, rewrites=c.rewrites))
        model, qat_report = tuned.model, tuned.report
        model.save(os.path.join(out_dir, "model_qat.keras"))

    # 1. fold
    folded, fold_report = _fold(model, c.threshold_in_bias)
    spiking = "skipped" not in fold_report
    if spiking:
        folded.save(os.path.join(out_dir, "model_folded.keras"))

    # 2. verify the fold
    if spiking:
        check = verify_fold(model, folded, x)
        ref, fold_out = check.pop("logits_original"), check.pop("logits_folded")
        check["agreement"] = agreement(ref, fold_out, task)
    else:
        ref = model_logits(model, x)
        check, fold_out = {}, ref

    def accuracy(outputs):
        return float(np.mean(outputs.argmax(1) == y)) if y is not None and task == "classification" else None

    float_report = float_out = None
    if qat_report is not None:
        float_out = model_logits(float_model, x)
        float_report = {"accuracy": accuracy(float_out)}
        qat_report.update(file="model_qat.keras", accuracy=accuracy(ref), float_accuracy=float_report["accuracy"],
                          agreement_with_float=agreement(float_out, ref, task))
    report = {
        "model": model_path or (c.extra or {}).get("model_path") or model.name,
        "output_dir": c.output_dir,
        "task": task,
        "spiking": spiking,
        "neuron": c.neuron if spiking else None,
        "num_verification": int(len(x)),
        "num_calibration": int(len(calib)),
        "calibration_source": calib_source,
        "threshold_in_bias": bool(c.threshold_in_bias),
        "merge_shortcuts": bool(c.merge_shortcuts),
        "rewrites": list(c.rewrites),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "litert_threads": 1},
        "keras": {"model": "qat" if qat_report is not None else "trained",
                  "accuracy": accuracy(ref),
                  "params": int(model.count_params()),
                  "batchnorm_layers": sum(1 for l in model.layers if type(l).__name__ == "BatchNormalization")},
        "fold": {**fold_report, **check, "accuracy": accuracy(fold_out),
                 **({"file": "model_folded.keras"} if spiking else {})},
        "formats": {},
    }
    if qat_report is not None:
        report["float"] = float_report
        report["qat"] = qat_report
    if c.extra:
        report["run"] = dict(c.extra)

    def representative():
        for sl in batches(len(calib), 50):
            yield [calib[sl]]

    conversions = {}
    for fmt in c.formats:
        # 3. convert
        conv = convert(folded, fmt, representative if fmt != "float32" else None, neuron=c.neuron,
                       merge_shortcuts=c.merge_shortcuts, rewrites=c.rewrites)
        conversions[fmt] = conv
        fname = f"model_{fmt}.tflite"
        with open(os.path.join(out_dir, fname), "wb") as f:
            f.write(conv.flatbuffer)
        ops = op_names(conv.flatbuffer)
        entry = {"file": fname, "size_bytes": len(conv.flatbuffer), "ops": ops,
                 "neuron": conv.neuron, "conversions": conv.conversions, **_op_check(ops, conv.flatbuffer),
                 "bn_residue_ops": _bn_residue(ops, folded, conv) if spiking else None,
                 "neuron_ops": {k: v for k, v in ops.items() if k in COMPARE_OPS | {"MINIMUM", "DEPTHWISE_CONV_2D"}}}
        if conv.plan is not None:
            entry["neurons"] = {n: p.summary() for n, p in conv.plan.neurons.items()}
            entry["grids"] = conv.grids
        # 4. run
        entry.update(_run_format(conv, x, y, ref, task, c.max_tflm_examples, float_out))
        keras_acc, lite_acc = report["keras"]["accuracy"], entry["litert"]["accuracy"]
        entry["accuracy_drop_pp_vs_keras"] = None if keras_acc is None else 100.0 * (keras_acc - lite_acc)
        if float_report is not None and float_report["accuracy"] is not None:
            entry["accuracy_drop_pp_vs_float"] = 100.0 * (float_report["accuracy"] - lite_acc)
        if spiking and c.spike_checks:
            entry["spikes"] = verify_spikes(conv, folded, x, max_tflm_examples=c.max_tflm_examples)
        if fmt == "int8" and c.c_array:
            arena = entry["tflm"]["arena_bytes"]
            write_c_array(conv.flatbuffer, os.path.join(out_dir, "model_int8.cc"),
                          os.path.join(out_dir, "model_int8.h"), "g_s2nn_model_int8", arena)
            entry["c_source"] = {"source": "model_int8.cc", "header": "model_int8.h",
                                 "array": "g_s2nn_model_int8", "arena_constant": "g_s2nn_model_int8_arena_size"}
        for rep in c.reporters:
            if fmt in rep.formats:
                entry[rep.name] = rep.run(fmt, conv, out_dir) if getattr(rep, "writes_files", False) \
                    else rep.run(fmt, conv)
        report["formats"][fmt] = entry

    # 5. check and report
    report["checks"] = {**evaluate(report, c.reporters), "allow_failed_checks": bool(c.allow_failed_checks),
                        "spike_checks_run": bool(spiking and c.spike_checks)}
    report["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "export_report.json"), "w") as f:
        json.dump(_json_safe(report), f, indent=2)
    if c.verbose:
        print(format_summary(report, c.reporters))
    return ExportResult(report, c.output_dir, folded, conversions)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _pct(value, width):
    return f"{'-':>{width + 1}}" if value is None else f"{100 * value:>{width}.2f}%"


def format_summary(report: Dict, reporters: Sequence[FormatReporter] = ()) -> str:
    """A short human-readable summary of an export report."""
    lines = [
        f"export: {report['model']} -> {report['output_dir']}",
        f"  verification inputs: {report['num_verification']} ({report.get('task', 'classification')}), "
        f"calibration: {report['num_calibration']} ({report['calibration_source']})",
    ]
    fold = report["fold"]
    regression = report.get("task") == "regression"
    agree_what = "outputs agree (RMS difference <= 1% of the output range)" if regression else "predictions equal"
    keras_acc = report["keras"]["accuracy"]
    acc_text = "keras accuracy " + ("-" if keras_acc is None else f"{100 * keras_acc:.2f}%")
    if report.get("qat"):
        q = report["qat"]
        lines.append(
            f"  qat: {q['steps']} steps x {q['batch_size']} images ({q['epochs']:.3g} epochs of {q['train_examples']}) "
            f"in {q['seconds']:.1f} s (+{q['teacher_seconds']:.1f} s teacher); on the calibration images "
            f"KL(float || quantization-aware) {q['calibration_match']['before']['kl']:.4f} -> "
            f"{q['calibration_match']['after']['kl']:.4f}, same top-1 "
            f"{100 * q['calibration_match']['before']['agreement']:.1f}% -> "
            f"{100 * q['calibration_match']['after']['agreement']:.1f}%; {q['quantized_tensors']} int8 grids")
        if q.get("accuracy") is not None:
            lines.append(
                f"  trained float model {100 * q['float_accuracy']:.2f}% -> quantization-aware model "
                f"{100 * q['accuracy']:.2f}% ({100 * (q['accuracy'] - q['float_accuracy']):+.2f} pt, same top-1 on "
                f"{100 * q['agreement_with_float']:.2f}%); the checks below are against the quantization-aware "
                "model")
    if report.get("spiking", True):
        lines += [
            f"  {acc_text}, {report['keras']['batchnorm_layers']} BN layers folded; neuron formulation: "
            f"{report.get('neuron')}",
            f"  fold: {agree_what} on {100 * fold.get('agreement', fold.get('prediction_agreement', 0.0)):.2f}% of "
            f"inputs, max |output diff| {fold['max_logit_abs_diff']:.3g}, spike mismatches "
            f"{fold['total_spike_mismatches']} (float ties only)",
        ]
    else:
        lines.append(f"  {acc_text}, no spiking neurons: "
                     f"{report['keras']['batchnorm_layers']} BN layers left to the converter")
    lines.append("  format    size[KiB]  LiteRT acc  agree   TFLM acc  agree   arena[KiB]  LiteRT ms  TFLM ms  edge ops")
    for fmt, e in report["formats"].items():
        lt, mc = e["litert"], e["tflm"]
        edge = "yes" if e["edge_only"] else "no: " + ",".join(e["non_edge_ops"] or sorted(e["inner_quantize_ops"]))
        lines.append(
            f"  {fmt:<8} {e['size_bytes'] / 1024:>9.1f}  {_pct(lt['accuracy'], 9)} {_pct(lt['agreement_with_keras'], 6)}"
            f"  {_pct(mc['accuracy'], 8)} {_pct(mc['agreement_with_keras'], 6)}  {mc['arena_bytes'] / 1024:>10.1f}"
            f"  {lt['latency_ms_per_image']:>9.3f}  {mc['latency_ms_per_image']:>7.2f}  {edge}")
    tflm_n = {e["tflm"]["num_examples"] for e in report["formats"].values()}
    if tflm_n and tflm_n != {report["num_verification"]}:
        lines.append(f"  (TFLM figures over the first {sorted(tflm_n)[0]} inputs)")
    spikes = {fmt: e["spikes"] for fmt, e in report["formats"].items() if "spikes" in e}
    if spikes:
        lines.append("  spikes    two-level  neurons equal  spike diffs  vs folded float: end-to-end   local  "
                     "  local misses (<=1 step)  max |u-theta| [steps]")
        for fmt, sp in spikes.items():
            diffs = sum(p["spike_differences"] for p in sp["runtime_agreement"].values())
            lines.append(
                f"  {fmt:<8} {'yes' if sp['two_level'] else 'NO':>9}  "
                f"{'yes' if sp['neurons_equal_given_equal_inputs'] else 'NO':>13}"
                f"  {diffs:>11d}  {100 * sp['end_to_end_agreement']:>25.3f}%  {100 * sp['local_agreement']:.3f}%"
                f"  {sp['local_mismatches']:>10d} ({sp['local_mismatches_within_one_step']})"
                f"  {sp['local_max_distance_steps']:>10.2f}")
        lines.append("  (neurons equal: XNNPACK, builtin kernels and TFLM give the same spikes wherever a neuron's "
                     "input is the same -- in float32 up to rounding ties at the threshold; spike diffs: all "
                     "differences between them, from other ops' rounding)")
    for rep in reporters:
        if rep.summary is None:
            continue
        for fmt, e in report["formats"].items():
            if rep.name in e:
                lines.append(rep.summary(fmt, e[rep.name]))
    checks = report.get("checks")
    if checks is not None:
        n = len(checks["results"])
        if checks["passed"]:
            lines.append(f"  checks: all {n} passed (bounds: export.checks.BOUNDS)")
        else:
            lines.append(f"  checks: {len(checks['failed'])} of {n} FAILED: {failure_line(checks)}")
    return "\n".join(lines)
