"""CLI: ``python -m export --model RUN/model.keras --output_dir RUN/export``.

Folds the model's BatchNorms into firing thresholds (a ReLU model is
converted as it is), converts it to the requested TFLite formats
(calibrating the integer ones on training images; neurons as fused clamps
by default, ``--neuron compare`` for the comparison-op ablation), runs
every format in LiteRT and TFLite Micro on the test split, checks the spike
tensors, writes the artefacts and ``export_report.json`` and prints a
summary. ``--qat_epochs`` first fine-tunes the model quantization-aware on
the training split (:mod:`export.qat`) so the int8 model matches it. Bad input gives a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.formats import DEFAULT_NEURON, NEURON_FORMULATIONS, QUANTIZATIONS as _FORMATS  # noqa: E402

_DATASETS = ("fashion_mnist", "cifar10", "cifar100")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"python -m export: error: {message}\n")
        sys.exit(2)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = _nonnegative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _subset(flag, valid, text):
    """Comma-separated ``text`` as a list of distinct members of ``valid``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in valid for t in items):
        raise argparse.ArgumentTypeError(
            f"{flag} takes a comma-separated subset of {','.join(valid)}, got {text!r}")
    return list(dict.fromkeys(items))


def _formats(text):
    return _subset("--formats", _FORMATS, text)


def _accelerators(text):
    from export.vela import ACCELERATORS

    return _subset("--ethos_u", ACCELERATORS, text)


def build_parser():
    p = _Parser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained .keras model")
    p.add_argument("--output_dir", required=True, help="where artefacts and export_report.json go")
    p.add_argument("--formats", type=_formats, default=list(_FORMATS),
                   help="comma-separated subset of float32,int8,int16x8 (default: all)")
    p.add_argument("--dataset", default="fashion_mnist", choices=_DATASETS)
    p.add_argument("--data_dir", default=None, help="directory with the data set (see s2nn_keras.datasets)")
    p.add_argument("--max_test_examples", type=_positive_int, default=None,
                   help="verification images from the test split (default: all)")
    p.add_argument("--num_calibration", type=_positive_int, default=500,
                   help="training images used to calibrate int8/int16x8 (default: 500)")
    p.add_argument("--max_tflm_examples", type=_positive_int, default=None,
                   help="cap on images run through TFLite Micro (default: all verification images)")
    p.add_argument("--neuron", choices=NEURON_FORMULATIONS, default=DEFAULT_NEURON,
                   help="how a neuron is written: saturate (default; edge ops only: a clamp fused into a "
                        "conv) or compare (GREATER_EQUAL/SELECT_V2, int16x8 ramp; the ablation)")
    p.add_argument("--no_threshold_in_bias", action="store_true",
                   help="keep u_th in the neurons after a conv instead of its bias (ablation)")
    p.add_argument("--merge_shortcuts", action="store_true",
                   help="export AveragePooling2D(1, s) + 1x1 conv shortcuts as one strided 1x1 conv "
                        "(one XNNPACK partition)")
    p.add_argument("--ethos_u", type=_accelerators, default=None, metavar="ACCELERATORS",
                   help="also compile the int8 model with Arm Vela for these Ethos-U accelerators "
                        "(comma-separated, e.g. ethos-u55-128,ethos-u85-256; needs the 'edge' extra)")
    p.add_argument("--qat_epochs", type=_nonnegative_float, default=0.0,
                   help="quantization-aware fine-tuning before the export, in epochs over the training images "
                        "(fractions allowed, e.g. 0.1; default 0: post-training quantization). The fine-tuned "
                        "model rounds like the int8 model and becomes the reference of every check")
    p.add_argument("--qat_train_examples", type=_positive_int, default=None,
                   help="fine-tune on the first N training images only (default: all)")
    p.add_argument("--qat_batch_size", type=_positive_int, default=None,
                   help="images per quantization-aware fine-tuning step (default: export.qat.QATConfig's)")
    p.add_argument("--qat_learning_rate", type=_positive_float, default=None,
                   help="Adam learning rate of the fine-tuning (default: export.qat.QATConfig's)")
    p.add_argument("--no_spike_checks", action="store_true",
                   help="skip the per-format spike checks (two levels, runtimes, agreement with the folded model)")
    p.add_argument("--no_c_array", action="store_true", help="do not write model_int8.cc/.h")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.qat_epochs == 0 and any(v is not None for v in (args.qat_train_examples, args.qat_batch_size,
                                                            args.qat_learning_rate)):
        _fail("--qat_train_examples, --qat_batch_size and --qat_learning_rate need --qat_epochs > 0")
    if not os.path.isfile(args.model):
        _fail(f"--model {args.model!r} does not exist")
    if not args.model.endswith(".keras"):
        _fail(f"--model must be a .keras file, got {args.model!r}")
    from export.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # TF's C++ start-up lines would bury the one-line errors
    from s2nn_keras.datasets import DatasetNotFoundError, load_arrays

    try:
        images, labels = load_arrays(args.dataset, "test", args.data_dir, args.max_test_examples)
        # Calibration from the end of the training split.
        train_images, _ = load_arrays(args.dataset, "train", args.data_dir)
        calibration = train_images[-args.num_calibration:]
    except (DatasetNotFoundError, ValueError, OSError) as err:
        _fail(str(err).splitlines()[0])
    from export.pipeline import export_run, load_model

    from export.runtimes import quiet_stderr

    try:
        with quiet_stderr():  # device initialisation logs "failed call to cuInit" on CPU hosts
            model = load_model(args.model)
    except Exception as err:  # unreadable or not a Keras model
        _fail(f"cannot load {args.model!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    expected = tuple(int(d) for d in model.inputs[0].shape[1:])
    if expected != tuple(images.shape[1:]):
        _fail(f"model input shape {expected} does not match {args.dataset} images {tuple(images.shape[1:])}")
    from export.edge import EdgeError
    from export.fold import FoldError

    reporters = []
    if args.ethos_u:
        from export import vela

        if not vela.available():
            _fail("--ethos_u needs Arm Vela: pip install 's2nn_keras[edge]'")
        reporters.append(vela.reporter(args.ethos_u))

    qat = None
    if args.qat_epochs > 0:
        from export.qat import QATConfig
        from export.tflite import is_spiking_model

        if not is_spiking_model(model):
            _fail(f"--qat_epochs needs a spiking model; {args.model!r} has no spiking neurons")
        options = {k: v for k, v in (("batch_size", args.qat_batch_size),
                                     ("learning_rate", args.qat_learning_rate)) if v is not None}
        qat = QATConfig(epochs=args.qat_epochs, train_examples=args.qat_train_examples, **options)

    from export.qat import QATError

    try:
        export_run(model, args.output_dir, images, labels, formats=args.formats,
                   calibration_images=calibration, num_calibration=args.num_calibration,
                   max_tflm_examples=args.max_tflm_examples, c_array=not args.no_c_array,
                   verbose=not args.quiet, extra={"model_path": args.model, "dataset": args.dataset},
                   threshold_in_bias=not args.no_threshold_in_bias, neuron=args.neuron,
                   spike_checks=not args.no_spike_checks, merge_shortcuts=args.merge_shortcuts,
                   reporters=reporters, qat=qat, qat_images=train_images if qat is not None else None)
    except (FoldError, EdgeError, QATError) as err:
        _fail(str(err))
    return 0


def _fail(message):
    sys.stderr.write(f"python -m export: error: {message}\n")
    sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
