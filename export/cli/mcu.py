"""CLI: ``python -m export.mcu --export_dir RUN/export --output_dir RUN/mcu``.

Generates the microcontroller C from the exact int8 ``.tflite`` an export
verified (:mod:`export.mcu.artefact`: ``model_int8.tflite`` and the spike
tensors ``export_report.json`` records for that file), checks the host
build against the ``tflite-micro`` interpreter, builds the firmware of each
``--cores`` board, runs it under QEMU on test images, chooses each
spike-driven layer's layout by measured instructions (targets without a
board are generated and compiled), and writes ``mcu_report.json``, the C
(``<core>/chosen/model.c``, ``model.h``, ``build.sh``), the drop-in
libraries (``<core>/library``: CMake; ``<core>/arduino/s2_model``) and a
summary. The source is one of

* ``--export_dir DIR``: an export of ``python -m export`` (int8);
* ``--model FILE.keras``: exports it first (``python -m export``'s
  verified int8 export into ``OUTPUT_DIR/export``), then as ``--export_dir``;
* ``--tflite FILE``: any int8 ``.tflite`` (spike-driven layouts when an
  ``export_report.json`` beside it describes that very file).

Ends as ``python -m export`` does (:mod:`export.cli.harness`): exit 0; 3
with one ``error:`` line when the firmware or a host build is not
byte-identical with TFLM on every image, or the model failed its export's
checks (kept by ``--allow_failed_checks``); 2 for bad input, a missing
tool, a model that does not fit a board.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.cli import harness as cli  # noqa: E402
from export.cli.flags import DATASETS, optional_cores, optional_rewrites, positive_int  # noqa: E402
from export.formats import DEFAULT_REWRITES  # noqa: E402
from export.mcu.config import DEFAULT_IMAGES, DEFAULT_MEASURE_IMAGES  # noqa: E402
from export.mcu.lower import LAYOUTS  # noqa: E402
from export.mcu.targets import CORES, DEFAULT_CORES, MCU_TARGETS  # noqa: E402

PROG = "python -m export.mcu"
REPORT = "mcu_report.json"
__all__ = ["main", "build_parser", "run_verified", "outcome", "after_export", "check_tools", "REPORT"]


def build_parser():
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export_dir", help="an export folder of python -m export (model_int8.tflite, "
                                          "export_report.json): the C of its verified int8 model")
    src.add_argument("--model", help="a trained .keras model (S2NN or ReLU): exported and verified first, "
                                     "into OUTPUT_DIR/export")
    src.add_argument("--tflite", help="an int8 .tflite (spike-driven layouts only with the export_report.json "
                                      "of its export beside it)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cores", type=optional_cores, default=list(DEFAULT_CORES),
                   help=f"comma-separated targets ({','.join(MCU_TARGETS)}; built and run on a QEMU board: "
                        f"{','.join(CORES)}; the others compiled; '' for the host check only; default: "
                        f"{','.join(DEFAULT_CORES)})")
    p.add_argument("--images", type=positive_int, default=DEFAULT_IMAGES, help="test images run under QEMU")
    p.add_argument("--host_images", type=positive_int, default=None,
                   help="test images of the host check (default: --images)")
    p.add_argument("--measure_images", type=positive_int, default=DEFAULT_MEASURE_IMAGES,
                   help="images of the layout measurement")
    p.add_argument("--layouts", choices=("auto",) + LAYOUTS, default="auto",
                   help="spike-driven layers: auto (fewest measured instructions per layer and core) or one layout")
    p.add_argument("--rewrites", type=optional_rewrites, default=list(DEFAULT_REWRITES),
                   help="with --model: graph rewrites before converting (export.transform.rewrites; default: "
                        f"{','.join(DEFAULT_REWRITES)}; 'none' for the converter's forms)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="built-in data set (default: fashion_mnist; not with --data)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--data", default=None, metavar="PATH.npz",
                   help="the model's own inputs: an .npz with test_images (and test_labels, train_images for "
                        "--model), as python -m export")
    p.add_argument("--num_calibration", type=positive_int, default=500, help="with --model: calibration inputs")
    p.add_argument("--quiet", action="store_true")
    cli.add_debug_flag(p)
    return p


def check_tools(cores, flag: str) -> None:
    """One error line before any work when a tool ``cores`` need is missing."""
    from export.mcu.firmware import missing_tools

    missing = missing_tools(cores)
    if missing:
        raise cli.CLIError(f"{', '.join(missing)} not found: {flag} {','.join(cores)} needs the ARM toolchain"
                           f"{' and QEMU' if 'qemu-system-arm' in missing else ''} (Debian: apt-get install "
                           "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm), or pass --cores '' for "
                           "the host check only")


def run_verified(source, images, config, quiet: bool = False):
    """Runs :func:`export.mcu.run.run_mcu` on ``source`` (an
    :class:`export.mcu.artefact.VerifiedTflite`), writes ``mcu_report.json``
    into ``config.output_dir`` and prints the summary. Returns the report
    and the error the run must end with (:func:`outcome`), or ``None``."""
    from export.mcu.run import format_summary, run_mcu

    os.makedirs(config.output_dir, exist_ok=True)
    report = run_mcu(source, images, config)
    path = os.path.join(config.output_dir, REPORT)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    if not quiet:
        print(format_summary(report))
        print(f"  -> {path}; C and firmware in {config.output_dir}/<core>/chosen (model.c, model.h, build.sh), "
              f"drop-in libraries in <core>/library (CMake) and <core>/arduino/s2_model")
    return report, outcome(report, config.output_dir)


def outcome(report, output_dir):
    """:class:`export.checks.ExportCheckError` (exit 3) when a build of the
    report is not byte-identical with TFLM, else ``None``."""
    from export.checks import ExportCheckError
    from export.mcu.run import mismatches

    bad = mismatches(report)
    if bad:
        return ExportCheckError(f"outputs not byte-identical with the tflite-micro interpreter: {', '.join(bad)} "
                                f"({REPORT} in {output_dir!r} says where)")
    return None


def after_export(output_dir, images, cores, num_images, quiet=False):
    """``python -m export --mcu``: the C of the int8 export just published
    in ``output_dir`` (its ``model_int8.tflite`` and spike tensors, read
    back from the files), into ``output_dir/mcu``; its report also under
    ``formats.int8.mcu`` of ``export_report.json``. Returns ``None``, or
    the error the run must end with (one line, its exit status: 3 for
    outputs that differ from TFLM, 2 for a model that does not fit a
    board, an op without a kernel, a failing tool); the verified export
    stays published either way."""
    from export.mcu.artefact import EXPORT_REPORT, load_verified
    from export.mcu.config import McuConfig
    from export.report import write_report

    out = os.path.join(output_dir, "mcu")
    try:
        source = load_verified(output_dir)
        config = McuConfig(cores=tuple(cores), num_images=num_images, output_dir=out, model_name=source.name,
                           verbose=not quiet)
        figures, error = run_verified(source, images, config, quiet)
    except Exception as err:  # noqa: BLE001 -- a bug still ends as a bug (exit 1)
        if cli.exit_status(err) == cli.EXIT_INTERNAL:
            raise
        figures, error = {"error": cli.one_line(err)}, err
    if error is not None:
        from export.checks import ExportCheckError

        line = f"--mcu: {cli.one_line(error)} (the verified export is published in {output_dir!r})"
        figures["error"] = line
        error = ExportCheckError(line) if cli.exit_status(error) == cli.EXIT_CHECKS else cli.CLIError(line)
    path = os.path.join(output_dir, EXPORT_REPORT)
    with open(path) as f:
        report = json.load(f)
    report["formats"]["int8"]["mcu"] = figures
    write_report(report, path)
    return error


def _run(args) -> int:
    if args.data is not None and (args.dataset is not None or args.data_dir is not None):
        raise cli.CLIError("--data replaces --dataset/--data_dir: give one or the other")
    if args.model:
        from export.loader import check_model_file

        try:
            check_model_file(args.model)
        except ValueError as err:
            raise cli.CLIError(f"--model: {err}") from None
    elif args.tflite and (not os.path.isfile(args.tflite) or not args.tflite.endswith(".tflite")):
        raise cli.CLIError(f"--tflite {args.tflite!r} " + ("is not a .tflite file" if os.path.isfile(args.tflite)
                                                           else "does not exist"))
    check_tools(args.cores, "--cores")
    from export.mcu.artefact import load_verified

    source = None if args.model else load_verified(args.export_dir or args.tflite)   # bad folders fail fast
    from export.cli.data import load_dataset, load_npz

    n_images = max(args.images, args.host_images or 0)
    data = load_npz(args.data, n_images, need_train=bool(args.model)) if args.data is not None else None
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    if data is None:
        data = load_dataset(args.dataset or "fashion_mnist", args.data_dir, n_images, need_train=bool(args.model))
    if args.model:
        source = _export(args, data)
    from export.mcu.config import McuConfig

    config = McuConfig(cores=args.cores, layouts=args.layouts, num_images=args.images,
                       measure_images=args.measure_images, host_images=args.host_images or args.images,
                       output_dir=args.output_dir, model_name=source.name, verbose=not args.quiet)
    report, error = run_verified(source, data.test_images, config, args.quiet)
    if error is not None:
        raise error
    if report.get("export_checks", {}).get("passed") is False:
        from export.checks import ExportCheckError

        raise ExportCheckError(f"the int8 model of {source.path!r} failed its export's checks "
                               f"({report['export_checks']['failed']}): its C is in {args.output_dir!r}, "
                               "bit-exact with TFLite Micro, but not of a verified model")
    return 0


def _export(args, data):
    """``--model``: the verified int8 export into ``OUTPUT_DIR/export``
    (:func:`export.pipeline.export_run`, as ``python -m export --formats
    int8``); its published ``model_int8.tflite``."""
    from export.cli.data import check_input_shape
    from export.config import ExportConfig
    from export.loader import load_model, register_layers
    from export.mcu.artefact import load_verified
    from export.pipeline import export_run
    from export.tflite.quiet import silenced_stderr

    with silenced_stderr():
        register_layers()
    model = load_model(args.model)
    check_input_shape(data, model.inputs[0].shape[1:], f"model {args.model!r}")
    out = os.path.join(args.output_dir, "export")
    train = data.train_images
    export_run(model, ExportConfig(
        output_dir=out, images=data.test_images, labels=data.test_labels, formats=("int8",),
        calibration_images=None if train is None else train[-args.num_calibration:],
        num_calibration=args.num_calibration, c_array=False, rewrites=tuple(args.rewrites), verbose=not args.quiet,
        extra={"model_path": args.model, "data": data.source}))
    return load_verified(out)


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (module docstring)."""
    return cli.run(PROG, build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
