"""Deployment export for S2NN Keras models: BatchNorm folding into firing
thresholds (paper §4.3, Eq. 27) and verified TFLite models for LiteRT and
TensorFlow Lite Micro.

    from export import fold_batchnorm, to_tflite, export_run

    folded = fold_batchnorm(model)                      # no BN left
    tflite_bytes = to_tflite(folded, "int8", representative_data)
    report = export_run("run/model.keras", "run/export", images, labels)

CLI: ``python -m export --model RUN/model.keras --output_dir RUN/export``.
See docs/EXPORT.md. Importing this package is cheap: the TensorFlow-heavy
modules load on first use of a name below.
"""

__all__ = ["fold_batchnorm", "fold_batchnorm_with_report", "FoldError", "ThresholdNeuron",
           "to_tflite", "export_run", "load_model"]

_LAZY = {
    "fold_batchnorm": "export.fold",
    "fold_batchnorm_with_report": "export.fold",
    "FoldError": "export.fold",
    "ThresholdNeuron": "export.neurons",
    "to_tflite": "export.tflite",
    "export_run": "export.pipeline",
    "load_model": "export.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
