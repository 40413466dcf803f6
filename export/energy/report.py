"""Writing energy reports: text table, JSON, CSV and the Fig. B.5-style PNG.

:func:`write_energy_report` computes the Keras report
(:func:`s2nn_keras.energy.energy_report`), optionally the reports of
exported TFLite models beside it (:func:`export.energy.tflite.tflite_energy_report`)
with their per-layer rate differences, and writes ``energy_report.json``,
``energy_layers.csv`` and, when matplotlib is installed,
``energy_report.png`` (otherwise the report's ``notes`` say the plot was
skipped and why).

Example::

    from export.energy.report import write_energy_report

    write_energy_report(model, x_test, "run/energy",
                        tflite_models={"int8": "export/model_int8.tflite"})
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import sys
from typing import Dict, Optional

import numpy as np

from s2nn_keras.energy import energy_report
from s2nn_keras.firing import DEFAULT_BATCH_SIZE, iter_batches

__all__ = ["CSV_FIELDS", "format_table", "write_csv", "write_json", "write_plot", "write_files", "reiterable",
           "write_energy_report"]

CSV_FIELDS = ["name", "type", "flops", "input_kind", "input_source", "firing_rate", "op", "charged_rate",
              "energy_full_pj", "energy_pj", "energy_share"]


def _fmt_rate(r):
    return "-" if r is None else f"{r:.4f}"


def format_table(report: dict) -> str:
    """The report as a fixed-width text table (header, one line per
    Conv/Dense, totals, notes)."""
    head = ["layer", "type", "FLOPs", "input", "R(l)", "op", "E [pJ]", "share"]
    body = [[r["name"], r["type"], f"{r['flops']:,}", r["input_kind"], _fmt_rate(r["firing_rate"]), r["op"],
             f"{r['energy_pj']:.4g}", f"{100 * r['energy_share']:.1f}%"] for r in report["layers"]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i in (0, 1, 3, 5) else "{:>%d}" % w for i, w in enumerate(widths))
    lines = [f"energy report ({report['source']}, {report['model']}, {report['num_examples']} examples)",
             f"convention: {report['convention_description']}",
             f"energies: E_MAC = {report['e_mac_pj']:g} pJ, E_AC = {report['e_ac_pj']:g} pJ [{report['preset']}]",
             fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines.extend(fmt.format(*b) for b in body)
    eff = report["efficiency"]
    lines.append(f"total FLOPs = {report['total_flops']:,}; E_Full = {report['e_full_pj']:.6g} pJ (B.3); "
                 f"E_Method = {report['e_method_pj']:.6g} pJ (B.4); E_Full/E_Method = "
                 + ("undefined" if eff is None else f"{eff:.2f}"))
    lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_csv(report: dict, path: str) -> str:
    """One row per Conv/Dense (``CSV_FIELDS``); empty cells for ``None``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in report["layers"]:
            w.writerow(["" if r.get(k) is None else r[k] for k in CSV_FIELDS])
    return path


def write_json(report: dict, path: str) -> str:
    """The report as JSON (non-finite floats as ``null``)."""
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2)
    return path


def write_plot(report: dict, path: str) -> Optional[str]:
    """The Fig. B.5-style PNG (:func:`export.energy.plot.plot_report`);
    ``None`` and a note in ``report["notes"]`` when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        report["notes"].append("energy_report.png not written: matplotlib is not installed "
                               "(pip install 's2nn_keras[plot]')")
        return None
    from export.energy.plot import plot_report

    return plot_report(report, path)


def write_files(report: dict, output_dir: str, *, plot: bool = True) -> Dict[str, Optional[str]]:
    """Writes ``energy_report.json``, ``energy_layers.csv`` and (``plot``)
    ``energy_report.png`` into ``output_dir``; returns their paths (``None``
    for a plot that was skipped). The JSON is written last, so it holds the
    plot note."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"csv": write_csv(report, os.path.join(output_dir, "energy_layers.csv")), "png": None}
    if plot:
        paths["png"] = write_plot(report, os.path.join(output_dir, "energy_report.png"))
    paths["json"] = write_json(report, os.path.join(output_dir, "energy_report.json"))
    return paths


def reiterable(data, batch_size: int = DEFAULT_BATCH_SIZE):
    """``data`` in a form that can be read more than once: arrays,
    ``PyDataset`` and ``tf.data.Dataset`` as they are, any other iterable
    (a generator would be exhausted by the first pass) as a list of NumPy
    input batches."""
    import keras

    if hasattr(data, "shape") and hasattr(data, "ndim") or isinstance(data, keras.utils.PyDataset):
        return data
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(data, tf.data.Dataset):
        return data
    return [np.asarray(x) for x in iter_batches(data, batch_size)]


def write_energy_report(model, data, output_dir, convention="default", preset="45nm_fp32", *,
                        e_mac_pj=None, e_ac_pj=None, tflite_models=None, folded_model=None,
                        batch_size=DEFAULT_BATCH_SIZE, print_table=True, plot=True) -> dict:
    """Computes :func:`s2nn_keras.energy.energy_report` and writes it to ``output_dir``.

    Files: ``energy_report.json`` (the report; with ``tflite_models`` also a
    ``tflite`` section holding each TFLite report and its per-layer rate
    difference from the Keras report), ``energy_layers.csv`` (one row per
    Conv/Dense), ``energy_report.png`` (R(l) per layer and each layer's
    share of E_Method; skipped with a note without matplotlib). Prints the
    table unless ``print_table=False``.

    Args:
      tflite_models: optional ``{label: bytes or path}`` of exported TFLite
        models to report beside the Keras model (e.g. float32 and int8).
      folded_model: optional BN-folded Keras model the TFLite files were
        converted from; each TFLite section then also holds
        ``rate_difference_vs_folded_keras``. Folding moves the threshold
        comparison (Eq. 27), which can flip the rare neuron whose potential
        sits within float32 rounding of u_th.

    Returns:
      The report dict (as written to the JSON file).
    """
    from export.energy.tflite import compare_rates, tflite_energy_report
    from export.tflite.quiet import retracing_warnings_silenced

    data = reiterable(data, batch_size)
    with retracing_warnings_silenced():
        report = energy_report(model, data, convention, preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                               batch_size=batch_size)
        folded_report = None
        if tflite_models and folded_model is not None:
            folded_report = energy_report(folded_model, data, convention, preset, e_mac_pj=e_mac_pj,
                                          e_ac_pj=e_ac_pj, batch_size=batch_size)
    if tflite_models:
        section = collections.OrderedDict()
        for label, content in tflite_models.items():
            rep = tflite_energy_report(content, data, convention, preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                                       keras_model=model)
            rep["rate_difference_vs_keras"] = compare_rates(report, rep)
            if folded_report is not None:
                rep["rate_difference_vs_folded_keras"] = compare_rates(folded_report, rep)
            section[label] = rep
        report["tflite"] = section
    write_files(report, output_dir, plot=plot)
    if print_table:
        print(format_table(report))
        for label, rep in (report.get("tflite") or {}).items():
            diff = rep["rate_difference_vs_keras"]["max_abs_diff"]
            eff = rep["efficiency"]
            line = (f"tflite {label} ({rep['quantization']}): E_Full/E_Method = "
                    + ("undefined" if eff is None else f"{eff:.2f}")
                    + f", max |R_keras - R_tflite| = {diff:.3g}")
            if "rate_difference_vs_folded_keras" in rep:
                line += f" (vs the folded Keras model: {rep['rate_difference_vs_folded_keras']['max_abs_diff']:.3g})"
            print(line)
    return report
