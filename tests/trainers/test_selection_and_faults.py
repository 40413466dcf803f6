"""Honest model selection (validation split, test set once at the end on
final and best, TTA only with flips) and faults that end in one line
(--data_dir, damaged checkpoints or state.json, finished runs, --help)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from tests.trainers.helpers import TINY, run_trainer, write_fake_fashion_mnist
from trainers import cifar, files, inputs
from trainers import flags as tf_flags


def _config(out, *args):
    return tf_flags.parse_or_exit(["trainers.cifar"] + TINY + list(args) + [f"--output_dir={out}"],
                                  tf_flags.new_flag_values())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fake_fashion_mnist(str(tmp_path_factory.mktemp("data")), n_train=96, n_test=40)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A 2-epoch run (kept read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "base"
    config = _config(out, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2")
    metrics = cifar.train(config)
    return out, metrics


def _copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


# ----------------------------------------------------------------------------
# The validation split and the figures.
# ----------------------------------------------------------------------------


def test_validation_split_is_seeded_disjoint_and_backend_independent():
    x = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1) % 251
    y = np.arange(1000)
    tx, ty, vx, vy = inputs.split_validation(x, y, 100, seed=0)
    assert len(vy) == 100 and len(ty) == 900 and not set(ty) & set(vy)
    assert np.all(np.diff(ty) > 0) and np.all(np.diff(vy) > 0)  # original order kept
    again = inputs.split_validation(x, y, 100, seed=0)[3]
    np.testing.assert_array_equal(vy, again)
    assert not np.array_equal(vy, inputs.split_validation(x, y, 100, seed=1)[3])
    # NumPy only: the same indices on every Keras backend (this file also runs
    # in CI's TensorFlow-free JAX job) and in every process of a cluster.
    assert hashlib.sha256(vy.tobytes()).hexdigest()[:16] == "5685e7f0463dac28" or _print_digest(vy)
    assert inputs.split_validation(x, y, 0, seed=0)[2] is None
    with pytest.raises(ValueError, match="leaves no training images"):
        inputs.split_validation(x, y, 1000, seed=0)


@pytest.mark.parametrize("loaded, held_out", [(60000, 5000), (50000, 5000), (3072, 307), (5000, 500),
                                              (96, 9), (9, 0)])
def test_default_validation_split_fits_the_training_images(loaded, held_out):
    """--validation_examples unset: 10 % of the training images loaded, at
    most 5,000 -- the full Fashion-MNIST (60,000) and CIFAR (50,000) sets
    keep exactly the 5,000 images an explicit 5000 holds out."""
    assert inputs.default_validation_examples(loaded) == held_out
    x = np.arange(loaded, dtype=np.int64).reshape(loaded, 1, 1, 1)
    y = np.arange(loaded)
    tx, ty, vx, vy = inputs.split_validation(x, y, None, seed=0)
    assert len(ty) == loaded - held_out and (vy is None if held_out == 0 else len(vy) == held_out)
    if held_out:
        explicit = inputs.split_validation(x, y, held_out, seed=0)
        np.testing.assert_array_equal(vy, explicit[3])
        np.testing.assert_array_equal(ty, explicit[1])


def test_resume_compares_a_default_validation_split_by_its_size():
    """A run saved with --validation_examples 5000 (the old default) resumes
    under the new default on the full training set, not on 10,000 images; a
    default on one side is left for after loading (no image count yet)."""
    old, new = {"validation_examples": 5000}, {"validation_examples": None}
    assert tf_flags.recipe_differences(old, new) is None
    assert tf_flags.recipe_differences(old, new, num_train_examples=60000) is None
    assert tf_flags.recipe_differences(new, new, num_train_examples=3072) is None
    diff = tf_flags.recipe_differences(old, new, num_train_examples=10000)
    assert diff.startswith("--validation_examples 5000 -> None (default: 1000 of the 10000") and "1000" in diff
    assert "--validation_examples None -> 300" in tf_flags.recipe_differences(new, {"validation_examples": 300},
                                                                               num_train_examples=3072)
    assert tf_flags.recipe_differences({"validation_examples": 16}, {"validation_examples": 0}) is not None


def test_default_validation_split_on_a_small_training_set(data_dir, tmp_path, capsys):
    """--max_train_examples below 5,000 without --validation_examples trains
    (it ended in "--validation_examples 5000 leaves no training images"),
    holding out 10 %; resuming with another explicit split is refused."""
    out = tmp_path / "run"
    args = ["trainers.cifar"] + [a for a in TINY if not a.startswith("--validation_examples")] + [
        "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1", "--max_train_examples=90",
        f"--output_dir={out}"]
    config = tf_flags.parse_or_exit(args, tf_flags.new_flag_values())
    assert config["flags"]["validation_examples"] is None
    metrics = cifar.train(config)
    assert metrics["validation"]["examples"] == 9 and metrics["num_train_examples"] == 81
    assert (out / "best.keras").is_file()
    again = cifar.train(tf_flags.parse_or_exit(args + ["--validation_examples=9"], tf_flags.new_flag_values()))
    assert again["epochs_completed"] == 1  # the same 9 images: the run is finished
    with pytest.raises(tf_flags.UsageError, match="other flags.*--validation_examples None -> 10"):
        cifar.train(tf_flags.parse_or_exit(args + ["--validation_examples=10"], tf_flags.new_flag_values()))


def _print_digest(vy):
    raise AssertionError(f"split digest changed: {hashlib.sha256(vy.tobytes()).hexdigest()[:16]}")


def test_metrics_name_every_figure(finished_run):
    out, metrics = finished_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["validation"]["examples"] == 16 and on_disk["num_train_examples"] == 80
    assert on_disk["num_test_examples"] == 40
    history_val = [h["val_accuracy"] for h in on_disk["history"]]
    assert on_disk["validation_accuracy_final"] == history_val[-1]
    assert on_disk["validation_accuracy_best"] == max(history_val)
    assert on_disk["best"]["epoch"] == 1 + int(np.argmax(history_val))
    for key in ("test_accuracy_final", "test_accuracy_best", "test_loss_final", "test_loss_best"):
        assert 0.0 <= on_disk[key] <= 1.0 or key.startswith("test_loss"), key
    assert on_disk["test_accuracy"] == on_disk["test_accuracy_final"]
    # Accuracy over 40 test images is a multiple of 1/40; over 16 validation images of 1/16.
    assert abs(on_disk["test_accuracy_final"] * 40 - round(on_disk["test_accuracy_final"] * 40)) < 1e-4
    assert all(abs(v * 16 - round(v * 16)) < 1e-4 for v in history_val)
    assert on_disk["tta_accuracy_final"] is None and "without flips" in on_disk["tta"]["skipped"]
    assert set(on_disk["figures"]) >= {"test_accuracy_final", "test_accuracy_best"}
    assert (out / "best.keras").is_file() and (out / "final.keras").is_file()
    assert on_disk["data_dir"] == metrics["flags"]["data_dir"]


def test_summary_lines_say_which_figure_is_which(finished_run):
    from trainers.run import summary_lines

    lines = summary_lines(finished_run[1])
    assert lines[0].startswith("validation (16 held-out training images, seed 0): final ")
    assert lines[1].startswith("test (40 images, evaluated once at the end): final.keras ") and "best.keras" in lines[1]
    assert lines[2].startswith("flip-TTA skipped: the model was trained without flips")


def test_summary_line_without_a_validation_split(finished_run):
    from trainers.run import summary_lines

    metrics = dict(finished_run[1], validation={"examples": 0, "seed": 0})
    metrics["flags"] = dict(metrics["flags"], validation_examples=0)
    assert summary_lines(metrics)[0] == "validation: none (--validation_examples 0): no best.keras"
    metrics["flags"]["validation_examples"] = None
    assert "none of fewer than 10" in summary_lines(metrics)[0]


def test_tta_and_learnable_neurons(data_dir, tmp_path):
    import keras

    out = tmp_path / "run"
    metrics = cifar.train(_config(out, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                                  "--crop_flip", "--learnable=threshold,tau_s,alpha", "--validation_examples=0"))
    assert 0.0 <= metrics["tta_accuracy_final"] <= 1.0 and metrics["tta"] == {"trained_with_flips": True}
    # No validation split: no selection, no best.keras, no test figure for it.
    assert metrics["best"] is None and metrics["test_accuracy_best"] is None and not (out / "best.keras").exists()
    model = keras.saving.load_model(out / "final.keras")
    act = model.get_layer("final_act")
    assert act.learnable == ("threshold", "tau_s", "alpha") and act.neuron_parameters()["alpha"].shape == (4,)


def test_bad_learnable_and_validation_flags_are_one_line(tmp_path, capsys):
    for args, message in ((["--learnable=beta"], "--learnable beta is not a learnable parameter of --activation s2nn"),
                          (["--activation=relu", "--learnable=threshold"], "--activation relu has none"),
                          (["--validation_examples=-1"], "--validation_examples must be >= 0"),
                          (["--max_train_examples=10", "--validation_examples=10"], "leaves no training images")):
        with pytest.raises(SystemExit) as info:
            _config(tmp_path / "x", *args)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


# ----------------------------------------------------------------------------
# Faults.
# ----------------------------------------------------------------------------


def test_data_dir_missing_or_without_the_files_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for data_dir, message in ((tmp_path / "nonexistent", "does not exist"),
                              (empty, "lacks the Fashion-MNIST IDX files")):
        with pytest.raises(SystemExit) as info:
            _config(tmp_path / "out", "--dataset=fashion_mnist", f"--data_dir={data_dir}")
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --data_dir {data_dir} ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(finished_run, data_dir, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    assert sorted(os.listdir(run / "backup")) == ["epoch-0001.json", "epoch-0001.keras",
                                                  "epoch-0002.json", "epoch-0002.keras"]
    newest = run / "backup" / "epoch-0002.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    metrics = cifar.train(_config(run, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2"))
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: backup/epoch-0002.keras is damaged (BadZipFile); resuming from the previous "
                        "good checkpoint backup/epoch-0001.keras (epoch 1)"]
    assert "resuming from epoch 1/2" in captured.out and "Epoch 2/2" in captured.out
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert files.check_checkpoint(str(newest)) is None  # epoch 2 written again


def test_damaged_state_json_resumes_from_the_checkpoint_state(finished_run, data_dir, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    (run / "state.json").write_text('{"epochs_completed": 2, "checkp')
    metrics = cifar.train(_config(run, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2"))
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("warning:")] == [
        "warning: state.json is damaged (JSONDecodeError); resuming from the previous good checkpoint "
        "backup/epoch-0002.keras (epoch 2)"]
    assert "resuming from epoch 2/2" in captured.out and metrics["epochs_completed"] == 2
    assert files.read_json(str(run / "state.json"))[0]["epochs_completed"] == 2  # repaired


def test_nothing_usable_is_one_error_line_naming_file_and_flag(finished_run, data_dir, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    for name in ("epoch-0001.keras", "epoch-0002.keras"):
        (run / "backup" / name).write_bytes(b"PK\x03\x04 not really")
    before = (run / "metrics.json").read_bytes()
    config = _config(run, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2")
    with pytest.raises(SystemExit) as info:
        cifar._main(config)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot resume the run in ")
    assert "backup/epoch-0002.keras is damaged" in err[0] and "--restart" in err[0]
    assert (run / "metrics.json").read_bytes() == before  # nothing half-written
    # --restart starts afresh.
    metrics = cifar.train(_config(run, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
                                  "--restart"))
    assert metrics["epochs_completed"] == 1 and [h["epoch"] for h in metrics["history"]] == [1]
    assert "resuming" not in capsys.readouterr().out


def test_rerunning_a_finished_run_changes_nothing(finished_run, data_dir, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    snapshot = {p: (run / p).read_bytes() for p in ("metrics.json", "state.json", "final.keras")}
    metrics = cifar.train(_config(run, "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=2",
                                  "--verbose=0"))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"the run in {run} is finished (2/2 epochs") and "--restart" in out[0]
    assert {p: (run / p).read_bytes() for p in snapshot} == snapshot
    assert metrics["wall_time_s"] == finished_run[1]["wall_time_s"]


def test_help_lists_the_trainers_own_flags():
    proc = run_trainer("--help", timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl's --help exits 1
    for flag in ("--validation_examples", "--learnable", "--restart", "--learning_rate", "--data_dir",
                 "--strategy"):
        assert flag in proc.stdout, flag


def test_find_resume_point_on_an_empty_folder(tmp_path):
    assert files.find_resume_point(str(tmp_path)) == (None, [])
    assert files.find_resume_point(str(tmp_path / "absent")) == (None, [])
