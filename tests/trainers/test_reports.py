"""End-of-run reports: the ``--export`` summary in ``metrics.json`` reads the
export report as :func:`export.export_run` really writes it, for a spiking
model (folded) and for its ReLU twin (not folded)."""

import json

import numpy as np
import pytest

from tests.trainers.helpers import TINY, write_fake_fashion_mnist
from trainers import cifar, recipe, reports
from trainers import flags as tf_flags


def _config(out, *args):
    return tf_flags.parse_or_exit(["trainers.cifar"] + TINY + list(args) + [f"--output_dir={out}"],
                                  tf_flags.new_flag_values())


@pytest.mark.parametrize("activation", ["relu", "s2nn"])
def test_export_summary_reads_the_real_fold_report(activation, tmp_path):
    """A real (tiny, float32-only) export: a ReLU model's fold report says
    ``skipped`` and has no agreement; a spiking model's has it."""
    pytest.importorskip("tensorflow")
    from trainers import backend as backend_lib

    if backend_lib.keras_backend() != "tensorflow":
        pytest.skip("the export needs the tensorflow Keras backend")
    import export

    config = _config(tmp_path / "run", "--dataset=fashion_mnist", f"--activation={activation}")
    network = recipe.build_model(config, (28, 28, 1), 10)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 28, 28, 1)).astype(np.uint8), rng.integers(0, 10, 8)
    export_dir = str(tmp_path / "export")
    result = export.export_run(network, export.ExportConfig(
        export_dir, images, labels, formats=("float32",), calibration_images=images, max_tflm_examples=4,
        allow_failed_checks=True, verbose=False))
    summary = reports._summarise_export(result.report, export_dir)
    assert summary["num_verification"] == 8 and set(summary["formats"]) == {"float32"}
    assert summary["formats"]["float32"]["agreement_with_keras"] == 1.0
    if activation == "relu":
        assert summary["spiking"] is False and summary["fold_prediction_agreement"] is None
        assert "no spiking neurons" in summary["fold_skipped"]
    else:
        assert summary["spiking"] is True and "fold_skipped" not in summary
        assert summary["fold_prediction_agreement"] == result.report["fold"]["prediction_agreement"] == 1.0
    json.dumps(summary)  # goes into metrics.json as it is


def test_relu_run_with_export_writes_metrics(tmp_path):
    """The ReLU twin of a spiking run: trains, exports, writes metrics.json.
    float32 only: one epoch on random images leaves near-constant logits,
    whose int8 output correlation sits at the export check's bound (it failed
    one fresh-clone run at 0.47 < 0.5); the ReLU report path is the same."""
    pytest.importorskip("tensorflow")
    from trainers import backend as backend_lib

    if backend_lib.keras_backend() != "tensorflow":
        pytest.skip("the export needs the tensorflow Keras backend")
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=96, n_test=48)
    out = tmp_path / "run"
    cifar.train(_config(out, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                        "--activation=relu", "--export", "--export_formats=float32",
                        "--export_max_examples=20", "--export_tflm_examples=5"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["export"]["spiking"] is False and metrics["export"]["fold_prediction_agreement"] is None
    assert set(metrics["export"]["formats"]) == {"float32"}
    assert metrics["energy"]["efficiency"] == pytest.approx(1.0)
    assert (out / "export" / "export_report.json").is_file() and not (out / "export" / "model_folded.keras").exists()
