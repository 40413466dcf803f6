"""Command-line flags of ``python -m trainers.cifar`` and their validation.

Every flag is checked here, before any data is read or anything is written
to ``--output_dir``. A bad flag (or a flagfile that cannot be opened, or an
unknown flag) ends the program with exactly one line on stderr::

    error: --learning_rate must be > 0, got -0.1

and exit status 2, without a traceback.

Flags are defined on an :class:`absl.flags.FlagValues` object so tests can
parse argument lists into a fresh one (:func:`new_flag_values`).
"""

from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional

from absl import flags

from trainers.errors import UsageError


MODELS = ("preact_resnet18", "preact_resnet106", "custom")
MODEL_BLOCKS = {"preact_resnet18": [2, 2, 2, 2], "preact_resnet106": [13, 13, 13, 13]}
OPTIMIZERS = ("sgd", "adam")
STRATEGIES = ("default", "mirrored", "multi_worker")
INPUT_PIPELINES = ("auto", "tf_data", "device")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
SURROGATE_PARAM_FLAGS = ("tau_s", "alpha", "rho", "delta", "alpha1", "beta1", "beta0")

#: Flags that do not change what is trained; a resumed run may change them.
NON_RECIPE_FLAGS = frozenset(
    ["data_dir", "output_dir", "verbose", "strategy", "num_cpu_devices", "jit_compile", "restart",
     "firing_rate_batches", "tta", "flagfile", "export", "export_formats", "export_max_examples",
     "export_tflm_examples", "energy_preset", "energy_convention", "input_pipeline"]
)


def import_tensorflow_quietly() -> None:
    """Imports Keras and its backend with TensorFlow's start-up lines
    silenced (see :func:`trainers.backend.import_keras_quietly`); imports
    TensorFlow only when it is the Keras backend."""
    from trainers.backend import import_keras_quietly

    import_keras_quietly()


def export_formats():
    """TFLite formats of ``--export_formats`` (:data:`export.formats.QUANTIZATIONS`)."""
    from export.formats import QUANTIZATIONS

    return tuple(QUANTIZATIONS)


def energy_presets():
    """``--energy_preset`` values (:data:`s2nn_keras.energy.PRESETS`)."""
    from s2nn_keras.energy import PRESETS

    return tuple(PRESETS)


def energy_conventions():
    """``--energy_convention`` values (:data:`s2nn_keras.energy.CONVENTIONS`)."""
    from s2nn_keras.energy import CONVENTIONS

    return tuple(CONVENTIONS)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
    """Defines the trainer's flags on ``fv`` and returns it (imports Keras)."""
    from s2nn_keras.datasets import DATASETS

    # Data.
    flags.DEFINE_string("dataset", "cifar10", f"One of {', '.join(DATASETS)}.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None,
        "tensorflow-datasets data_dir; for fashion_mnist also a folder holding the four IDX .gz "
        "files (default: Debian's /usr/share/datasets/fashion-mnist, then tfds).", flag_values=fv)
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training examples.", flag_values=fv)
    flags.DEFINE_integer("max_test_examples", None, "Use only the first N test examples.", flag_values=fv)
    flags.DEFINE_integer(
        "validation_examples", None,
        "Training images held out for validation (a seeded random subset, the same on every backend and "
        "on resume): per-epoch val_* figures and the choice of best.keras use it; the test set is "
        "evaluated only at the end, on final.keras and best.keras. Default: 10% of the training images "
        "loaded (rounded down), at most 5000 -- 5000 of the full CIFAR and Fashion-MNIST training sets, "
        "307 of --max_train_examples 3072, none below 10 images. 0: no validation split (no best.keras, no "
        "per-epoch val_* figures or firing rates).",
        flag_values=fv)
    flags.DEFINE_integer("validation_seed", 0, "Seed of the validation split (independent of --seed, so runs "
                         "with different seeds share one validation set).", flag_values=fv)
    flags.DEFINE_integer("randaugment_ops", 2, "RandAugment operations per image (0 disables it).",
                         flag_values=fv)
    flags.DEFINE_float("randaugment_magnitude", 0.3, "RandAugment magnitude in [0, 1] (keras-cv scale).",
                       flag_values=fv)
    flags.DEFINE_string(
        "input_pipeline", "auto",
        "tf_data: tf.data with per-image crop/flip and keras-cv RandAugment on the host (needs "
        "TensorFlow); device: NumPy batches, the same per-image augmentation in keras.ops on the "
        "accelerator inside the train step (any backend, no TensorFlow); auto: tf_data on the "
        "tensorflow backend, device otherwise.", flag_values=fv)
    flags.DEFINE_boolean(
        "crop_flip", None,
        "Random padded crop and horizontal flip (default: on for CIFAR, off for Fashion-MNIST).",
        flag_values=fv)
    flags.DEFINE_integer("crop_padding", 4, "Zero padding (pixels per side) of the random crop.", flag_values=fv)
    # Model.
    flags.DEFINE_string("model", "preact_resnet18", f"One of {', '.join(MODELS)}.", flag_values=fv)
    flags.DEFINE_list("blocks", None, "Basic blocks per stage for --model custom, e.g. 1,1,1.",
                      flag_values=fv)
    flags.DEFINE_integer("width", 64, "Channels of the stem and first stage (doubling per stage).",
                         flag_values=fv)
    flags.DEFINE_integer("stem_stride", 1, "Stride of the stem conv: 1 (paper) or 2 (every stage at "
                         "half the resolution, about 1/4 of the FLOPs).", flag_values=fv)
    flags.DEFINE_string("activation", "s2nn", "relu or a surrogate name (s2nn, ste_b, ste_s, sibnn, "
                        "slayer, superspike, ...).", flag_values=fv)
    flags.DEFINE_float("threshold", None, "Firing threshold u_th (default: the surrogate's, Table 3).",
                       flag_values=fv)
    for name, help_text in [
        ("tau_s", "s2nn tau_s (Eq. 23)"), ("alpha", "s2nn alpha (Eq. 21/23)"),
        ("rho", "sibnn rho"), ("delta", "sibnn Delta"), ("alpha1", "slayer alpha1 (Eq. 25)"),
        ("beta1", "slayer beta1 (Eq. 25)"), ("beta0", "superspike beta0 (Eq. 24)"),
    ]:
        flags.DEFINE_float(name, None, help_text + "; default: the surrogate's default.", flag_values=fv)
    flags.DEFINE_list(
        "learnable", [],
        "Neuron parameters learned per channel: threshold (any surrogate) and the surrogate's shape "
        "parameters (s2nn: tau_s, alpha; sibnn: delta); see s2nn_keras.surrogates, 'Learnable parameters'.",
        flag_values=fv)
    flags.DEFINE_float("dropout", 0.1, "Dropout rate before the classifier, in [0, 1).", flag_values=fv)
    # Optimisation.
    flags.DEFINE_string("optimizer", "sgd", "sgd or adam.", flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.05, "Peak learning rate (cosine-annealed to 0).", flag_values=fv)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum in [0, 1).", flag_values=fv)
    flags.DEFINE_boolean("nesterov", False, "Nesterov momentum for --optimizer sgd.", flag_values=fv)
    flags.DEFINE_float(
        "weight_decay", 5e-4,
        "PyTorch-style (coupled) weight decay: wd * w is added to the gradient of every conv and "
        "dense kernel, implemented as an L2 kernel regulariser (wd/2) * ||w||^2.", flag_values=fv)
    flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing epsilon of Eq. A.1, in [0, 1).",
                       flag_values=fv)
    flags.DEFINE_float("rate_l1", 0.0, "Firing-rate regularizer on every neuron: weight of its firing rate R "
                       "(s2nn_keras.regularizers.FiringRateRegularizer; 0 = off).", flag_values=fv)
    flags.DEFINE_float("target_rate", None, "Firing-rate regularizer: pull each neuron layer's rate toward "
                       "this value in [0, 1] with weight --rate_strength.", flag_values=fv)
    flags.DEFINE_float("rate_strength", 1.0, "Weight of the --target_rate penalty (r - target)^2.", flag_values=fv)
    flags.DEFINE_integer("epochs", 200, "Training epochs.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 128, "Global batch size (split over replicas).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, augmentation).", flag_values=fv)
    flags.DEFINE_boolean("jit_compile", None,
                         "Compile the train step with XLA (default: Keras' auto -- on for JAX and for "
                         "TensorFlow with a GPU, TF graph mode on a CPU-only machine).", flag_values=fv)
    flags.DEFINE_string("dtype_policy", "float32",
                        f"Keras dtype policy: {', '.join(DTYPE_POLICIES)} (mixed precision: float32 "
                        "weights, low-precision compute).", flag_values=fv)
    # Evaluation and outputs.
    flags.DEFINE_boolean("tta", True, "Also report flip-averaged test-time-augmentation accuracy (only for a "
                         "model trained with flips, --crop_flip; otherwise skipped with one line).",
                         flag_values=fv)
    flags.DEFINE_integer("firing_rate_batches", 4,
                         "Validation batches used for the per-epoch firing rates (0: all; none without a validation split).", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Where models, logs and metrics.json go (required).",
                        flag_values=fv)
    flags.DEFINE_boolean("restart", False, "Start afresh: delete the resume state, checkpoints and metrics "
                         "of a run already in --output_dir instead of resuming it.", flag_values=fv)
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity: 1 progress bar, 2 one line per epoch.",
                         flag_values=fv)
    # Deployment and energy reports at the end of the run.
    formats, presets, conventions = export_formats(), energy_presets(), energy_conventions()
    flags.DEFINE_boolean("export", False, "After training, fold BN into thresholds and export TFLite "
                         "models with python -m export's checks (output_dir/export).", flag_values=fv)
    flags.DEFINE_list("export_formats", list(formats),
                      f"TFLite formats for --export: any of {', '.join(formats)}.", flag_values=fv)
    flags.DEFINE_integer("export_max_examples", 2000,
                         "Test images used to verify the export and for the TFLite energy comparison "
                         "(0: all).", flag_values=fv)
    flags.DEFINE_integer("export_tflm_examples", 500,
                         "Of those, images run through the (slow) TFLite Micro interpreter (0: all).",
                         flag_values=fv)
    flags.DEFINE_string("energy_preset", "45nm_fp32",
                        f"Energy per op for the energy report: {', '.join(presets)}.", flag_values=fv)
    flags.DEFINE_string("energy_convention", "default",
                        f"First-layer accounting of the energy report: {', '.join(conventions)}.",
                        flag_values=fv)
    # Scale-out.
    flags.DEFINE_string("strategy", "default",
                        f"Data parallelism: {', '.join(STRATEGIES)} (mirrored: tf.distribute.MirroredStrategy "
                        "on TensorFlow, keras.distribution.DataParallel on JAX; multi_worker: several "
                        "processes/machines from TF_CONFIG -- MultiWorkerMirroredStrategy on TensorFlow, "
                        "jax.distributed + keras.distribution.DataParallel on JAX).",
                        flag_values=fv)
    flags.DEFINE_integer("num_cpu_devices", 0,
                         "Split the CPU into N devices (testing --strategy mirrored on CPU; TF logical "
                         "devices, JAX jax_num_cpu_devices).", flag_values=fv)
    return fv


def new_flag_values() -> flags.FlagValues:
    """A fresh FlagValues with the trainer's flags (for tests and sweeps)."""
    return define_flags(flags.FlagValues())


def _one_line(text) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else "invalid command line"
    return line[len("ERROR::"):].strip() if line.startswith("ERROR::") else line


def parse_argv(argv: List[str], fv: flags.FlagValues) -> List[str]:
    """Parses ``argv`` (program name first) into ``fv``; UsageError on failure."""
    try:
        rest = fv(argv)
    except flags.Error as err:  # unknown flag, bad value, missing flagfile ...
        raise UsageError(_one_line(err)) from None
    except (OSError, ValueError) as err:
        raise UsageError(_one_line(err)) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected positional argument(s): {' '.join(rest[1:])}")
    return rest


def parse_argv_keep_rest(argv: List[str], fv: flags.FlagValues) -> List[str]:
    """Like :func:`parse_argv` but returns the arguments after ``--``
    (program name first) instead of rejecting them."""
    try:
        return fv(argv)
    except flags.Error as err:
        raise UsageError(_one_line(err)) from None
    except (OSError, ValueError) as err:
        raise UsageError(_one_line(err)) from None


def _finite(name, value):
    if value is None or not math.isfinite(value):
        raise UsageError(f"--{name} must be a finite number, got {value}")
    return value


def _positive(name, value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise UsageError(f"--{name} must be > 0, got {value}")


def _unit_interval(name, value):
    _finite(name, value)
    if not 0.0 <= value < 1.0:
        raise UsageError(f"--{name} must be in [0, 1), got {value}")


def validate(fv: flags.FlagValues) -> Dict:
    """Checks every flag and returns the run configuration.

    Returns:
      ``{"flags": {name: value for every trainer flag}, "blocks": [...],
      "surrogate_params": {...}}`` where ``surrogate_params`` holds
      ``threshold`` and the surrogate's own parameters as given on the
      command line (unset ones are left to the surrogate defaults), and
      ``notes``: lines the trainer prints first (flags given but not
      applied, e.g. ``--rate_l1`` of a config with ``--activation relu``).

    Raises:
      UsageError: with a one-line message.
    """
    from s2nn_keras import surrogates  # imports Keras and its backend (no data, no files)
    from s2nn_keras.datasets import DATASETS

    f = fv
    for name, valid in (("dataset", DATASETS), ("model", MODELS), ("optimizer", OPTIMIZERS),
                        ("strategy", STRATEGIES), ("input_pipeline", INPUT_PIPELINES),
                        ("dtype_policy", DTYPE_POLICIES)):
        if getattr(f, name) not in valid:
            raise UsageError(f"unknown --{name} {getattr(f, name)!r}; valid: {', '.join(valid)}")
    _validate_backend_flags(f)
    valid_acts = ["relu"] + surrogates.available_surrogates()
    if f.activation not in valid_acts:
        raise UsageError(f"unknown --activation {f.activation!r}; valid: {', '.join(valid_acts)}")
    if not f.output_dir:
        raise UsageError("--output_dir is required")

    # Model shape.
    if f.model == "custom":
        if not f.blocks:
            raise UsageError("--model custom needs --blocks, e.g. --blocks 1,1,1")
        try:
            blocks = [int(b) for b in f.blocks]
        except ValueError:
            raise UsageError(f"--blocks must be comma-separated integers, got {','.join(f.blocks)}") from None
        if any(b < 1 for b in blocks):
            raise UsageError(f"--blocks must all be >= 1, got {','.join(f.blocks)}")
    else:
        if f.blocks:
            raise UsageError(f"--blocks is only for --model custom (got --model {f.model})")
        blocks = list(MODEL_BLOCKS[f.model])
    _positive("width", f.width)
    if f.stem_stride not in (1, 2):
        raise UsageError(f"--stem_stride must be 1 or 2, got {f.stem_stride}")

    # Optimisation.
    _positive("learning_rate", f.learning_rate)
    _positive("epochs", f.epochs)
    _positive("batch_size", f.batch_size)
    _finite("weight_decay", f.weight_decay)
    if f.weight_decay < 0:
        raise UsageError(f"--weight_decay must be >= 0, got {f.weight_decay}")
    _unit_interval("momentum", f.momentum)
    _unit_interval("label_smoothing", f.label_smoothing)
    _unit_interval("dropout", f.dropout)
    for name in ("rate_l1", "rate_strength"):
        if _finite(name, getattr(f, name)) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(f, name)}")
    if f.target_rate is not None and not 0.0 <= _finite("target_rate", f.target_rate) <= 1.0:
        raise UsageError(f"--target_rate must be in [0, 1], got {f.target_rate}")
    if f.target_rate is not None and f.rate_strength == 0 and f.rate_l1 == 0:
        raise UsageError("--target_rate needs --rate_strength > 0")
    # the quickstart config sets --rate_l1; its ReLU twin (--activation relu) has no neuron to regularize
    rate_flags_ignored = [] if f.activation != "relu" else (
        ([f"--rate_l1 {f.rate_l1:g}"] if f.rate_l1 > 0 else [])
        + ([f"--target_rate {f.target_rate:g}"] if f.target_rate is not None else []))
    notes = [f"note: {', '.join(rate_flags_ignored)} not applied: the firing-rate regularizer acts on spiking "
             "neurons and --activation relu has none"] if rate_flags_ignored else []

    # Data and augmentation.
    for name in ("max_train_examples", "max_test_examples"):
        if getattr(f, name) is not None:
            _positive(name, getattr(f, name))
    if f.validation_examples is not None and f.validation_examples < 0:
        raise UsageError(f"--validation_examples must be >= 0, got {f.validation_examples}")
    if (f.validation_examples is not None and f.max_train_examples is not None
            and f.validation_examples >= f.max_train_examples):
        raise UsageError(f"--validation_examples {f.validation_examples} leaves no training images of the "
                         f"--max_train_examples {f.max_train_examples}")
    _validate_data_dir(f)
    if f.crop_padding < 0:
        raise UsageError(f"--crop_padding must be >= 0, got {f.crop_padding}")
    if f.randaugment_ops < 0:
        raise UsageError(f"--randaugment_ops must be >= 0, got {f.randaugment_ops}")
    _finite("randaugment_magnitude", f.randaugment_magnitude)
    if not 0.0 <= f.randaugment_magnitude <= 1.0:
        raise UsageError(f"--randaugment_magnitude must be in [0, 1], got {f.randaugment_magnitude}")
    if f.firing_rate_batches < 0:
        raise UsageError(f"--firing_rate_batches must be >= 0, got {f.firing_rate_batches}")
    if f.num_cpu_devices < 0:
        raise UsageError(f"--num_cpu_devices must be >= 0, got {f.num_cpu_devices}")
    if f.verbose not in (0, 1, 2):
        raise UsageError(f"--verbose must be 0, 1 or 2, got {f.verbose}")

    formats, presets, conventions = export_formats(), energy_presets(), energy_conventions()
    bad_formats = [x for x in f.export_formats if x not in formats]
    if bad_formats or not f.export_formats:
        raise UsageError(f"--export_formats must be a non-empty list of {', '.join(formats)}; "
                         f"got {','.join(f.export_formats) or 'nothing'}")
    for name in ("export_max_examples", "export_tflm_examples"):
        if getattr(f, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(f, name)}")
    if f.energy_preset not in presets:
        raise UsageError(f"unknown --energy_preset {f.energy_preset!r}; valid: {', '.join(presets)}")
    if f.energy_convention not in conventions:
        raise UsageError(f"unknown --energy_convention {f.energy_convention!r}; "
                         f"valid: {', '.join(conventions)}")

    # Neuron parameters.
    given = {k: getattr(f, k) for k in ("threshold",) + SURROGATE_PARAM_FLAGS if getattr(f, k) is not None}
    if f.activation == "relu":
        if given:
            raise UsageError(f"--activation relu takes no neuron parameters, got --{', --'.join(sorted(given))}")
    else:
        own = dict(given)
        threshold = own.pop("threshold", None)
        try:
            surrogates.resolve_params(f.activation, threshold, **own)
        except ValueError as err:
            raise UsageError(f"--activation {f.activation}: {_one_line(err)}") from None
    learnable = [name.strip() for name in f.learnable if name.strip()]
    if learnable:
        if f.activation == "relu":
            raise UsageError("--learnable names neuron parameters; --activation relu has none")
        valid = ("threshold",) + tuple(surrogates.get_surrogate(f.activation).learnable_params)
        bad = [n for n in learnable if n not in valid] or sorted({n for n in learnable if learnable.count(n) > 1})
        if bad:
            raise UsageError(f"--learnable {','.join(bad)} is not a learnable parameter of --activation "
                             f"{f.activation} (or is repeated); valid: {', '.join(valid)}")

    values = {name: fv[name].value for name in define_flags(flags.FlagValues())}
    if values.get("blocks") is not None:
        values["blocks"] = list(values["blocks"])
    values["learnable"] = learnable
    if rate_flags_ignored:
        values["rate_l1"], values["target_rate"] = 0.0, None
    neuron = dict(given)
    if learnable:
        neuron["learnable"] = tuple(learnable)
    return {"flags": values, "blocks": blocks, "surrogate_params": neuron, "notes": notes}


def _validate_data_dir(f) -> None:
    """``--data_dir`` must exist and, for Fashion-MNIST, hold the four IDX
    files (no silent fall-back to Debian's copy or to tensorflow-datasets)."""
    import os

    if not f.data_dir:
        return
    if not os.path.isdir(f.data_dir):
        raise UsageError(f"--data_dir {f.data_dir} does not exist (or is not a folder)")
    if f.dataset == "fashion_mnist":
        from s2nn_keras.datasets import fashion_mnist_idx_dir

        own = {os.path.normpath(os.path.join(f.data_dir, sub)) for sub in ("", "fashion_mnist", "fashion-mnist")}
        found = fashion_mnist_idx_dir(f.data_dir)
        if found is None or os.path.normpath(found) not in own:
            raise UsageError(
                f"--data_dir {f.data_dir} lacks the Fashion-MNIST IDX files (train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz, in it "
                "or in its fashion_mnist/ subfolder); omit --data_dir to read /usr/share/datasets/fashion-mnist")


def _validate_backend_flags(f) -> None:
    """Flags that the running Keras backend (or a missing TensorFlow) rules out."""
    from trainers.backend import keras_backend, tensorflow_installed

    backend = keras_backend()
    if f.input_pipeline == "tf_data" and backend != "tensorflow":
        raise UsageError(f"--input_pipeline tf_data needs the tensorflow Keras backend (running {backend}); "
                         "use --input_pipeline device")
    if f.input_pipeline == "tf_data" and not tensorflow_installed():
        raise UsageError("--input_pipeline tf_data needs TensorFlow, which is not installed; "
                         "use --input_pipeline device")
    if f.strategy == "multi_worker" and backend not in ("tensorflow", "jax"):
        raise UsageError(f"--strategy multi_worker needs the tensorflow or jax Keras backend (running {backend})")
    if f.strategy == "multi_worker":
        import os

        from trainers.distribute import jax_cluster_from_env

        if backend == "jax":
            jax_cluster_from_env()  # UsageError when the cluster is not described
        elif not os.environ.get("TF_CONFIG"):
            raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
    if f.strategy == "multi_worker" and backend == "jax" and f.input_pipeline == "tf_data":
        raise UsageError("--strategy multi_worker on jax feeds each process its shard of every batch; "
                         "use --input_pipeline device (or auto)")
    if f.strategy == "mirrored" and backend not in ("tensorflow", "jax"):
        raise UsageError(f"--strategy mirrored needs the tensorflow or jax Keras backend (running {backend})")


def parse_or_exit(argv: List[str], fv: flags.FlagValues = flags.FLAGS) -> Dict:
    """Parses and validates; on any problem prints ``error: ...`` and exits 2."""
    try:
        parse_argv(argv, fv)
        return validate(fv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(2) from None


def recipe_differences(saved: Dict, current: Dict, num_train_examples: Optional[int] = None) -> Optional[str]:
    """Names the recipe flags that differ between two flag dicts, or None.

    A flag missing from ``saved`` (a run started by an older trainer that
    did not have it) counts as having had its default value.

    ``--validation_examples`` is compared by the number of images it holds
    out: its default (None) depends on the training images loaded
    (:func:`trainers.inputs.default_validation_examples`), so a default on
    one side and a number on the other are compared only given
    ``num_train_examples`` (the training images loaded, before the split)
    and are left out of the comparison without it. Both sides default:
    equal (the other recipe flags choose the same images).
    """
    from trainers.inputs import default_validation_examples

    defaults = {name: fv.default for name, fv in new_flag_values()._flags().items()}
    keys = sorted((set(saved) | set(current)) - NON_RECIPE_FLAGS)
    diff = []
    for k in keys:
        a, b = saved.get(k, defaults.get(k)), current.get(k, defaults.get(k))
        if k == "validation_examples" and (a is None) != (b is None):
            if num_train_examples is None:
                continue  # compared once the training images are loaded
            n = default_validation_examples(num_train_examples)
            if (n if a is None else a) != (n if b is None else b):
                diff.append(f"--{k} {a!r} -> {b!r} (default: {n} of the {num_train_examples} training images)")
        elif a != b:
            diff.append(f"--{k} {a!r} -> {b!r}")
    return ", ".join(diff) if diff else None
