"""Reports written at the end of a run (on the chief only).

* ``firing_rates`` -- R(l) of every neuron layer over the whole test set
  (Eq. B.2);
* ``--export`` -- ``output_dir/export`` through :func:`export.export_run`
  (BN-folded model -- a ReLU model is not folded --, TFLite models, C array,
  ``export_report.json``),
  verified on the first ``--export_max_examples`` test images. Needs
  TensorFlow and the tensorflow Keras backend; otherwise the run prints the
  one command that exports ``final.keras`` where they are;
* always -- the Appendix B energy report in ``output_dir/energy`` over the
  whole test set (with ``--export``: over the verification images, with the
  exported float32/int8 TFLite models beside the Keras model).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Dict

from trainers import backend as backend_lib


def export_command(output_dir: str, flags: Dict) -> str:
    """The command that exports a finished run on a machine with TensorFlow."""
    args = ["python", "-m", "export", "--model", os.path.join(output_dir, "final.keras"),
            "--output_dir", os.path.join(output_dir, "export"), "--dataset", flags["dataset"]]
    if flags.get("data_dir"):
        args += ["--data_dir", flags["data_dir"]]
    if flags.get("export_formats"):
        args += ["--formats", ",".join(flags["export_formats"])]
    if flags.get("export_max_examples"):
        args += ["--max_test_examples", str(flags["export_max_examples"])]
    if flags.get("export_tflm_examples"):
        args += ["--max_tflm_examples", str(flags["export_tflm_examples"])]
    return " ".join(shlex.quote(a) for a in args)


def _energy_writer():
    """``write_energy_report``: export's TF-free writer over the library's
    accounting (:mod:`export.energy.report`), else the TensorFlow-era
    ``export.energy`` one, else None."""
    try:
        from export.energy.report import write_energy_report
    except ImportError:
        if not backend_lib.tensorflow_installed():
            return None
        from export.energy import write_energy_report
    return write_energy_report


def _fold_agreement(fold: Dict):
    """Top-1 agreement of the folded model with the trained one, or None
    where nothing was folded.

    The export's ``report["fold"]`` (:func:`export.export_run`): for a
    spiking model :func:`export.tflite.verify.verify_fold`'s figures
    (``prediction_agreement``) and the export's ``agreement``; for a ReLU
    model, which is not folded, only ``skipped`` (why) and ``accuracy``.
    """
    if "skipped" in fold:
        return None
    return fold.get("prediction_agreement", fold.get("agreement"))


def _summarise_export(report: Dict, export_dir: str) -> Dict:
    fold = report.get("fold") or {}
    summary = {
        "dir": export_dir,
        "num_verification": report["num_verification"],
        "spiking": bool(report.get("spiking", "skipped" not in fold)),
        "fold_prediction_agreement": _fold_agreement(fold),
        "formats": {fmt: {"size_bytes": e["size_bytes"], "accuracy": e["litert"]["accuracy"],
                          "agreement_with_keras": e["litert"]["agreement_with_keras"],
                          "tflm_arena_bytes": e["tflm"]["arena_bytes"]}
                    for fmt, e in report["formats"].items()},
    }
    if "skipped" in fold:
        summary["fold_skipped"] = fold["skipped"]
    return summary


def post_training_reports(network, flags: Dict, data: Dict, output_dir: str, metrics: Dict) -> None:
    """Adds ``firing_rates``, ``export`` and ``energy`` to ``metrics``.

    ``data``: ``train_images``/``test_images``/``test_labels`` (uint8 /
    int64 arrays) and ``test_float`` (the test split for the network, as
    :class:`trainers.inputs.RunInputs` has it).
    """
    import keras
    import numpy as np

    from s2nn_keras.firing import firing_rates

    metrics["firing_rates"] = dict(firing_rates(network, data["test_float"]))
    energy_data, tflite_models, folded = data["test_float"], None, None
    backend = backend_lib.keras_backend()
    if flags["export"] and (backend != "tensorflow" or not backend_lib.tensorflow_installed()):
        # The TFLite converter needs TensorFlow and a model built on the
        # tensorflow backend; final.keras loads there from any backend.
        command = export_command(output_dir, flags)
        reason = ("TensorFlow is not installed" if not backend_lib.tensorflow_installed()
                  else f"the export runs on the tensorflow Keras backend (this run: {backend})")
        metrics["export"] = {"skipped": reason, "command": command}
        where = ("on a machine with TensorFlow" if not backend_lib.tensorflow_installed()
                 else "with the tensorflow backend")
        print(f"export skipped: {reason}; {where} run:\n  KERAS_BACKEND=tensorflow " + command, flush=True)
    elif flags["export"]:
        import export

        n = flags["export_max_examples"] or len(data["test_images"])
        images, labels = data["test_images"][:n], data["test_labels"][:n]
        export_dir = os.path.join(output_dir, "export")
        energy_data = images.astype(np.float32) / 255.0
        try:
            result = export.export_run(network, export.ExportConfig(
                export_dir, images, labels, formats=tuple(flags["export_formats"]),
                calibration_images=data["train_images"][-500:],
                max_tflm_examples=flags["export_tflm_examples"] or None,
                extra={"model_path": os.path.join(output_dir, "final.keras")}))
        except export.ExportCheckError as err:
            # The trained model stays; the failed export leaves no files.
            # train() ends the run with exit status 3 after metrics.json.
            report = err.result.report if err.result is not None else {}
            metrics["export"] = {"failed_checks": report.get("checks", {}).get("failed", []), "message": str(err),
                                 "command": export_command(output_dir, flags)}
        else:
            report = getattr(result, "report", result)  # export.ExportResult, or the report dict itself
            metrics["export"] = _summarise_export(report, export_dir)
            tflite_models = {fmt: os.path.join(export_dir, report["formats"][fmt]["file"])
                             for fmt in ("float32", "int8") if fmt in report["formats"]}
            folded = getattr(result, "folded", None)
            if folded is None:  # a ReLU model is not folded: no model_folded.keras
                folded_path = os.path.join(export_dir, "model_folded.keras")
                folded = keras.saving.load_model(folded_path) if os.path.isfile(folded_path) else network
    writer = _energy_writer()
    if writer is None:
        print("energy report skipped: export.energy.report is not available", file=sys.stderr, flush=True)
        return
    kwargs = {}
    if tflite_models:
        kwargs.update(tflite_models=tflite_models, folded_model=folded)
    energy = writer(network, energy_data, os.path.join(output_dir, "energy"),
                    convention=flags["energy_convention"], preset=flags["energy_preset"], **kwargs)
    metrics["energy"] = {k: energy[k] for k in ("convention", "preset", "total_flops", "e_full_pj",
                                                "e_method_pj", "efficiency")}
