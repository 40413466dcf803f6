"""CLI: ``python -m export --model RUN/model.keras --output_dir RUN/export``.

Folds the model's BatchNorms into firing thresholds (a ReLU model is
converted as it is), converts it to the requested TFLite formats
(calibrating the integer ones on training inputs; neurons as fused clamps
by default, ``--neuron compare`` for the comparison-op ablation), runs
every format in LiteRT and TFLite Micro on the verification inputs, checks
the spike tensors and the export's own bounds (:mod:`export.checks`),
writes the artefacts and ``export_report.json`` and prints a summary.
``--qat_epochs`` first fine-tunes the model quantization-aware on the
training inputs (:mod:`export.transform.qat`) so the int8 model matches it.

Data: a built-in data set (``--dataset``) or any model's own inputs
(``--data PATH.npz``, :mod:`export.cli.data`). Every run ends in a
verified export (exit 0) or one ``error:`` line on stderr: exit 2 for bad
input, 3 when the export's checks failed (nothing is written unless
``--allow_failed_checks``), 1 for a bug (:mod:`export.cli.harness`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.cli import harness as cli  # noqa: E402
from export.metrics import TASK_CHOICES  # noqa: E402
from export.cli.flags import DATASETS, cores, formats, nonnegative_float, positive_float, positive_int, rewrites  # noqa: E402
from export.cli.flags import accelerators  # noqa: E402
from export.formats import DEFAULT_NEURON, NEURON_FORMULATIONS, QUANTIZATIONS  # noqa: E402

PROG = "python -m export"
def build_parser():
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained .keras model (also model_qat.keras / model_folded.keras)")
    p.add_argument("--output_dir", required=True, help="where artefacts and export_report.json go")
    p.add_argument("--formats", type=formats, default=list(QUANTIZATIONS),
                   help="comma-separated subset of float32,int8,int16x8 (default: all)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="built-in data set to verify on (default: fashion_mnist; not with --data)")
    p.add_argument("--data_dir", default=None, help="directory with the data set (see s2nn_keras.datasets)")
    p.add_argument("--data", default=None, metavar="PATH.npz",
                   help="the model's own data instead of a data set: an .npz with test_images, test_labels "
                        "(leave out for regression) and train_images (calibration, --qat_epochs)")
    p.add_argument("--task", choices=TASK_CHOICES, default="auto",
                   help="how outputs are compared with Keras: classification (same top-1), regression (RMS "
                        "difference <= 1%% of the output range) or auto (regression when the output has the "
                        "input's shape or is not a class vector; default)")
    p.add_argument("--max_test_examples", type=positive_int, default=None,
                   help="verification inputs from the test split (default: all)")
    p.add_argument("--num_calibration", type=positive_int, default=500,
                   help="training inputs (the last N) used to calibrate int8/int16x8 (default: 500)")
    p.add_argument("--max_tflm_examples", type=positive_int, default=None,
                   help="cap on inputs run through TFLite Micro (default: all verification inputs)")
    p.add_argument("--neuron", choices=NEURON_FORMULATIONS, default=DEFAULT_NEURON,
                   help="how a neuron is written: saturate (default; edge ops only: a clamp fused into a "
                        "conv) or compare (GREATER_EQUAL/SELECT_V2, int16x8 ramp; the ablation)")
    p.add_argument("--no_threshold_in_bias", action="store_true",
                   help="keep u_th in the neurons after a conv instead of its bias (ablation)")
    p.add_argument("--merge_shortcuts", action="store_true",
                   help="export AveragePooling2D(1, s) + 1x1 conv shortcuts as one strided 1x1 conv "
                        "(one XNNPACK partition)")
    p.add_argument("--rewrites", type=rewrites, default=None, metavar="REWRITES",
                   help="graph rewrites before converting, comma-separated: bn_as_depthwise (a ReLU model's "
                        "BNs that no conv absorbs as one 1x1 depthwise conv, not MUL + ADD), gap_as_average_pool "
                        "(global average pooling as AVERAGE_POOL_2D, not MEAN); default both; 'none' keeps the "
                        "converter's forms")
    p.add_argument("--ethos_u", type=accelerators, default=None, metavar="ACCELERATORS",
                   help="also compile the int8 model with Arm Vela for these Ethos-U accelerators "
                        "(comma-separated, e.g. ethos-u55-128,ethos-u85-256; needs the 'edge' extra)")
    p.add_argument("--mcu", type=cores, default=None, metavar="CORES",
                   help="then generate C from the published model_int8.tflite for these targets "
                        "(cortex-m0plus,cortex-m3,cortex-m4,cortex-m7,cortex-m33,cortex-m55,generic), run it under "
                        "QEMU where the core has a board and compare every output byte with TFLite Micro, into "
                        "OUTPUT_DIR/mcu (export.mcu; needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and "
                        "qemu-system-arm); if only this step fails, the verified export stays published")
    p.add_argument("--mcu_images", type=positive_int, default=200,
                   help="verification inputs run on each core with --mcu (default: 200)")
    p.add_argument("--qat_epochs", type=nonnegative_float, default=0.0,
                   help="quantization-aware fine-tuning before the export, in epochs over the training inputs "
                        "(fractions allowed, e.g. 0.1; default 0: post-training quantization). The fine-tuned "
                        "model rounds like the int8 model and becomes the reference of every check")
    p.add_argument("--qat_train_examples", type=positive_int, default=None,
                   help="fine-tune on the first N training inputs only (default: all)")
    p.add_argument("--qat_batch_size", type=positive_int, default=None,
                   help="inputs per quantization-aware fine-tuning step (default: export.transform.qat.QATConfig's)")
    p.add_argument("--qat_learning_rate", type=positive_float, default=None,
                   help="Adam learning rate of the fine-tuning (default: export.transform.qat.QATConfig's)")
    p.add_argument("--no_spike_checks", action="store_true",
                   help="skip the per-format spike checks (two levels, runtimes, agreement with the folded model)")
    p.add_argument("--allow_failed_checks", action="store_true",
                   help="keep the files of an export whose own checks failed (export_report.json says which; "
                        "the exit status is still 3)")
    p.add_argument("--no_c_array", action="store_true", help="do not write model_int8.cc/.h")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    cli.add_debug_flag(p)
    return p


def _run(args) -> int:
    if args.qat_epochs == 0 and any(v is not None for v in (args.qat_train_examples, args.qat_batch_size,
                                                            args.qat_learning_rate)):
        raise cli.CLIError("--qat_train_examples, --qat_batch_size and --qat_learning_rate need --qat_epochs > 0")
    if args.data is not None and (args.dataset is not None or args.data_dir is not None):
        raise cli.CLIError("--data replaces --dataset/--data_dir: give one or the other")
    from export.loader import check_model_file

    try:
        check_model_file(args.model)
    except ValueError as err:
        raise cli.CLIError(f"--model: {err}") from None
    reporters = []
    if args.ethos_u:
        from export.tflite import vela

        if not vela.available():
            raise cli.CLIError("--ethos_u needs Arm Vela: pip install 's2nn_keras[edge]'")
        reporters.append(vela.reporter(args.ethos_u))
    if args.mcu and "int8" not in args.formats:
        raise cli.CLIError("--mcu compiles the int8 model: add int8 to --formats")
    if args.mcu:
        from export.cli.mcu import check_tools

        check_tools(args.mcu, "--mcu")
    from export.cli.data import check_input_shape, load_dataset, load_npz

    qat_wanted = args.qat_epochs > 0
    data = None
    if args.data is not None:  # NumPy only: a bad file is told before TensorFlow loads
        data = load_npz(args.data, args.max_test_examples, need_train=qat_wanted)
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # TF's C++ start-up lines would bury the one-line errors
    from export.loader import load_model, register_layers
    from export.tflite.quiet import silenced_stderr

    with silenced_stderr():  # device initialisation logs "failed call to cuInit" on CPU hosts
        register_layers()
    model = load_model(args.model)
    if data is None:
        data = load_dataset(args.dataset or "fashion_mnist", args.data_dir, args.max_test_examples)
    if len(model.inputs) == 1:
        check_input_shape(data, model.inputs[0].shape[1:], f"model {args.model!r}")

    from export.config import ExportConfig
    from export.pipeline import export_run

    qat = None
    if qat_wanted:
        from export.transform.qat import QATConfig
        from export.tflite.convert import is_spiking_model

        if not is_spiking_model(model):
            raise cli.CLIError(f"--qat_epochs needs a spiking model; {args.model!r} has no spiking neurons")
        options = {k: v for k, v in (("batch_size", args.qat_batch_size),
                                     ("learning_rate", args.qat_learning_rate)) if v is not None}
        qat = QATConfig(epochs=args.qat_epochs, train_examples=args.qat_train_examples, **options)
    train = data.train_images
    options = {} if args.rewrites is None else {"rewrites": tuple(args.rewrites)}
    config = ExportConfig(
        output_dir=args.output_dir, images=data.test_images, labels=data.test_labels, formats=tuple(args.formats),
        calibration_images=None if train is None else train[-args.num_calibration:],
        num_calibration=args.num_calibration, max_tflm_examples=args.max_tflm_examples,
        c_array=not args.no_c_array, neuron=args.neuron, threshold_in_bias=not args.no_threshold_in_bias,
        merge_shortcuts=args.merge_shortcuts, spike_checks=not args.no_spike_checks, reporters=tuple(reporters),
        qat=qat, qat_images=train if qat is not None else None, task=args.task, verbose=not args.quiet,
        extra={"model_path": args.model, "data": data.source, **({} if args.data else {"dataset": data.source})},
        allow_failed_checks=args.allow_failed_checks, **options)
    result = export_run(model, config)
    mcu_error = None
    if args.mcu:  # from the files just published: the exact verified model_int8.tflite (export.mcu.artefact)
        from export.cli.mcu import after_export

        from export.transform.inputs import model_inputs   # what the model takes (raw pixels after a Rescaling)

        mcu_error = after_export(args.output_dir, model_inputs(data.test_images, model), args.mcu, args.mcu_images,
                                 args.quiet)
    checks = result.report["checks"]
    if not checks["passed"]:  # kept only because --allow_failed_checks asked for it
        from export.checks import ExportCheckError, failure_line

        also = f"; {cli.one_line(mcu_error)}" if mcu_error is not None else ""
        raise ExportCheckError(f"the export's checks failed: {failure_line(checks)}; the files are kept in "
                               f"{args.output_dir!r} as --allow_failed_checks asked{also}")
    if mcu_error is not None:
        raise mcu_error
    return 0


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (module docstring)."""
    return cli.run(PROG, build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
