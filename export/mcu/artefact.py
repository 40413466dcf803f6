"""One artefact: the microcontroller C is generated from the exact int8
``.tflite`` an export verified, with its neuron plan.

``python -m export`` writes ``model_int8.tflite`` and, in
``export_report.json`` under ``formats.int8``, the file's ``sha256`` and
its spike tensors with their two int8 codes (:func:`artefact_figures`:
``spike_codes``, ``{neuron: {"tensor": index, "codes": [off, on]}}``, read
from the conversion's neuron plan, not guessed from the graph). Both command
lines then generate C from those bytes (:func:`load_verified`): ``python -m
export --mcu`` from the files it has just published, ``python -m
export.mcu --export_dir DIR`` from an earlier export, ``--tflite FILE``
from any ``.tflite`` (with the spike tensors when an ``export_report.json``
beside it describes that very file, by its ``sha256``; dense layouts
otherwise). A report whose ``sha256`` is not the file's is refused: it
describes another model.

Example::

    from export import mcu
    from export.mcu.artefact import load_verified
    model = load_verified("runs/qs/export")            # model_int8.tflite + export_report.json
    model.codes, model.checks_passed                     # {tensor: (off, on)}, True
    mcu.run_mcu(model, x_test, mcu.McuConfig(cores=("cortex-m4",)))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from export.errors import InputError

__all__ = ["EXPORT_TFLITE", "EXPORT_REPORT", "VerifiedTflite", "VerifiedTfliteError", "sha256", "spike_code_table",
           "artefact_figures", "load_verified", "codes_of"]

EXPORT_TFLITE = "model_int8.tflite"
EXPORT_REPORT = "export_report.json"


class VerifiedTfliteError(InputError, ValueError):
    """An export folder or ``.tflite`` that cannot be the C's source (missing,
    or its report describes another file)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def spike_code_table(conversion, model=None) -> Dict[str, Dict]:
    """``{neuron name: {"tensor": index, "codes": [off, on]}}`` of the int8
    spike tensors of an :class:`export.tflite.convert.Conversion` (saturate
    neuron: the levels of its plan, as int8 codes; other formulations have
    none the generator can use). ``model``: the flatbuffer already parsed."""
    from export.tflite.convert import level_codes
    from export.tflite.flatbuffer import read_model

    if conversion is None or getattr(conversion, "plan", None) is None or not conversion.spike_tensors:
        return {}
    graph = (read_model(conversion.flatbuffer) if model is None else model).main
    out = {}
    for name, t in conversion.spike_tensors.items():
        tensor = graph.tensors[t]
        neuron = conversion.plan.neurons.get(name)
        if tensor.quantization is None or neuron is None or tensor.dtype != np.int8:
            continue
        out[name] = {"tensor": int(t),
                     "codes": [int(c) for c in level_codes(tensor.quantization, tensor.dtype, neuron.levels)]}
    return out


def codes_of(table: Dict[str, Dict]) -> Dict[int, Tuple[int, int]]:
    """``{tensor index: (off code, on code)}`` of a :func:`spike_code_table`."""
    return {int(e["tensor"]): (int(e["codes"][0]), int(e["codes"][1])) for e in table.values()}


def artefact_figures(conversion) -> Dict:
    """What ``export_report.json`` records of a format's file for the
    microcontroller C: its ``sha256`` and (int8) its ``spike_codes``."""
    out = {"sha256": sha256(conversion.flatbuffer)}
    if getattr(conversion, "quantization", None) == "int8":
        out["spike_codes"] = spike_code_table(conversion)
    return out


@dataclasses.dataclass
class VerifiedTflite:
    """An int8 ``.tflite`` read for :func:`export.mcu.run.run_mcu`.

    Attributes:
      flatbuffer: the file's bytes.
      codes: ``{tensor index: (off code, on code)}`` of its spike tensors
        (empty: dense layouts only).
      path: the file.
      name: the model's name in the generated files' headers.
      sha256: of ``flatbuffer``.
      report: the ``export_report.json`` that describes it, or ``None``.
      checks_passed: that export's checks (``None``: no report).
      checks_failed: the export's failure line when they failed.
      spike_source: where ``codes`` come from, in words.
    """

    flatbuffer: bytes
    codes: Dict[int, Tuple[int, int]]
    path: str
    name: str
    sha256: str
    report: Optional[str] = None
    checks_passed: Optional[bool] = None
    checks_failed: Optional[str] = None
    spike_source: str = ""

    def source(self) -> Dict:
        """The run report's ``source`` entry."""
        return {"tflite": self.path, "sha256": self.sha256, "export_report": self.report,
                "export_checks_passed": self.checks_passed, "export_checks_failed": self.checks_failed,
                "spike_tensors": self.spike_source}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise VerifiedTfliteError(f"cannot read {path!r}: {err}") from None


def _format_entry(report: Dict, basename: str):
    for entry in (report.get("formats") or {}).values():
        if isinstance(entry, dict) and entry.get("file") == basename:
            return entry
    return None


def load_verified(path: str) -> VerifiedTflite:
    """The int8 ``.tflite`` at ``path`` (a file), or the ``model_int8.tflite``
    of the export folder ``path``, with the spike tensors and checks of the
    ``export_report.json`` beside it when that report describes this very
    file (same ``sha256``).

    Raises:
      VerifiedTfliteError: no such file; an export folder without its
        report, or whose report has no ``sha256`` / ``spike_codes`` (an
        export older than this) or names another file's ``sha256``.
    """
    folder = os.path.isdir(path)
    tflite = os.path.join(path, EXPORT_TFLITE) if folder else path
    if not os.path.isfile(tflite):
        raise VerifiedTfliteError(f"{tflite!r} does not exist" + (
            " (an export folder of python -m export with the int8 format)" if folder else ""))
    with open(tflite, "rb") as f:
        flat = f.read()
    digest = sha256(flat)
    base = os.path.basename(tflite)
    name = os.path.splitext(base)[0]
    report_path = os.path.join(os.path.dirname(os.path.abspath(tflite)), EXPORT_REPORT)
    if not os.path.isfile(report_path):
        if folder:
            raise VerifiedTfliteError(f"{path!r} has no {EXPORT_REPORT}: not an export folder of python -m export")
        return VerifiedTflite(flat, {}, tflite, name, digest,
                              spike_source=f"none: no {EXPORT_REPORT} beside the file (dense layouts only)")
    report = _read_json(report_path)
    entry = _format_entry(report, base)
    stale = entry is None or "sha256" not in entry or "spike_codes" not in entry
    if stale or entry["sha256"] != digest:
        why = (f"does not describe {base}" if entry is None else
               "predates the spike tensors' record (re-export with python -m export)" if stale else
               f"describes another {base} (sha256 {entry['sha256'][:12]}..., the file's {digest[:12]}...)")
        if folder or not stale:
            raise VerifiedTfliteError(f"{report_path!r} {why}")
        return VerifiedTflite(flat, {}, tflite, name, digest,
                              spike_source=f"none: {EXPORT_REPORT} beside the file {why} (dense layouts only)")
    checks = report.get("checks") or {}
    failed = None
    if checks and not checks.get("passed", False):
        from export.checks import failure_line

        failed = failure_line(checks)
    model = report.get("model")
    if isinstance(model, str) and model:
        name = os.path.splitext(os.path.basename(model))[0] or name
    return VerifiedTflite(flat, codes_of(entry["spike_codes"]), tflite, name, digest, report_path,
                          bool(checks.get("passed")) if checks else None, failed,
                          f"{len(entry['spike_codes'])} from {EXPORT_REPORT} (the export's neuron plan)")
