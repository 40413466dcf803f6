"""End-to-end export of a trained model: fold -> verify -> convert -> run -> report.

:func:`export_run` is what ``python -m export`` and the trainer's
``--export`` call. It writes into ``output_dir``:

* ``model_qat.keras`` (with ``qat=``): the quantization-aware fine-tuned
  model (:mod:`export.qat`), which is then "the Keras model" every format is
  verified against;
* ``model_folded.keras``: the BN-free inference model (ThresholdNeuron
  layers; a ReLU model is not folded: its BatchNorms are the converter's);
* ``model_<format>.tflite`` for each requested format;
* ``model_int8.cc`` / ``model_int8.h``: the int8 flatbuffer as a C array for
  TFLite Micro firmware (with the measured tensor-arena size);
* ``export_report.json``: every figure below,

and returns an :class:`ExportResult` (``result.report`` is the JSON dict;
``result["formats"]`` reads it too).

Figures: fold verification (prediction agreement, largest logit difference,
spike-map mismatches per neuron layer), and per format: file size, op list
and whether it is edge-only (:data:`export.formats.EDGE_OPS`), leftover BN
arithmetic, in LiteRT and TFLite Micro accuracy, agreement with the Keras
model's predictions, largest logit difference, host latency per image, the
TFLM tensor-arena size, and for spiking models the spike checks of
:func:`export.verify.verify_spikes` (two levels, runtimes bit for bit,
agreement with the folded float model end to end and locally, tie
distances). Extra per-format figures (Ethos-U / Vela) come from
:class:`FormatReporter` objects passed as ``reporters``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from export.formats import (COMPARE_OPS, DEFAULT_FORMATS, DEFAULT_NEURON, EDGE_OPS, FORBIDDEN_EDGE_OPS,
                            NEURON_FORMULATIONS, QUANTIZATIONS)
from export.verify import batches, model_logits

__all__ = ["export_run", "ExportResult", "FormatReporter", "load_model", "verify_fold", "write_c_array",
           "format_summary", "DEFAULT_FORMATS"]


def verify_fold(*args, **kwargs):
    """:func:`export.verify.verify_fold` (kept importable from here)."""
    from export.verify import verify_fold as _verify_fold

    return _verify_fold(*args, **kwargs)


def write_c_array(*args, **kwargs):
    """:func:`export.c_array.write_c_array` (kept importable from here)."""
    from export.c_array import write_c_array as _write

    return _write(*args, **kwargs)


@dataclasses.dataclass
class FormatReporter:
    """An extra per-format figure for the export report.

    Attributes:
      name: its key in ``report["formats"][fmt]`` (e.g. ``"vela"``).
      formats: the formats it applies to (e.g. ``("int8",)``).
      run: ``run(fmt, conversion) -> dict`` (JSON-friendly) given the
        :class:`export.tflite.Conversion` of that format.
      summary: optional ``summary(fmt, figures) -> str``: lines appended to
        the printed summary.
    """

    name: str
    formats: Sequence[str]
    run: Callable
    summary: Optional[Callable] = None


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_run` produced.

    Attributes:
      report: the dict written to ``export_report.json``.
      output_dir: where the files are.
      folded: the folded Keras model (the model itself for a ReLU model).
      conversions: ``{format: export.tflite.Conversion}``.
    """

    report: Dict
    output_dir: str
    folded: object
    conversions: Dict

    def __getitem__(self, key):
        return self.report[key]

    def __contains__(self, key):
        return key in self.report

    def get(self, key, default=None):
        return self.report.get(key, default)


def load_model(path: str):
    """Loads a ``.keras`` model that may hold S2Activation / ThresholdNeuron
    layers (registers both packages' custom objects first)."""
    import keras

    import s2nn_keras  # noqa: F401  (registers S2Activation)
    import export.edge  # noqa: F401  (registers GridQuantize)
    import export.qat  # noqa: F401  (registers the quantization-aware training layers)
    import export.neurons  # noqa: F401  (registers ThresholdNeuron)

    if not isinstance(path, str) or not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras model file, got {path!r}")
    return keras.models.load_model(path, compile=False)


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


def boundary_ops(tflite_model) -> Dict[str, int]:
    """QUANTIZE/DEQUANTIZE ops that are not at the model boundary (reading a
    model input or writing a model output): ``{op name: count}``."""
    from export.flatbuffer import read_model

    graph = read_model(tflite_model).main
    inner = {}
    for op in graph.operators:
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            if not (set(op.inputs) & set(graph.inputs) or set(op.outputs) & set(graph.outputs)):
                inner[op.name] = inner.get(op.name, 0) + 1
    return inner


def _op_check(ops, tflite_model):
    return {
        "edge_only": not (set(ops) - EDGE_OPS) and not boundary_ops(tflite_model),
        "non_edge_ops": sorted(set(ops) - EDGE_OPS),
        "forbidden_ops": sorted(set(ops) & FORBIDDEN_EDGE_OPS),
        "inner_quantize_ops": boundary_ops(tflite_model),
    }


def _score(outputs, labels, ref_pred, ref_logits):
    pred = outputs.argmax(1)
    return {
        "num_examples": int(len(outputs)),
        "accuracy": float(np.mean(pred == labels)),
        "agreement_with_keras": float(np.mean(pred == ref_pred[:len(pred)])),
        "max_logit_abs_diff_vs_keras": float(np.max(np.abs(outputs - ref_logits[:len(outputs)]))),
    }


def _fold(model):
    """fold: the folded model and its report (a ReLU model is not folded)."""
    from export.fold import fold_batchnorm_with_report
    from export.tflite import is_spiking_model

    if not is_spiking_model(model):
        return model, {"skipped": "no spiking neurons: the BatchNorms are left to the TFLite converter"}
    return fold_batchnorm_with_report(model)


def _run_format(conversion, x, y, ref_pred, ref_logits, max_tflm_examples, float_pred=None):
    """run: accuracy, agreement and latency in LiteRT and TFLite Micro."""
    from export.runtimes import run_litert, run_tflm, tflm_arena_size

    flat = conversion.flatbuffer
    lite = run_litert(flat, x)
    out = {"litert": {**_score(lite["outputs"], y, ref_pred, ref_logits),
                      "latency_ms_per_image": lite["latency_ms"]}}
    if float_pred is not None:  # quantization-aware export: also against the trained float model
        out["litert"]["agreement_with_float"] = float(np.mean(lite["outputs"].argmax(1) == float_pred))
    n_micro = len(x) if max_tflm_examples is None else min(len(x), int(max_tflm_examples))
    arena = tflm_arena_size(flat, x[0])
    micro = run_tflm(flat, x[:n_micro], arena)
    out["tflm"] = {**_score(micro["outputs"], y[:n_micro], ref_pred, ref_logits),
                   "agreement_with_litert": float(np.mean(
                       micro["outputs"].argmax(1) == lite["outputs"][:n_micro].argmax(1))),
                   "latency_ms_per_image": micro["latency_ms"], "arena_bytes": int(arena)}
    return out


def export_run(model_or_path, output_dir: str, images, labels,
               formats: Sequence[str] = DEFAULT_FORMATS,
               calibration_images=None, num_calibration: int = 500,
               max_tflm_examples: Optional[int] = None, c_array: bool = True,
               verbose: bool = True, extra: Optional[Dict] = None,
               threshold_in_bias: bool = True, neuron: str = DEFAULT_NEURON,
               reporters: Sequence[FormatReporter] = (), spike_checks: bool = True,
               merge_shortcuts: bool = False, qat=None, qat_images=None) -> ExportResult:
    """Folds, verifies, converts, runs and reports; see the module docstring.

    Args:
      model_or_path: a trained Keras model (S2NN or ReLU) or a ``.keras`` path.
      output_dir: where the artefacts and ``export_report.json`` go.
      images, labels: the verification set (uint8 NHWC images or float32 in
        [0, 1]; integer labels).
      formats: any of ``"float32"``, ``"int8"``, ``"int16x8"``.
      calibration_images: images for integer calibration (training data,
        ideally); the first ``num_calibration`` are used. ``None`` uses the
        verification images (recorded in the report).
      max_tflm_examples: cap on images run through TFLite Micro (its
        reference kernels are slow); ``None`` runs all.
      c_array: write ``model_int8.cc``/``.h`` when int8 is exported.
      verbose: print the summary at the end.
      extra: additional fields stored under ``"run"`` in the report.
      threshold_in_bias: move ``u_th`` of neurons that follow a Conv/Dense
        into its bias (default; see :func:`export.fold_batchnorm`). False is
        for measuring what that buys (compare formulation).
      neuron: ``"saturate"`` (default) or ``"compare"`` (the ablation).
      reporters: extra per-format figures (:class:`FormatReporter`).
      spike_checks: run :func:`export.verify.verify_spikes` per format
        (spiking models).
      merge_shortcuts: export strided shortcuts as one strided 1x1 conv
        (:func:`export.tflite.merge_strided_shortcuts`).
      qat: an :class:`export.qat.QATConfig` to fine-tune the model
        quantization-aware first (spiking models; :mod:`export.qat`): the
        fine-tuned model, whose Keras forward pass rounds like the int8
        model, is saved as ``model_qat.keras`` and replaces the trained one
        as the reference of every check; the report keeps the trained
        model's accuracy under ``float`` and the fine-tuning under ``qat``.
        ``None`` (default): post-training quantization.
      qat_images: the training images the fine-tuning reads (uint8 or
        float32, no labels: the trained model's predictions are the
        targets); needed with ``qat``.

    Returns:
      An :class:`ExportResult`; its ``report`` is also written to
      ``output_dir/export_report.json``.
    """
    from export.fold import fold_batchnorm_with_report
    from export.tflite import convert, op_names
    from export.verify import verify_spikes

    formats = list(formats)
    bad = [f for f in formats if f not in QUANTIZATIONS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {', '.join(QUANTIZATIONS)}; got {formats}")
    if neuron not in NEURON_FORMULATIONS:
        raise ValueError(f"neuron must be one of {', '.join(NEURON_FORMULATIONS)}; got {neuron!r}")
    model_path = model_or_path if isinstance(model_or_path, str) else None
    model = load_model(model_or_path) if model_path else model_or_path
    x = _as_float(images)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need a non-empty verification set with one label per image; got {len(x)} images, {len(y)} labels")
    if calibration_images is None:
        calib, calib_source = x[:num_calibration], "verification images"
    else:
        calib, calib_source = _as_float(calibration_images)[:num_calibration], "calibration images"
    if qat is not None:
        from export.qat import QATConfig
        from export.tflite import is_spiking_model

        if not isinstance(qat, QATConfig):
            raise ValueError(f"qat must be an export.qat.QATConfig or None, got {type(qat).__name__}")
        if not is_spiking_model(model):
            raise ValueError("qat: quantization-aware fine-tuning needs a spiking model; this one has no "
                             "spiking neurons (a ReLU model is exported by post-training quantization)")
        if qat_images is None or len(qat_images) == 0:
            raise ValueError("qat needs qat_images: the training images to fine-tune on")
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.perf_counter()

    # 0. quantization-aware fine-tuning (optional): the fine-tuned model is
    # the reference from here on.
    float_model, qat_report = model, None
    if qat is not None:
        from export.qat import quantization_aware_fine_tune

        tuned = quantization_aware_fine_tune(model, qat_images, calib, qat)
        model, qat_report = tuned.model, tuned.report
        model.save(os.path.join(output_dir, "model_qat.keras"))

    # 1. fold
    if threshold_in_bias:
        folded, fold_report = _fold(model)
    else:
        folded, fold_report = fold_batchnorm_with_report(model, threshold_in_bias=False)
    spiking = "skipped" not in fold_report
    if spiking:
        folded.save(os.path.join(output_dir, "model_folded.keras"))

    # 2. verify the fold
    if spiking:
        check = verify_fold(model, folded, x)
        ref_logits, fold_logits = check.pop("logits_original"), check.pop("logits_folded")
    else:
        ref_logits = model_logits(model, x)
        check, fold_logits = {}, ref_logits
    ref_pred = ref_logits.argmax(1)
    float_report = float_pred = None
    if qat_report is not None:
        float_pred = model_logits(float_model, x).argmax(1)
        float_report = {"accuracy": float(np.mean(float_pred == y))}
        qat_report.update(file="model_qat.keras", accuracy=float(np.mean(ref_pred == y)),
                          float_accuracy=float_report["accuracy"],
                          agreement_with_float=float(np.mean(ref_pred == float_pred)))
    report = {
        "model": model_path or (extra or {}).get("model_path") or model.name,
        "output_dir": output_dir,
        "spiking": spiking,
        "neuron": neuron if spiking else None,
        "num_verification": int(len(x)),
        "num_calibration": int(len(calib)),
        "calibration_source": calib_source,
        "threshold_in_bias": bool(threshold_in_bias),
        "merge_shortcuts": bool(merge_shortcuts),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "litert_threads": 1},
        "keras": {"model": "qat" if qat_report is not None else "trained",
                  "accuracy": float(np.mean(ref_pred == y)),
                  "params": int(model.count_params()),
                  "batchnorm_layers": sum(1 for l in model.layers if type(l).__name__ == "BatchNormalization")},
        "fold": {**fold_report, **check, "accuracy": float(np.mean(fold_logits.argmax(1) == y)),
                 **({"file": "model_folded.keras"} if spiking else {})},
        "formats": {},
    }
    if qat_report is not None:
        report["float"] = float_report
        report["qat"] = qat_report
    if extra:
        report["run"] = dict(extra)

    def representative():
        for sl in batches(len(calib), 50):
            yield [calib[sl]]

    conversions = {}
    for fmt in formats:
        # 3. convert
        conv = convert(folded, fmt, representative if fmt != "float32" else None, neuron=neuron,
                       merge_shortcuts=merge_shortcuts)
        conversions[fmt] = conv
        fname = f"model_{fmt}.tflite"
        with open(os.path.join(output_dir, fname), "wb") as f:
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
        entry.update(_run_format(conv, x, y, ref_pred, ref_logits, max_tflm_examples, float_pred))
        entry["accuracy_drop_pp_vs_keras"] = 100.0 * (report["keras"]["accuracy"] - entry["litert"]["accuracy"])
        if float_report is not None:
            entry["accuracy_drop_pp_vs_float"] = 100.0 * (float_report["accuracy"] - entry["litert"]["accuracy"])
        if spiking and spike_checks:
            entry["spikes"] = verify_spikes(conv, folded, x, max_tflm_examples=max_tflm_examples)
        if fmt == "int8" and c_array:
            arena = entry["tflm"]["arena_bytes"]
            write_c_array(conv.flatbuffer, os.path.join(output_dir, "model_int8.cc"),
                          os.path.join(output_dir, "model_int8.h"), "g_s2nn_model_int8", arena)
            entry["c_source"] = {"source": "model_int8.cc", "header": "model_int8.h",
                                 "array": "g_s2nn_model_int8", "arena_constant": "g_s2nn_model_int8_arena_size"}
        for rep in reporters:
            if fmt in rep.formats:
                entry[rep.name] = rep.run(fmt, conv)
        report["formats"][fmt] = entry

    # 5. report
    report["seconds"] = time.perf_counter() - t0
    with open(os.path.join(output_dir, "export_report.json"), "w") as f:
        json.dump(_json_safe(report), f, indent=2)
    if verbose:
        print(format_summary(report, reporters))
    return ExportResult(report, output_dir, folded, conversions)


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


def format_summary(report: Dict, reporters: Sequence[FormatReporter] = ()) -> str:
    """A short human-readable summary of an export report."""
    lines = [
        f"export: {report['model']} -> {report['output_dir']}",
        f"  verification images: {report['num_verification']}, calibration: "
        f"{report['num_calibration']} ({report['calibration_source']})",
    ]
    fold = report["fold"]
    if report.get("qat"):
        q = report["qat"]
        lines.append(
            f"  qat: {q['steps']} steps x {q['batch_size']} images ({q['epochs']:.3g} epochs of {q['train_examples']}) "
            f"in {q['seconds']:.1f} s (+{q['teacher_seconds']:.1f} s teacher); on the calibration images "
            f"KL(float || quantization-aware) {q['calibration_match']['before']['kl']:.4f} -> "
            f"{q['calibration_match']['after']['kl']:.4f}, same top-1 "
            f"{100 * q['calibration_match']['before']['agreement']:.1f}% -> "
            f"{100 * q['calibration_match']['after']['agreement']:.1f}%; {q['quantized_tensors']} int8 grids")
        lines.append(
            f"  trained float model {100 * q['float_accuracy']:.2f}% -> quantization-aware model "
            f"{100 * q['accuracy']:.2f}% ({100 * (q['accuracy'] - q['float_accuracy']):+.2f} pt, same top-1 on "
            f"{100 * q['agreement_with_float']:.2f}%); the checks below are against the quantization-aware model")
    if report.get("spiking", True):
        lines += [
            f"  keras accuracy {100 * report['keras']['accuracy']:.2f}%, "
            f"{report['keras']['batchnorm_layers']} BN layers folded; neuron formulation: {report.get('neuron')}",
            f"  fold: predictions equal on {100 * fold['prediction_agreement']:.2f}% of images, "
            f"max |logit diff| {fold['max_logit_abs_diff']:.3g}, spike mismatches "
            f"{fold['total_spike_mismatches']} (float ties only)",
        ]
    else:
        lines.append(f"  keras accuracy {100 * report['keras']['accuracy']:.2f}%, no spiking neurons: "
                     f"{report['keras']['batchnorm_layers']} BN layers left to the converter")
    lines.append("  format    size[KiB]  LiteRT acc  agree   TFLM acc  agree   arena[KiB]  LiteRT ms  TFLM ms  edge ops")
    for fmt, e in report["formats"].items():
        lt, mc = e["litert"], e["tflm"]
        edge = "yes" if e["edge_only"] else "no: " + ",".join(e["non_edge_ops"] or sorted(e["inner_quantize_ops"]))
        lines.append(
            f"  {fmt:<8} {e['size_bytes'] / 1024:>9.1f}  {100 * lt['accuracy']:>9.2f}% {100 * lt['agreement_with_keras']:>6.2f}%"
            f"  {100 * mc['accuracy']:>8.2f}% {100 * mc['agreement_with_keras']:>6.2f}%  {mc['arena_bytes'] / 1024:>10.1f}"
            f"  {lt['latency_ms_per_image']:>9.3f}  {mc['latency_ms_per_image']:>7.2f}  {edge}")
    tflm_n = {e["tflm"]["num_examples"] for e in report["formats"].values()}
    if tflm_n and tflm_n != {report["num_verification"]}:
        lines.append(f"  (TFLM figures over the first {sorted(tflm_n)[0]} images)")
    spikes = {fmt: e["spikes"] for fmt, e in report["formats"].items() if "spikes" in e}
    if spikes:
        lines.append("  spikes    two-level  neurons equal  spike diffs  vs folded float: end-to-end   local  "
                     "  local misses (<=1 step)  max |u-theta| [steps]")
        for fmt, s in spikes.items():
            diffs = sum(p["spike_differences"] for p in s["runtime_agreement"].values())
            lines.append(
                f"  {fmt:<8} {'yes' if s['two_level'] else 'NO':>9}  {'yes' if s['neurons_equal_given_equal_inputs'] else 'NO':>13}"
                f"  {diffs:>11d}  {100 * s['end_to_end_agreement']:>25.3f}%  {100 * s['local_agreement']:.3f}%"
                f"  {s['local_mismatches']:>10d} ({s['local_mismatches_within_one_step']})"
                f"  {s['local_max_distance_steps']:>10.2f}")
        lines.append("  (neurons equal: XNNPACK, builtin kernels and TFLM give the same spikes wherever a neuron's "
                     "input is the same -- in float32 up to rounding ties at the threshold; spike diffs: all "
                     "differences between them, from other ops' rounding)")
    for rep in reporters:
        if rep.summary is None:
            continue
        for fmt, e in report["formats"].items():
            if rep.name in e:
                lines.append(rep.summary(fmt, e[rep.name]))
    return "\n".join(lines)
