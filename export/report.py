"""The export report: its extra per-format figures (:class:`FormatReporter`),
the JSON file (:func:`write_report`) and the printed summary
(:func:`format_summary`).

:func:`export.pipeline.export_run` builds the report dict (the figures of
:mod:`export.pipeline`, judged by :func:`export.checks.evaluate`), writes
it as ``export_report.json`` and prints its summary. A
:class:`FormatReporter` adds figures of its own under
``report["formats"][fmt][name]`` -- Ethos-U / Vela
(:func:`export.tflite.vela.reporter`), microcontroller code
(:func:`export.mcu.reporter`) -- with their lines in the summary and their
checks among the export's.

Importing this module loads neither Keras nor TensorFlow.

Example::

    from export.report import FormatReporter, format_summary

    size = FormatReporter(name="size", formats=("int8",), run=lambda fmt, conv: {"kib": len(conv.flatbuffer) / 1024},
                          summary=lambda fmt, figures: f"  {fmt}: {figures['kib']:.1f} KiB")
    print(format_summary(json.load(open("run/export/export_report.json")), reporters=(size,)))
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from export.checks import failure_line

__all__ = ["FormatReporter", "format_summary", "write_report"]


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

    Example::

        FormatReporter(name="size", formats=("int8",), run=lambda fmt, conv: {"bytes": len(conv.flatbuffer)})
    """

    name: str
    formats: Sequence[str]
    run: Callable
    summary: Optional[Callable] = None
    checks: Optional[Callable] = None
    writes_files: bool = False


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


def write_report(report: Dict, path: str) -> None:
    """Writes ``report`` as indented JSON to ``path`` (NumPy arrays and
    scalars as lists and numbers, keys as strings).

    Example::

        write_report(result.report, "run/export/export_report.json")
    """
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2)


def _pct(value, width):
    return f"{'-':>{width + 1}}" if value is None else f"{100 * value:>{width}.2f}%"


def _qat_lines(q) -> List[str]:
    lines = [
        f"  qat: {q['steps']} steps x {q['batch_size']} images ({q['epochs']:.3g} epochs of {q['train_examples']}) "
        f"in {q['seconds']:.1f} s (+{q['teacher_seconds']:.1f} s teacher); on the calibration images "
        f"KL(float || quantization-aware) {q['calibration_match']['before']['kl']:.4f} -> "
        f"{q['calibration_match']['after']['kl']:.4f}, same top-1 "
        f"{100 * q['calibration_match']['before']['agreement']:.1f}% -> "
        f"{100 * q['calibration_match']['after']['agreement']:.1f}%; {q['quantized_tensors']} int8 grids"]
    if q.get("accuracy") is not None:
        lines.append(
            f"  trained float model {100 * q['float_accuracy']:.2f}% -> quantization-aware model "
            f"{100 * q['accuracy']:.2f}% ({100 * (q['accuracy'] - q['float_accuracy']):+.2f} pt, same top-1 on "
            f"{100 * q['agreement_with_float']:.2f}%); the checks below are against the quantization-aware "
            "model")
    return lines


def _keras_lines(report) -> List[str]:
    fold = report["fold"]
    regression = report.get("task") == "regression"
    agree_what = "outputs agree (RMS difference <= 1% of the output range)" if regression else "predictions equal"
    keras_acc = report["keras"]["accuracy"]
    acc_text = "keras accuracy " + ("-" if keras_acc is None else f"{100 * keras_acc:.2f}%")
    if not report.get("spiking", True):
        return [f"  {acc_text}, no spiking neurons: "
                f"{report['keras']['batchnorm_layers']} BN layers left to the converter"]
    return [
        f"  {acc_text}, {report['keras']['batchnorm_layers']} BN layers folded; neuron formulation: "
        f"{report.get('neuron')}",
        f"  fold: {agree_what} on {100 * fold.get('agreement', fold.get('prediction_agreement', 0.0)):.2f}% of "
        f"inputs, max |output diff| {fold['max_logit_abs_diff']:.3g}, spike mismatches "
        f"{fold['total_spike_mismatches']} (float ties only)",
    ]


def _format_lines(report) -> List[str]:
    lines = ["  format    size[KiB]  LiteRT acc  agree   TFLM acc  agree   arena[KiB]  LiteRT ms  TFLM ms  edge ops"]
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
    return lines


def _spike_lines(report) -> List[str]:
    spikes = {fmt: e["spikes"] for fmt, e in report["formats"].items() if "spikes" in e}
    if not spikes:
        return []
    lines = ["  spikes    two-level  neurons equal  spike diffs  vs folded float: end-to-end   local  "
             "  local misses (<=1 step)  max |u-theta| [steps]"]
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
    return lines


def _reporter_lines(report, reporters) -> List[str]:
    lines = []
    for rep in reporters:
        if rep.summary is None:
            continue
        for fmt, e in report["formats"].items():
            if rep.name in e:
                lines.append(rep.summary(fmt, e[rep.name]))
    return lines


def _check_lines(checks) -> List[str]:
    if checks is None:
        return []
    n = len(checks["results"])
    if checks["passed"]:
        return [f"  checks: all {n} passed (bounds: export.checks.BOUNDS)"]
    return [f"  checks: {len(checks['failed'])} of {n} FAILED: {failure_line(checks)}"]


def format_summary(report: Dict, reporters: Sequence[FormatReporter] = ()) -> str:
    """A short human-readable summary of an export report (the dict of
    :func:`export.pipeline.export_run`), with the lines of each reporter's
    ``summary``.

    Example::

        print(format_summary(result.report, config.reporters))
    """
    lines = [
        f"export: {report['model']} -> {report['output_dir']}",
        f"  verification inputs: {report['num_verification']} ({report.get('task', 'classification')}), "
        f"calibration: {report['num_calibration']} ({report['calibration_source']})",
    ]
    if report.get("qat"):
        lines += _qat_lines(report["qat"])
    lines += _keras_lines(report)
    lines += _format_lines(report)
    lines += _spike_lines(report)
    lines += _reporter_lines(report, reporters)
    lines += _check_lines(report.get("checks"))
    return "\n".join(lines)
