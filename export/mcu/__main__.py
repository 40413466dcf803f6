"""CLI: ``python -m export.mcu --model RUN/final.keras --output_dir RUN/mcu``.

Converts the model to the verified int8 flatbuffer (spiking models folded
first; ``--rewrites`` applied before converting), generates the
microcontroller C, checks the host build against the ``tflite-micro``
interpreter, builds the firmware of each ``--cores`` board, runs it under
QEMU on test images, chooses each spike-driven layer's layout by measured
instructions, and writes ``mcu_report.json``, the C (``<core>/chosen/model.c``,
``model.h``, ``build.sh``) and a summary. Exit 0; 1 when the firmware or
the host build is not byte-identical with TFLM on every image; 2 with one
``error:`` line for bad input or a missing tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.__main__ import _positive_int  # noqa: E402  (the export CLI's flag types)

PROG = "python -m export.mcu"
_DATASETS = ("fashion_mnist", "cifar10", "cifar100")
_LAYOUTS = ("auto", "dense", "spike_list", "spike_mask")
_REWRITES = ("bn_as_depthwise", "gap_as_average_pool")
_CORES = ("cortex-m4", "cortex-m55")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        _fail(message)


def _fail(message, code=2):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(code)


def _subset(flag, valid, allow_empty=False):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in valid]
        if bad or (not items and not allow_empty) or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(
                f"{flag} takes distinct comma-separated values of {', '.join(valid)}; got {text!r}")
        return items
    return parse


def build_parser():
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a trained .keras model (S2NN or ReLU)")
    src.add_argument("--tflite", help="an int8 .tflite (no neuron plan: dense layouts only)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--cores", type=_subset("--cores", _CORES, allow_empty=True), default=list(_CORES),
                   help="comma-separated boards to build and run (empty: host check only)")
    p.add_argument("--images", type=_positive_int, default=200, help="test images run under QEMU")
    p.add_argument("--host_images", type=_positive_int, default=None,
                   help="test images of the host check (default: --images)")
    p.add_argument("--measure_images", type=_positive_int, default=20, help="images of the layout measurement")
    p.add_argument("--layouts", choices=_LAYOUTS, default="auto",
                   help="spike-driven layers: auto (fewest measured instructions per layer and core) or one layout")
    p.add_argument("--rewrites", type=_subset("--rewrites", _REWRITES, allow_empty=True), default=["bn_as_depthwise"],
                   help="graph rewrites before converting (export.rewrites); default bn_as_depthwise "
                        "(a ReLU model's BNs as depthwise convs, no effect on a folded S2NN)")
    p.add_argument("--dataset", default="fashion_mnist", choices=_DATASETS)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_calibration", type=_positive_int, default=500)
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = args.model or args.tflite
    if not os.path.isfile(path):
        _fail(f"{'--model' if args.model else '--tflite'} {path!r} does not exist")
    if args.model and not path.endswith(".keras"):
        _fail(f"--model must be a .keras file, got {path!r}")
    if args.tflite and not path.endswith(".tflite"):
        _fail(f"--tflite must be a .tflite file, got {path!r}")
    from export.mcu.firmware import missing_tools

    missing = missing_tools() if args.cores else []
    if missing:
        _fail(f"{', '.join(missing)} not found: the firmware needs the ARM toolchain and QEMU "
              "(Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm), "
              "or pass --cores '' for the host check only")
    from export.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from s2nn_keras.datasets import DatasetNotFoundError, load_arrays

    n_images = max(args.images, args.host_images or 0)
    try:
        images, _ = load_arrays(args.dataset, "test", args.data_dir, n_images)
        calibration = None
        if args.model:
            calibration = load_arrays(args.dataset, "train", args.data_dir)[0][-args.num_calibration:]
    except (DatasetNotFoundError, ValueError, OSError) as err:
        _fail(str(err).splitlines()[0])

    from export.edge import EdgeError
    from export.fold import FoldError
    from export.mcu.build import ToolError
    from export.mcu.lower import UnsupportedModelError
    from export.mcu.run import format_summary, run_mcu, spike_levels

    conversion = None
    try:
        if args.model:
            flat, conversion, name = _convert(path, args, images, calibration)
        else:
            with open(path, "rb") as f:
                flat = f.read()
            name = os.path.basename(path)
        levels = spike_levels(conversion)
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "model_int8.tflite"), "wb") as f:
            f.write(flat)
        report = run_mcu(flat, images, args.cores, levels, args.layouts if args.layouts == "auto" else args.layouts,
                         num_images=args.images, measure_images=args.measure_images,
                         host_images=args.host_images or args.images, output_dir=args.output_dir, model_name=name,
                         verbose=not args.quiet)
    except (EdgeError, FoldError, UnsupportedModelError, ToolError, ValueError) as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    report["source"] = path
    report["rewrites"] = list(args.rewrites) if args.model else []
    report["spike_tensors"] = len(levels)
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
        _fail(f"outputs not byte-identical with the tflite-micro interpreter: {', '.join(bad)}", code=1)
    return 0


def _convert(path, args, images, calibration):
    from export.pipeline import load_model
    from export.rewrites import apply
    from export.runtimes import quiet_stderr
    from export.tflite import convert, ensure_folded
    import numpy as np

    try:
        with quiet_stderr():
            model = load_model(path)
    except Exception as err:
        _fail(f"cannot load {path!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    expected = tuple(int(d) for d in model.inputs[0].shape[1:])
    if expected != tuple(images.shape[1:]):
        _fail(f"model input shape {expected} does not match {args.dataset} images {tuple(images.shape[1:])}")
    model = apply(ensure_folded(model), args.rewrites)
    calib = calibration.astype(np.float32) / 255.0 if calibration.dtype == np.uint8 else calibration

    def representative():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    conversion = convert(model, "int8", representative)
    return conversion.flatbuffer, conversion, model.name


if __name__ == "__main__":
    sys.exit(main())
