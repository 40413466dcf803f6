"""Flag validation: every bad flag ends with one `error:` line, exit 2, and
nothing written -- checked before any data loading."""

import glob
import os

import pytest

from tests.trainers.helpers import REPO, run_trainer
from trainers import flags as tf_flags

GOOD = ["--dataset=fashion_mnist", "--model=custom", "--blocks=1,1", "--width=8"]

BAD = {
    "unknown dataset": (["--dataset=mnist"], "unknown --dataset 'mnist'"),
    "unknown activation": (["--activation=tanh"], "unknown --activation 'tanh'"),
    "unknown model": (["--model=vgg16"], "unknown --model 'vgg16'"),
    "unknown optimizer": (["--optimizer=rmsprop"], "unknown --optimizer 'rmsprop'"),
    "non-numeric learning rate": (["--learning_rate=fast"], "--learning_rate"),
    "zero learning rate": (["--learning_rate=0"], "--learning_rate must be > 0"),
    "negative learning rate": (["--learning_rate=-0.1"], "--learning_rate must be > 0"),
    "nan learning rate": (["--learning_rate=nan"], "--learning_rate must be > 0"),
    "non-numeric epochs": (["--epochs=ten"], "--epochs"),
    "zero epochs": (["--epochs=0"], "--epochs must be > 0"),
    "negative epochs": (["--epochs=-3"], "--epochs must be > 0"),
    "non-numeric batch size": (["--batch_size=big"], "--batch_size"),
    "zero batch size": (["--batch_size=0"], "--batch_size must be > 0"),
    "negative weight decay": (["--weight_decay=-1e-4"], "--weight_decay must be >= 0"),
    "label smoothing 1": (["--label_smoothing=1"], "--label_smoothing must be in [0, 1)"),
    "negative label smoothing": (["--label_smoothing=-0.1"], "--label_smoothing must be in [0, 1)"),
    "dropout 1": (["--dropout=1.0"], "--dropout must be in [0, 1)"),
    "negative dropout": (["--dropout=-0.5"], "--dropout must be in [0, 1)"),
    "s2nn threshold 0": (["--activation=s2nn", "--threshold=0"], "threshold must be > 0"),
    "s2nn threshold negative": (["--activation=s2nn", "--threshold=-1"], "threshold must be > 0"),
    "param of another surrogate": (["--activation=s2nn", "--rho=0.3"], "unknown parameter(s) rho"),
    "relu with threshold": (["--activation=relu", "--threshold=1"], "relu takes no neuron parameters"),
    "missing flagfile": (["--flagfile=/nonexistent/run.cfg"], "/nonexistent/run.cfg"),
    "unknown flag": (["--learning_rat=0.1"], "learning_rat"),
    "custom without blocks": (["--blocks="], "--model custom needs --blocks"),
    "bad blocks": (["--blocks=1,x"], "--blocks must be comma-separated integers"),
    "blocks with named model": (["--model=preact_resnet18"], "--blocks is only for --model custom"),
    "unknown strategy": (["--strategy=tpu"], "unknown --strategy 'tpu'"),
    "negative randaugment": (["--randaugment_ops=-1"], "--randaugment_ops must be >= 0"),
    "randaugment magnitude": (["--randaugment_magnitude=2"], "--randaugment_magnitude must be in [0, 1]"),
    "zero width": (["--width=0"], "--width must be > 0"),
    "stem stride": (["--stem_stride=3"], "--stem_stride must be 1 or 2, got 3"),
    "zero max examples": (["--max_train_examples=0"], "--max_train_examples must be > 0"),
    "negative validation": (["--validation_examples=-1"], "--validation_examples must be >= 0, got -1"),
    "validation leaves no training images": (
        ["--max_train_examples=3072", "--validation_examples=5000"],
        "--validation_examples 5000 leaves no training images of the --max_train_examples 3072"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flag_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    args, expected = BAD[case]
    out = tmp_path / "run"
    fv = tf_flags.new_flag_values()
    with pytest.raises(SystemExit) as exit_info:
        tf_flags.parse_or_exit(["trainers.cifar"] + GOOD + args + [f"--output_dir={out}"], fv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not out.exists()


def test_missing_output_dir(capsys):
    with pytest.raises(SystemExit):
        tf_flags.parse_or_exit(["trainers.cifar"] + GOOD, tf_flags.new_flag_values())
    assert "--output_dir is required" in capsys.readouterr().err


def test_valid_flags_resolve_surrogate_params(tmp_path):
    fv = tf_flags.new_flag_values()
    config = tf_flags.parse_or_exit(
        ["trainers.cifar"] + GOOD + ["--activation=slayer", "--alpha1=2", f"--output_dir={tmp_path}"], fv)
    assert config["blocks"] == [1, 1]
    assert config["surrogate_params"] == {"alpha1": 2.0}
    assert config["flags"]["activation"] == "slayer" and config["flags"]["width"] == 8


@pytest.mark.parametrize("args, expected", [
    ([], None),  # the default: 10 % of the training images loaded, at most 5,000 (trainers.inputs)
    (["--max_train_examples=3072"], None),
    (["--max_train_examples=5000"], None),
    (["--max_train_examples=3072", "--validation_examples=3071"], 3071),
    (["--validation_examples=0"], 0),
])
def test_validation_examples_default_fits_the_training_images(args, expected, tmp_path):
    config = tf_flags.parse_or_exit(["trainers.cifar"] + GOOD + args + [f"--output_dir={tmp_path}"],
                                    tf_flags.new_flag_values())
    assert config["flags"]["validation_examples"] == expected


def test_named_models_have_paper_blocks(tmp_path):
    for model, blocks in (("preact_resnet18", [2, 2, 2, 2]), ("preact_resnet106", [13] * 4)):
        config = tf_flags.parse_or_exit(
            ["trainers.cifar", f"--model={model}", f"--output_dir={tmp_path}"], tf_flags.new_flag_values())
        assert config["blocks"] == blocks


CONFIGS = sorted(glob.glob(os.path.join(REPO, "trainers", "configs", "*.cfg")))


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert "quickstart.cfg" in names
    for act in ("relu", "ste_b", "slayer", "ste_s", "s2nn", "sibnn"):
        assert f"table2_resnet18_{act}.cfg" in names
    for act in ("relu", "sibnn", "s2nn"):
        assert f"table2_resnet106_{act}.cfg" in names
    assert any(n.startswith("table5_") for n in names) and any(n.startswith("table6_") for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_flagfiles_validate(path, tmp_path):
    config = tf_flags.parse_or_exit(
        ["trainers.cifar", f"--flagfile={path}", f"--output_dir={tmp_path}"], tf_flags.new_flag_values())
    f = config["flags"]
    if os.path.basename(path).startswith("table"):
        assert f["epochs"] == 200 and f["dropout"] == 0.1 and f["label_smoothing"] == 0.1
        assert f["model"] in ("preact_resnet18", "preact_resnet106")


@pytest.mark.parametrize("args, expected", [
    (["--learning_rate=abc"], "--learning_rate"),
    (["--flagfile=/nonexistent/x.cfg"], "/nonexistent/x.cfg"),
    (["--activation=s2nn", "--threshold=-0.5"], "threshold must be > 0"),
])
def test_bad_flags_in_a_real_process(args, expected, tmp_path):
    out = tmp_path / "run"
    proc = run_trainer("--dataset=fashion_mnist", *args, f"--output_dir={out}", timeout=120)
    assert proc.returncode == 2
    # Exactly one line: TensorFlow's start-up chatter is silenced while it is
    # imported (TF_CPP_MIN_LOG_LEVEL=2), and validation runs before TF starts.
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1, proc.stderr
    assert err_lines[0].startswith("error: ") and expected in err_lines[0], proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


def test_quickstart_regularizes_firing_rates_and_its_relu_twin_ignores_it(tmp_path):
    path = os.path.join(REPO, "trainers", "configs", "quickstart.cfg")
    config = tf_flags.parse_or_exit(
        ["trainers.cifar", f"--flagfile={path}", f"--output_dir={tmp_path}"], tf_flags.new_flag_values())
    assert config["flags"]["rate_l1"] == 0.1 and config["notes"] == []
    relu = tf_flags.parse_or_exit(["trainers.cifar", f"--flagfile={path}", "--activation=relu",
                                   f"--output_dir={tmp_path}"], tf_flags.new_flag_values())
    assert relu["flags"]["rate_l1"] == 0.0 and relu["flags"]["target_rate"] is None
    assert len(relu["notes"]) == 1 and "--rate_l1 0.1 not applied" in relu["notes"][0]
