"""End-to-end export of a trained model: fold -> verify -> convert -> run -> check -> publish.

:func:`export_run` (``export_run(model, ExportConfig(...))``) is what
``python -m export`` and the trainer's ``--export`` call; what it is asked
to do is an :class:`export.config.ExportConfig`, the report it writes and
prints is :mod:`export.report`'s. It writes into ``config.output_dir``:

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
(:mod:`export.checks`) have passed (:func:`publish`) -- replacing the files
of an earlier export there, and removing that export's artefacts this one
did not write. If a check fails, :class:`export.checks.ExportCheckError` is
raised and the staging folder is deleted (``output_dir`` keeps what it
had), unless ``allow_failed_checks=True`` asked for the files anyway (the
report then says ``checks.passed: false``). Any other error also deletes
the staging folder.

Figures: fold verification (output agreement, largest output difference,
spike-map mismatches per neuron layer), and per format: file size, op list
and whether it is edge-only (:func:`edge_verdict`, from
:data:`export.formats.EDGE_OPS`), leftover BN arithmetic, in LiteRT and
TFLite Micro accuracy, agreement with the Keras model's outputs
(:func:`export.metrics.agreement_fraction`: same top-1 for classification,
RMS difference within 1 % of the output range for regression), largest
output difference, host latency per image, the TFLM tensor-arena size, and
for spiking models the spike checks of
:func:`export.tflite.verify.verify_spikes` (two levels, runtimes bit for bit,
agreement with the folded float model end to end and locally, tie
distances). Extra per-format figures (Ethos-U / Vela, microcontroller
code) come from :class:`export.report.FormatReporter` objects in
``config.reporters``.

Example::

    from export import ExportConfig, export_run

    result = export_run(model, ExportConfig("run/export", x_test, y_test, formats=("int8",),
                                            calibration_images=x_train[-500:]))
    result.report["checks"]["passed"], result.report["formats"]["int8"]["litert"]["agreement_with_keras"]
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Dict, Optional

import numpy as np

from export.checks import ExportCheckError, evaluate, failure_line
from export.config import ExportConfig, ExportConfigError, check_model, resolve_task
from export.formats import COMPARE_OPS, EDGE_OPS, FORBIDDEN_EDGE_OPS, QUANTIZATIONS
from export.loader import load_model
from export.mcu.artefact import artefact_figures
from export.metrics import agreement_fraction, batches, model_logits, output_correlation, relative_error
from export.report import format_summary, write_report
from export.tflite.c_array import write_c_array
from export.tflite.convert import convert, is_spiking_model, op_names
from export.tflite.flatbuffer import read_model
from export.tflite.runtimes import TFLMError, run_litert, run_tflm, tflm_arena_size
from export.tflite.verify import verify_fold, verify_spikes
from export.transform.fold import fold_batchnorm_with_report
from export.transform.qat import quantization_aware_fine_tune
from export.transform.inputs import check_inputs, model_inputs

__all__ = ["export_run", "ExportResult", "ARTEFACTS", "inner_quantize_ops", "edge_verdict", "publish"]

#: Files an export writes (``model_<format>.tflite`` for each format); the
#: publishing step removes those of an earlier export it did not rewrite.
ARTEFACTS = ("export_report.json", "model_folded.keras", "model_qat.keras", "model_int8.cc", "model_int8.h") + tuple(
    f"model_{fmt}.tflite" for fmt in QUANTIZATIONS)


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_run` produced.

    Attributes:
      report: the dict written to ``export_report.json``.
      output_dir: where the files are (``None`` when the checks failed and
        the files were not kept).
      folded: the folded Keras model (the model itself for a ReLU model).
      conversions: ``{format: export.tflite.convert.Conversion}``.

    Example::

        result = export_run(model, config)
        result["checks"]["passed"], result.conversions["int8"].flatbuffer
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


@dataclasses.dataclass
class _Job:
    """One export under way: the config, what :func:`_prepare` made of its
    inputs, and the staging folder the files go to."""

    config: ExportConfig
    model: Any  # the trained model (before any fine-tuning)
    model_path: Optional[str]
    x: np.ndarray  # verification inputs, float
    y: Optional[np.ndarray]  # their labels
    calib: np.ndarray  # calibration inputs, float
    calib_source: str
    task: str
    out_dir: str = ""

    def accuracy(self, outputs) -> Optional[float]:
        if self.y is None or self.task != "classification":
            return None
        return float(np.mean(outputs.argmax(1) == self.y))

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)


@dataclasses.dataclass
class _Reference:
    """The Keras side every format is compared with (:func:`_reference`)."""

    model: Any  # the trained model, or the quantization-aware one
    folded: Any
    spiking: bool
    outputs: np.ndarray  # the model's outputs on the verification inputs
    accuracy: Optional[float]
    fold: Dict  # report["fold"]
    qat: Optional[Dict] = None  # report["qat"]
    float_outputs: Optional[np.ndarray] = None  # the trained model's, after fine-tuning
    float_accuracy: Optional[float] = None


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
    empty for a clean integer model.

    Example::

        inner_quantize_ops(result.conversions["int8"].flatbuffer)   # {}
    """
    graph = read_model(tflite_model).main
    inner = {}
    for op in graph.operators:
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            if not (set(op.inputs) & set(graph.inputs) or set(op.outputs) & set(graph.outputs)):
                inner[op.name] = inner.get(op.name, 0) + 1
    return inner


def edge_verdict(ops: Dict[str, int], tflite_model) -> Dict:
    """Edge-only verdict of an op histogram ``ops`` (:func:`export.tflite.convert.op_names`)
    of ``tflite_model``, from :data:`export.formats.EDGE_OPS`: ``edge_only``,
    ``non_edge_ops``, ``forbidden_ops`` and :func:`inner_quantize_ops`.

    Example::

        edge_verdict(op_names(flat), flat)["edge_only"]
    """
    inner = inner_quantize_ops(tflite_model)
    return {
        "edge_only": not (set(ops) - EDGE_OPS) and not inner,
        "non_edge_ops": sorted(set(ops) - EDGE_OPS),
        "forbidden_ops": sorted(set(ops) & FORBIDDEN_EDGE_OPS),
        "inner_quantize_ops": inner,
    }


def _score(outputs, job, ref):
    """Accuracy and agreement of a runtime's ``outputs`` (the first of the
    verification inputs) with the reference's."""
    n = len(outputs)
    ref_outputs = ref.outputs[:n]
    return {"num_examples": int(n),
            "accuracy": (float(np.mean(outputs.argmax(1) == job.y[:n]))
                         if job.y is not None and job.task == "classification" else None),
            "agreement_with_keras": agreement_fraction(ref_outputs, outputs, job.task),
            "correlation_with_keras": output_correlation(ref_outputs, outputs),
            "relative_error_vs_keras": relative_error(ref_outputs, outputs),
            "max_logit_abs_diff_vs_keras": float(np.max(np.abs(outputs - ref_outputs)))}


def _fold(model, threshold_in_bias):
    """fold: the folded model and its report (a ReLU model is not folded)."""
    if not is_spiking_model(model):
        return model, {"skipped": "no spiking neurons: the BatchNorms are left to the TFLite converter"}
    if threshold_in_bias:
        return fold_batchnorm_with_report(model)
    return fold_batchnorm_with_report(model, threshold_in_bias=False)


def _tflm_arena(conversion, sample, ref):
    """The TFLite Micro arena of a conversion; a model TFLite Micro cannot
    run at all is one error naming the op, the Keras layer and what to change."""
    layers = {l.name: type(l).__name__ for l in ref.folded.layers}
    try:
        return tflm_arena_size(conversion.flatbuffer, sample, layer_names=layers)
    except TFLMError as err:
        fmt = conversion.quantization
        raise TFLMError(f"the {fmt} model does not run in TensorFlow Lite Micro: {err}; replace that layer, or "
                        f"leave {fmt} out of the formats (--formats)", err.op, err.layers, err.reason) from None


def _run_format(conversion, job, ref):
    """run: accuracy, agreement and latency in LiteRT and TFLite Micro."""
    flat, x, task = conversion.flatbuffer, job.x, job.task
    lite = run_litert(flat, x)
    out = {"litert": {**_score(lite["outputs"], job, ref), "latency_ms_per_image": lite["latency_ms"]}}
    if ref.float_outputs is not None:  # quantization-aware export: also against the trained float model
        out["litert"]["agreement_with_float"] = agreement_fraction(ref.float_outputs, lite["outputs"], task)
    max_tflm = job.config.max_tflm_examples
    n_micro = len(x) if max_tflm is None else min(len(x), int(max_tflm))
    arena = _tflm_arena(conversion, x[0], ref)
    micro = run_tflm(flat, x[:n_micro], arena)
    out["tflm"] = {**_score(micro["outputs"], job, ref),
                   "agreement_with_litert": agreement_fraction(lite["outputs"][:n_micro], micro["outputs"], task),
                   "latency_ms_per_image": micro["latency_ms"], "arena_bytes": int(arena)}
    return out


def _check_labels_fit(model, y, task):
    """Classification labels must be class indices of the model's output."""
    if task != "classification" or y is None:
        return
    classes = int(model.outputs[0].shape[-1])
    if y.min() < 0 or y.max() >= classes:
        raise ExportConfigError(f"labels must be class indices in [0, {classes}) for {model.name!r}; got "
                                f"values in [{y.min()}, {y.max()}]")


def _prepare(model_or_path, c: ExportConfig) -> _Job:
    """Loads the model, reads the inputs and checks that they fit together."""
    model_path = os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    model = load_model(model_path) if model_path else model_or_path
    check_inputs(c.images, model, "the verification inputs")   # a Rescaling model fed scaled data
    x = model_inputs(c.images, model)   # uint8 as they are for a model that scales its input itself, else / 255
    y = None if c.labels is None else np.asarray(c.labels).astype(np.int64).reshape(-1)
    if c.calibration_images is None:
        calib, calib_source = x[:c.num_calibration], "verification images"
    else:
        calib, calib_source = model_inputs(c.calibration_images, model)[:c.num_calibration], "calibration images"
    check_model(model, x, calib)
    task = resolve_task(c.task, model)
    _check_labels_fit(model, y, task)
    if c.qat is not None and not is_spiking_model(model):
        raise ExportConfigError("qat: quantization-aware fine-tuning needs a spiking model; this one has no "
                                "spiking neurons (a ReLU model is exported by post-training quantization)")
    if c.qat is not None:
        check_model(model, model_inputs(c.qat_images[:1], model), calib)
    return _Job(c, model, model_path, x, y, calib, calib_source, task)


def _staging(output_dir):
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.partial-", dir=parent)


def publish(staging: str, output_dir: str) -> None:
    """Moves every file of ``staging`` into ``output_dir`` (replacing), and
    removes the :data:`ARTEFACTS` of an earlier export that this one did
    not write; then deletes ``staging``.

    Example::

        publish("run/.export.partial-x1y2", "run/export")
    """
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
      config: an :class:`export.config.ExportConfig`.

    Returns:
      An :class:`ExportResult`; its ``report`` is also written to
      ``output_dir/export_report.json``.

    Raises:
      export.config.ExportConfigError: the model or the data do not fit (one line).
      export.checks.ExportCheckError: the export's own checks failed (the
        files were not kept; ``allow_failed_checks=True`` keeps them).
      export.FoldError, export.EdgeError, export.transform.qat.QATError: a model the
        export cannot write exactly (the message names the layer).

    Example::

        result = export_run("run/model.keras", ExportConfig("run/export", x_test, y_test))
    """
    if not isinstance(config, ExportConfig):
        raise ExportConfigError(f"export_run takes an export.ExportConfig, got {type(config).__name__}")
    job = _prepare(model_or_path, config)
    job.out_dir = _staging(config.output_dir)
    try:
        result = _export(job)
    except BaseException:
        shutil.rmtree(job.out_dir, ignore_errors=True)
        raise
    return _keep_if_checked(result, job)


def _keep_if_checked(result, job):
    """Publishes the staged files when the checks passed (or failed checks
    are allowed); else deletes them and raises ExportCheckError."""
    checks = result.report["checks"]
    if checks["passed"] or job.config.allow_failed_checks:
        publish(job.out_dir, job.config.output_dir)
        return result
    shutil.rmtree(job.out_dir, ignore_errors=True)
    result.output_dir = None
    raise ExportCheckError(f"the export's checks failed: {failure_line(checks)}", result)


def _export(job: _Job) -> ExportResult:
    """Every step after the checks of the inputs, written into ``job.out_dir``."""
    c = job.config
    t0 = time.perf_counter()
    ref = _reference(job)
    report = _report(job, ref)
    conversions = {}
    for fmt in c.formats:
        conversions[fmt] = _convert(job, ref.folded, fmt)
        report["formats"][fmt] = _format_entry(job, ref, fmt, conversions[fmt])
    report["checks"] = {**evaluate(report, c.reporters), "allow_failed_checks": bool(c.allow_failed_checks),
                        "spike_checks_run": bool(ref.spiking and c.spike_checks)}
    report["seconds"] = time.perf_counter() - t0
    write_report(report, job.path("export_report.json"))
    if c.verbose:
        print(format_summary(report, c.reporters))
    return ExportResult(report, c.output_dir, ref.folded, conversions)


def _fine_tune(job):
    """0. quantization-aware fine-tuning: the fine-tuned model (saved) and its report."""
    c = job.config
    # the fine-tuning distils what the checks compare: logits, or a regression's outputs
    tuned = quantization_aware_fine_tune(job.model, c.qat_images, job.calib,
                                         dataclasses.replace(c.qat, task=job.task, rewrites=c.rewrites))
    tuned.model.save(job.path("model_qat.keras"))
    return tuned.model, tuned.report


def _reference(job: _Job) -> _Reference:
    """The model every format is checked against (the fine-tuned one with
    ``qat``), 1. folded (and saved) and 2. the fold verified."""
    model, qat_report = job.model, None
    if job.config.qat is not None:
        model, qat_report = _fine_tune(job)
    folded, fold_report = _fold(model, job.config.threshold_in_bias)
    spiking = "skipped" not in fold_report
    if spiking:
        folded.save(job.path("model_folded.keras"))
        check = verify_fold(model, folded, job.x)
        outputs, fold_out = check.pop("logits_original"), check.pop("logits_folded")
        check["agreement"] = agreement_fraction(outputs, fold_out, job.task)
    else:
        outputs = model_logits(model, job.x)
        check, fold_out = {}, outputs
    fold = {**fold_report, **check, "accuracy": job.accuracy(fold_out),
            **({"file": "model_folded.keras"} if spiking else {})}
    ref = _Reference(model, folded, spiking, outputs, job.accuracy(outputs), fold, qat_report)
    if qat_report is not None:
        ref.float_outputs = model_logits(job.model, job.x)
        ref.float_accuracy = job.accuracy(ref.float_outputs)
        qat_report.update(file="model_qat.keras", accuracy=ref.accuracy, float_accuracy=ref.float_accuracy,
                          agreement_with_float=agreement_fraction(ref.float_outputs, outputs, job.task))
    return ref


def _report(job: _Job, ref: _Reference) -> Dict:
    """The report's figures of the model and its fold; ``formats`` to fill."""
    c, model = job.config, ref.model
    report = {
        "model": job.model_path or (c.extra or {}).get("model_path") or model.name,
        "output_dir": c.output_dir,
        "task": job.task,
        "spiking": ref.spiking,
        "neuron": c.neuron if ref.spiking else None,
        "num_verification": int(len(job.x)),
        "num_calibration": int(len(job.calib)),
        "calibration_source": job.calib_source,
        "threshold_in_bias": bool(c.threshold_in_bias),
        "merge_shortcuts": bool(c.merge_shortcuts),
        "rewrites": list(c.rewrites),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "litert_threads": 1},
        "keras": {"model": "qat" if ref.qat is not None else "trained",
                  "accuracy": ref.accuracy,
                  "params": int(model.count_params()),
                  "batchnorm_layers": sum(1 for l in model.layers if type(l).__name__ == "BatchNormalization")},
        "fold": ref.fold,
        "formats": {},
    }
    if ref.qat is not None:
        report["float"] = {"accuracy": ref.float_accuracy}
        report["qat"] = ref.qat
    if c.extra:
        report["run"] = dict(c.extra)
    return report


def _convert(job, folded, fmt):
    """3. convert (integer formats calibrated on ``job.calib``, 50 at a time)."""
    c = job.config

    def representative():
        for sl in batches(len(job.calib), 50):
            yield [job.calib[sl]]

    return convert(folded, fmt, representative if fmt != "float32" else None, neuron=c.neuron,
                   merge_shortcuts=c.merge_shortcuts, rewrites=c.rewrites)


def _graph_figures(conv, ref):
    """What the flatbuffer holds: size, ops, the edge verdict, BN residue, neurons."""
    flat = conv.flatbuffer
    ops = op_names(flat)
    figures = {"size_bytes": len(flat), "ops": ops, "neuron": conv.neuron, "conversions": conv.conversions,
               **edge_verdict(ops, flat),
               "bn_residue_ops": _bn_residue(ops, ref.folded, conv) if ref.spiking else None,
               "neuron_ops": {k: v for k, v in ops.items() if k in COMPARE_OPS | {"MINIMUM", "DEPTHWISE_CONV_2D"}}}
    if conv.plan is not None:
        figures["neurons"] = {n: p.summary() for n, p in conv.plan.neurons.items()}
        figures["grids"] = conv.grids
    return figures


def _write_c_source(job, conv, arena):
    """``model_int8.cc`` / ``.h``; the report's ``c_source`` entry."""
    write_c_array(conv.flatbuffer, job.path("model_int8.cc"), job.path("model_int8.h"), "g_s2nn_model_int8", arena)
    return {"source": "model_int8.cc", "header": "model_int8.h", "array": "g_s2nn_model_int8",
            "arena_constant": "g_s2nn_model_int8_arena_size"}


def _format_entry(job, ref, fmt, conv):
    """``report["formats"][fmt]``: the file written, 4. run in both
    runtimes, the spike checks, the C array and each reporter's figures."""
    c = job.config
    fname = f"model_{fmt}.tflite"
    with open(job.path(fname), "wb") as f:
        f.write(conv.flatbuffer)
    # the file's sha256 and (int8) its spike tensors: what export.mcu generates C from (export.mcu.artefact)
    entry = {"file": fname, **artefact_figures(conv), **_graph_figures(conv, ref), **_run_format(conv, job, ref)}
    lite_acc = entry["litert"]["accuracy"]
    entry["accuracy_drop_pp_vs_keras"] = None if ref.accuracy is None else 100.0 * (ref.accuracy - lite_acc)
    if ref.qat is not None and ref.float_accuracy is not None:
        entry["accuracy_drop_pp_vs_float"] = 100.0 * (ref.float_accuracy - lite_acc)
    if ref.spiking and c.spike_checks:
        entry["spikes"] = verify_spikes(conv, ref.folded, job.x, max_tflm_examples=c.max_tflm_examples)
    if fmt == "int8" and c.c_array:
        entry["c_source"] = _write_c_source(job, conv, entry["tflm"]["arena_bytes"])
    for rep in c.reporters:
        if fmt in rep.formats:
            entry[rep.name] = rep.run(fmt, conv, job.out_dir) if getattr(rep, "writes_files", False) \
                else rep.run(fmt, conv)
    return entry
