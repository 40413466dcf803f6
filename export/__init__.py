"""Deployment export for S2NN Keras models: BatchNorm folding into firing
thresholds (paper §4.3, Eq. 27) and verified TFLite models for LiteRT and
TensorFlow Lite Micro.

    from export import fold_batchnorm, to_tflite, export_run, ExportConfig, QATConfig

    folded = fold_batchnorm(model)                      # no BN left
    tflite_bytes = to_tflite(folded, "int8", representative_data)       # edge ops only
    ablation = to_tflite(folded, "int8", representative_data, neuron="compare")
    relu_bytes = to_tflite(relu_model, "int8", representative_data)     # same settings
    conv = convert(folded, "int8", representative_data)  # bytes + how: plan, spike tensors
    result = export_run("run/model.keras", ExportConfig("run/export", images, labels))
    result.report["checks"]["passed"], result.report["formats"]["int8"]["spikes"]["two_level"]
    # quantization-aware fine-tuning first: the int8 model then matches Keras
    result = export_run(model, ExportConfig("run/export", images, labels, calibration_images=train_images[-500:],
                                            qat=QATConfig(epochs=0.1), qat_images=train_images))
    model = load_model("run/export/model_qat.keras")     # any .keras file the export writes

CLI: ``python -m export --model RUN/model.keras --output_dir RUN/export``.
See docs/EXPORT.md. Importing this package is cheap: the TensorFlow-heavy
modules load on first use of a name below. Importing it also registers the
export's Keras layers (:mod:`export.transform.layers`), so ``keras.saving.load_model``
loads ``model_folded.keras`` and ``model_qat.keras`` -- at once when Keras is
already imported, else when it is.
"""

from export.lazy import lazy_attributes
from export.loader import register_when_keras_loads

register_when_keras_loads()

__all__ = ["fold_batchnorm", "fold_batchnorm_with_report", "FoldError", "ThresholdNeuron",
           "to_tflite", "convert", "Conversion", "edge_model", "EdgeError", "export_run", "ExportConfig",
           "ExportConfigError", "ExportResult", "ExportCheckError", "FormatReporter", "CheckResult", "load_model",
           "ModelFileError", "replace_neurons", "QATConfig", "quantization_aware_fine_tune"]

_LAZY = {
    "fold_batchnorm": "export.transform.fold",
    "fold_batchnorm_with_report": "export.transform.fold",
    "FoldError": "export.transform.fold",
    "ThresholdNeuron": "export.transform.neurons",
    "to_tflite": "export.tflite.convert",
    "convert": "export.tflite.convert",
    "Conversion": "export.tflite.convert",
    "replace_neurons": "export.tflite.convert",
    "edge_model": "export.transform.edge",
    "EdgeError": "export.transform.edge",
    "export_run": "export.pipeline",
    "ExportConfig": "export.config",
    "ExportConfigError": "export.config",
    "ExportResult": "export.pipeline",
    "FormatReporter": "export.report",
    "ExportCheckError": "export.checks",
    "CheckResult": "export.checks",
    "load_model": "export.loader",
    "ModelFileError": "export.loader",
    "QATConfig": "export.transform.qat",
    "quantization_aware_fine_tune": "export.transform.qat",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
