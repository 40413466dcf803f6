"""Command line of the energy report: ``python -m export.energy``.

    python -m export.energy --model run/model.keras --dataset fashion_mnist \\
        --max_test_examples 1000 --output_dir run/energy \\
        [--tflite export/model_int8.tflite ...] [--folded_model export/model_folded.keras]

``--model`` may be any ``.keras`` file the package writes (a trained model,
``model_folded.keras``, ``model_qat.keras``) or a ``.tflite`` file (a
TFLite-only report; its rows are named after the Keras layers, from
``--folded_model`` when given, else from the converter's tensor names).
``--data PATH.npz`` measures on a model's own inputs (:mod:`export.cli.data`).
Every run ends with the report written (exit 0) or one ``error:`` line on
stderr (exit 2 for bad input, 1 for a bug; :mod:`export.cli.harness`).
"""

from __future__ import annotations

import os
import sys

from export.cli import harness as cli

__all__ = ["PROG", "parser", "main"]

PROG = "python -m export.energy"


def parser():
    # No TensorFlow here: bad files and flags are told in a second; the
    # convention and preset names are checked once Keras is imported (_run).
    p = cli.Parser(prog=PROG, description="Appendix B energy report (FLOPs, firing rates, E_Full/E_Method).")
    p.add_argument("--model", required=True, help="a .keras model (or a .tflite file for a TFLite-only report)")
    p.add_argument("--dataset", default=None, help="fashion_mnist (default), cifar10 or cifar100; not with --data")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--data", default=None, metavar="PATH.npz",
                   help="the model's own inputs instead of a data set: an .npz with test_images")
    p.add_argument("--max_test_examples", type=int, default=1000, help="test examples measured (0 = all)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--output_dir", default="energy_report")
    p.add_argument("--convention", default="default",
                   help="what R(l) charges (s2nn_keras.energy.CONVENTIONS: default, paper, ...)")
    p.add_argument("--preset", default="45nm_fp32", help="E_MAC / E_AC values (s2nn_keras.energy.PRESETS)")
    p.add_argument("--e_mac_pj", type=float, default=None, help="user E_MAC in pJ (with --e_ac_pj)")
    p.add_argument("--e_ac_pj", type=float, default=None, help="user E_AC in pJ (with --e_mac_pj)")
    p.add_argument("--tflite", action="append", default=[], metavar="PATH",
                   help="exported TFLite model(s) to report beside the Keras model (repeatable)")
    p.add_argument("--folded_model", default=None, metavar="PATH",
                   help="the BN-folded .keras model the --tflite files came from (python -m export writes "
                        "model_folded.keras); adds the TFLite-vs-folded rate differences, and names the rows "
                        "of a .tflite --model")
    cli.add_debug_flag(p)
    return p


def _validate(args):
    """The flags and files, without TensorFlow."""
    from export.loader import check_model_file

    if args.max_test_examples < 0:
        raise cli.CLIError(f"--max_test_examples must be >= 0, got {args.max_test_examples}")
    if args.batch_size < 1:
        raise cli.CLIError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.data is not None and (args.dataset is not None or args.data_dir is not None):
        raise cli.CLIError("--data replaces --dataset/--data_dir: give one or the other")
    tflite_model = args.model.endswith(".tflite")
    if args.folded_model and not (args.tflite or tflite_model):
        raise cli.CLIError("--folded_model is only used with --tflite or a .tflite --model")
    for flag, path in ([("--model", args.model)] if tflite_model else []) + [("--tflite", p) for p in args.tflite]:
        if not os.path.isfile(path):
            raise cli.CLIError(f"{flag}: {path!r} does not exist" if not os.path.exists(path)
                               else f"{flag}: {path!r} is not a file")
        if flag == "--tflite" and not path.endswith(".tflite"):
            raise cli.CLIError(f"--tflite takes .tflite files, got {path!r}")
    for flag, path in (("--model", None if tflite_model else args.model), ("--folded_model", args.folded_model)):
        if path is not None:
            try:
                check_model_file(path)
            except ValueError as err:
                raise cli.CLIError(f"{flag}: {err}") from None


def _tflite_input_shape(path):
    from export.tflite import flatbuffer

    try:
        graph = flatbuffer.read_model(path).main
    except Exception as err:  # the flatbuffer reader raises whatever the bytes make it raise
        from export.loader import first_line

        raise cli.CLIError(f"--model {path!r} is not a TFLite model file ({type(err).__name__}: "
                           f"{first_line(err)})") from None
    if len(graph.inputs) != 1:
        raise cli.CLIError(f"--model {path!r} has {len(graph.inputs)} inputs; the energy report takes one")
    return tuple(int(d) if d > 0 else None for d in graph.tensors[graph.inputs[0]].shape_signature[1:])


def _validate_energies(args):
    from s2nn_keras.energy import CONVENTIONS, PRESETS, energies

    for flag, value, valid in (("--convention", args.convention, CONVENTIONS), ("--preset", args.preset, PRESETS)):
        if value not in valid:
            raise cli.CLIError(f"{flag}: invalid choice {value!r} (choose from {', '.join(valid)})")
    try:
        energies(args.preset, args.e_mac_pj, args.e_ac_pj)
    except ValueError as err:
        raise cli.CLIError(str(err)) from None


def _run(args) -> int:
    _validate(args)
    from export.cli.data import check_input_shape, load_dataset, load_npz

    n = args.max_test_examples or None
    data = load_npz(args.data, n) if args.data is not None else None  # NumPy only: before TensorFlow
    # Before anything imports Keras: with the TensorFlow backend that
    # imports TensorFlow, whose start-up lines would bury our one line.
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    _validate_energies(args)
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warnings; errors are ours
    from export.transform.inputs import model_inputs

    if data is None:
        data = load_dataset(args.dataset or "fashion_mnist", args.data_dir, n, need_train=False)
    images = data.test_images
    x = model_inputs(images)
    from export.energy.report import format_table, write_energy_report, write_files
    from export.loader import load_model

    folded = load_model(args.folded_model) if args.folded_model else None
    if args.model.endswith(".tflite"):
        from export.energy.tflite import tflite_energy_report

        check_input_shape(data, _tflite_input_shape(args.model), f"TFLite model {args.model!r}")
        report = tflite_energy_report(args.model, x, args.convention, args.preset, e_mac_pj=args.e_mac_pj,
                                      e_ac_pj=args.e_ac_pj, keras_model=folded)
        paths = write_files(report, args.output_dir)
        print(format_table(report))
    else:
        model = load_model(args.model)
        if len(model.inputs) != 1:
            raise cli.CLIError(f"--model {args.model!r} has {len(model.inputs)} inputs; the energy report takes one")
        check_input_shape(data, model.inputs[0].shape[1:], f"model {args.model!r}")
        x = model_inputs(images, model)   # raw pixels for a model that rescales its input itself
        for path in args.tflite:
            check_input_shape(data, _tflite_input_shape(path), f"TFLite model {path!r}")
        tfl = {os.path.splitext(os.path.basename(p))[0]: p for p in args.tflite}
        report = write_energy_report(model, x, args.output_dir, args.convention, args.preset,
                                     e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj, tflite_models=tfl or None,
                                     folded_model=folded, batch_size=args.batch_size)
        skipped = any(n.startswith("energy_report.png not written") for n in report["notes"])
        paths = {"png": None if skipped else os.path.join(args.output_dir, "energy_report.png")}
    written = ["energy_report.json", "energy_layers.csv"] + (["energy_report.png"] if paths["png"] else [])
    print(f"wrote {', '.join(os.path.join(args.output_dir, w) for w in written)}")
    return 0


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (module docstring)."""
    return cli.run(PROG, parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
