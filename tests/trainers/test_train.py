"""End-to-end training runs on tiny data (tfds mock data for CIFAR, fake
IDX files for Fashion-MNIST)."""

import json
import os

import numpy as np
import pytest
from absl import logging as absl_logging

from tests.trainers.helpers import TINY, run_trainer, write_fake_fashion_mnist
from trainers import cifar
from trainers import data as data_lib
from trainers import flags as tf_flags


def _config(tmp_path, *args):
    return tf_flags.parse_or_exit(["trainers.cifar"] + TINY + list(args) + [f"--output_dir={tmp_path}"],
                                  tf_flags.new_flag_values())


def _scalar_tags(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    tags = set()
    for sub in ("train", "validation"):
        path = os.path.join(logdir, sub)
        if os.path.isdir(path):
            acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
            acc.Reload()
            tags |= set(acc.Tags().get("tensors", [])) | set(acc.Tags().get("scalars", []))
    return tags


def test_cifar10_mock_data_end_to_end(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    config = _config(out, "--dataset=cifar10", "--epochs=2", "--randaugment_ops=2",
                     "--max_train_examples=48", "--max_test_examples=24", "--batch_size=16")
    with tfds.testing.mock_data(num_examples=64):
        metrics = cifar.train(config)
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "tta_accuracy", "firing_rates", "wall_time_s", "epochs_completed",
                "flags", "history"):
        assert key in on_disk, key
    assert on_disk["epochs_completed"] == 2 and [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert on_disk["num_train_examples"] == 32 and on_disk["num_test_examples"] == 24  # 16 held out
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0 and 0.0 <= on_disk["tta_accuracy"] <= 1.0
    assert on_disk["flags"]["dataset"] == "cifar10" and on_disk["flags"]["crop_flip"] is None
    assert on_disk["test_accuracy"] == metrics["test_accuracy"]
    # One rate per neuron layer (3 for a one-block, one-stage net), all in [0, 1].
    assert list(on_disk["firing_rates"]) == ["stage1_block1_act1", "stage1_block1_act2", "final_act"]
    assert all(0.0 <= r <= 1.0 for r in on_disk["firing_rates"].values())
    # Learning rate follows the cosine: after epoch 1 of 2 it is lr0 * (1 + cos(pi/2)) / 2.
    lr0 = config["flags"]["learning_rate"]
    np.testing.assert_allclose(on_disk["history"][0]["learning_rate"], lr0 / 2, rtol=1e-5)
    assert on_disk["history"][1]["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    for name in ("final.keras", "best.keras", "state.json"):
        assert (out / name).is_file(), name
    tags = _scalar_tags(str(out / "tensorboard"))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                "epoch_firing_rate/stage1_block1_act1", "epoch_firing_rate/mean"):
        assert tag in tags, (tag, tags)
    # The final model reloads with its custom neuron layers.
    import keras

    model = keras.models.load_model(out / "final.keras")
    assert model.output_shape == (None, 10)
    # The Appendix B energy report is written at the end of every run.
    energy = json.loads((out / "energy" / "energy_report.json").read_text())
    assert energy["num_examples"] == 24 and on_disk["energy"]["efficiency"] == energy["efficiency"]
    assert {p.name for p in (out / "energy").iterdir()} >= {"energy_report.json", "energy_layers.csv",
                                                          "energy_report.png"}


def test_cifar100_mock_relu_adam(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    config = _config(out, "--dataset=cifar100", "--epochs=1", "--activation=relu", "--optimizer=adam",
                     "--learning_rate=0.001", "--max_train_examples=32", "--max_test_examples=16", "--notta")
    with tfds.testing.mock_data(num_examples=32):
        metrics = cifar.train(config)
    assert metrics["tta_accuracy"] is None and metrics["firing_rates"] == {}
    assert metrics["flags"]["optimizer"] == "adam"
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 1


def test_missing_dataset_is_one_line(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    # An empty variant folder makes tfds log a warning while probing; the
    # CLI must still print exactly one line, also once absl's stderr
    # handler is installed (as after any absl.app.run in this process).
    (empty / "cifar10" / "3.0.2").mkdir(parents=True)
    absl_logging.use_absl_handler()
    config = _config(out, "--dataset=cifar10", f"--data_dir={empty}")
    with pytest.raises(SystemExit) as info:
        cifar._main(config)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dataset 'cifar10' not found offline")
    assert "--data_dir" in err[0]
    assert not out.exists()


def test_fashion_mnist_idx_from_data_dir(tmp_path):
    write_fake_fashion_mnist(str(tmp_path), n_train=20, n_test=10)
    x, y = data_lib.load_arrays("fashion_mnist", "train", str(tmp_path))
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.uint8 and y.shape == (20,)
    x, y = data_lib.load_arrays("fashion_mnist", "test", str(tmp_path), max_examples=4)
    assert x.shape == (4, 28, 28, 1)


def test_resume_refuses_other_recipe(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=32, n_test=16)
    out = tmp_path / "run"
    common = ["--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1"]
    cifar.train(_config(out, *common))
    with pytest.raises(tf_flags.UsageError, match="other flags.*--width"):
        cifar.train(_config(out, *common, "--width=5"))
    # Same recipe: already finished, nothing to train, metrics rewritten.
    metrics = cifar.train(_config(out, *common))
    assert metrics["epochs_completed"] == 1


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=64, n_test=32)
    out = tmp_path / "run"
    proc = run_trainer(*TINY, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                       "--strategy=mirrored", "--num_cpu_devices=2", f"--output_dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_replicas"] == 2 and metrics["epochs_completed"] == 1
    assert "test (32 images" in proc.stdout and not (out / ".worker-1").exists()


def test_export_and_energy_flags_come_from_their_packages():
    """No hand-kept mirror: the flag choices are export.formats' and the library's."""
    from export import formats
    from s2nn_keras import energy

    fv = tf_flags.new_flag_values()
    assert tuple(fv["export_formats"].default) == tuple(formats.QUANTIZATIONS)
    assert tf_flags.energy_presets() == tuple(energy.PRESETS)
    assert tf_flags.energy_conventions() == tuple(energy.CONVENTIONS)
    assert fv["energy_preset"].default in energy.PRESETS


@pytest.mark.slow
def test_export_at_the_end_of_a_run(tmp_path):
    """--export: folded model, TFLite files, C array and both reports, in a real process."""
    pytest.importorskip("tensorflow")
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=96, n_test=48)
    out = tmp_path / "run"
    # A low threshold keeps every neuron of the tiny network firing on the
    # calibration images (the int8 export needs both spike levels observed).
    result = run_trainer(*TINY, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                         "--optimizer=adam", "--learning_rate=0.01", "--threshold=0.25", "--export",
                         "--export_formats=float32,int8", "--export_max_examples=40",
                         "--export_tflm_examples=10", f"--output_dir={out}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["export"]["formats"]) == {"float32", "int8"}
    assert metrics["export"]["num_verification"] == 40
    assert metrics["export"]["formats"]["float32"]["agreement_with_keras"] == 1.0
    for name in ("model_folded.keras", "model_float32.tflite", "model_int8.tflite", "model_int8.cc",
                 "model_int8.h", "export_report.json"):
        assert (out / "export" / name).is_file(), name
    energy = json.loads((out / "energy" / "energy_report.json").read_text())
    assert energy["num_examples"] == 40 and set(energy["tflite"]) == {"float32", "int8"}
    assert "E_Full/E_Method" in result.stdout


def test_failed_export_checks_keep_the_model_and_end_with_status_3(tmp_path, monkeypatch, capsys):
    """--export whose own checks fail: the trained model, metrics.json (naming
    the failed checks) and the Keras energy report stay, no export files, and
    the command exits with status 3 and one error line."""
    pytest.importorskip("tensorflow")
    import export.pipeline
    from export.checks import ExportCheckError

    class Failed:
        report = {"checks": {"passed": False, "failed": ["int8.litert.agreement"]}}

    def failing_export_run(model, config):
        raise ExportCheckError("int8.litert.agreement 12.00% (needs >= 80.00%)", Failed())

    monkeypatch.setattr(export.pipeline, "export_run", failing_export_run)
    data_dir = write_fake_fashion_mnist(str(tmp_path / "data"), n_train=96, n_test=48)
    out = tmp_path / "run"
    config = _config(out, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1", "--export",
                     "--export_max_examples=20")
    with pytest.raises(SystemExit) as exit_info:
        cifar._main(config)
    assert exit_info.value.code == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "int8.litert.agreement" in errors[0], errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["export"]["failed_checks"] == ["int8.litert.agreement"]
    assert (out / "final.keras").is_file() and (out / "energy" / "energy_report.json").is_file()
    assert not (out / "export").exists()
