"""CLI: ``python -m export.mcu --model RUN/final.keras --output_dir RUN/mcu``.

Converts the model to the verified int8 flatbuffer (spiking models folded
first; ``--rewrites`` applied before converting), generates the
microcontroller C, checks the host build against the ``tflite-micro``
interpreter, builds the firmware of each ``--cores`` board, runs it under
QEMU on test images, chooses each spike-driven layer's layout by measured
instructions, and writes ``mcu_report.json``, the C (``<core>/chosen/model.c``,
``model.h``, ``build.sh``) and a summary. Ends as ``python -m export``
does (:mod:`export.cli.harness`): exit 0; 3 with one ``error:`` line when the
firmware or the host build is not byte-identical with TFLM on every image;
2 for bad input or a missing tool.
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
from export.mcu.targets import CORES  # noqa: E402

PROG = "python -m export.mcu"


def build_parser():
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a trained .keras model (S2NN or ReLU)")
    src.add_argument("--tflite", help="an int8 .tflite (no neuron plan: dense layouts only)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cores", type=optional_cores, default=list(CORES),
                   help=f"comma-separated boards to build and run ({','.join(CORES)}; '' for the host check only)")
    p.add_argument("--images", type=positive_int, default=DEFAULT_IMAGES, help="test images run under QEMU")
    p.add_argument("--host_images", type=positive_int, default=None,
                   help="test images of the host check (default: --images)")
    p.add_argument("--measure_images", type=positive_int, default=DEFAULT_MEASURE_IMAGES,
                   help="images of the layout measurement")
    p.add_argument("--layouts", choices=("auto",) + LAYOUTS, default="auto",
                   help="spike-driven layers: auto (fewest measured instructions per layer and core) or one layout")
    p.add_argument("--rewrites", type=optional_rewrites, default=list(DEFAULT_REWRITES),
                   help="graph rewrites before converting (export.transform.rewrites; default: "
                        f"{','.join(DEFAULT_REWRITES)}; 'none' for the converter's forms)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="built-in data set (default: fashion_mnist; not with --data)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--data", default=None, metavar="PATH.npz",
                   help="the model's own inputs: an .npz with test_images and train_images (as python -m export)")
    p.add_argument("--num_calibration", type=positive_int, default=500)
    p.add_argument("--quiet", action="store_true")
    cli.add_debug_flag(p)
    return p


def _run(args) -> int:
    path = args.model or args.tflite
    if args.data is not None and (args.dataset is not None or args.data_dir is not None):
        raise cli.CLIError("--data replaces --dataset/--data_dir: give one or the other")
    if args.model:
        from export.loader import check_model_file

        try:
            check_model_file(path)
        except ValueError as err:
            raise cli.CLIError(f"--model: {err}") from None
    elif not os.path.isfile(path) or not path.endswith(".tflite"):
        raise cli.CLIError(f"--tflite {path!r} " + ("is not a .tflite file" if os.path.isfile(path)
                                                     else "does not exist"))
    from export.mcu.firmware import missing_tools

    missing = missing_tools() if args.cores else []
    if missing:
        raise cli.CLIError(f"{', '.join(missing)} not found: the firmware needs the ARM toolchain and QEMU "
                           "(Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm), "
                           "or pass --cores '' for the host check only")
    from export.cli.data import check_input_shape, load_dataset, load_npz

    n_images = max(args.images, args.host_images or 0)
    if args.data is not None:
        data = load_npz(args.data, n_images, need_train=bool(args.model))
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    if args.data is None:
        data = load_dataset(args.dataset or "fashion_mnist", args.data_dir, n_images, need_train=bool(args.model))
    from export.mcu.config import McuConfig
    from export.mcu.run import format_summary, run_mcu

    if args.model:
        model = _convert(path, args, data, check_input_shape)     # its flatbuffer and spike tensors
        flat, name = model.flatbuffer, model.model.name
    else:
        with open(path, "rb") as f:
            model = flat = f.read()
        name = os.path.basename(path)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "model_int8.tflite"), "wb") as f:
        f.write(flat)
    config = McuConfig(cores=args.cores, layouts=args.layouts, num_images=args.images,
                       measure_images=args.measure_images, host_images=args.host_images or args.images,
                       output_dir=args.output_dir, model_name=name, verbose=not args.quiet)
    report = run_mcu(model, data.test_images, config)
    report["source"] = path
    report["rewrites"] = list(args.rewrites) if args.model else []
    with open(os.path.join(args.output_dir, "mcu_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    if not args.quiet:
        print(format_summary(report))
        print(f"  -> {os.path.join(args.output_dir, 'mcu_report.json')}; C and firmware in "
              f"{args.output_dir}/<core>/chosen (model.c, model.h, build.sh)")
    bad = [f"host {k}" for k, v in report["host"].items() if v["fraction"] < 1.0]
    bad += [c for c, e in report["cores"].items() if e["bit_exact"]["fraction"] < 1.0 or
            e["dense_bit_exact"]["equal"] < e["dense_bit_exact"]["images"]]
    if bad:
        from export.checks import ExportCheckError

        raise ExportCheckError(f"outputs not byte-identical with the tflite-micro interpreter: {', '.join(bad)} "
                               f"(mcu_report.json in {args.output_dir!r} says where)")
    return 0


def _convert(path, args, data, check_input_shape):
    """The verified int8 conversion of the model at ``path`` (folded first)."""
    from export.loader import load_model
    from export.tflite.convert import convert
    from s2nn_keras.datasets import as_model_input

    model = load_model(path)
    check_input_shape(data, model.inputs[0].shape[1:], f"model {path!r}")
    train = data.train_images[-args.num_calibration:]
    calib = as_model_input(train)

    def representative():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    return convert(model, "int8", representative, rewrites=tuple(args.rewrites))


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (module docstring)."""
    return cli.run(PROG, build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
