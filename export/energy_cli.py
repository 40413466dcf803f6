"""Command line of the energy report: ``python -m export.energy``.

    python -m export.energy --model run/model.keras --dataset fashion_mnist \\
        --max_test_examples 1000 --output_dir run/energy \\
        [--tflite export/model_int8.tflite ...] [--folded_model export/model_folded.keras]

``--model`` may also be a ``.tflite`` file (a TFLite-only report). Bad input
ends with exactly one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from export.quiet import import_tensorflow_quietly

__all__ = ["PROG", "parser", "main"]

PROG = "python -m export.energy"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    from s2nn_keras.energy import CONVENTIONS, PRESETS

    p = _Parser(prog=PROG, description="Appendix B energy report (FLOPs, firing rates, E_Full/E_Method).")
    p.add_argument("--model", required=True, help="a .keras model (or a .tflite file for a TFLite-only report)")
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, cifar10 or cifar100")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--max_test_examples", type=int, default=1000, help="test examples measured (0 = all)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--output_dir", default="energy_report")
    p.add_argument("--convention", default="default", choices=list(CONVENTIONS))
    p.add_argument("--preset", default="45nm_fp32", choices=list(PRESETS))
    p.add_argument("--e_mac_pj", type=float, default=None, help="user E_MAC in pJ (with --e_ac_pj)")
    p.add_argument("--e_ac_pj", type=float, default=None, help="user E_AC in pJ (with --e_mac_pj)")
    p.add_argument("--tflite", action="append", default=[], metavar="PATH",
                   help="exported TFLite model(s) to report beside the Keras model (repeatable)")
    p.add_argument("--folded_model", default=None, metavar="PATH",
                   help="the BN-folded .keras model the --tflite files came from (python -m export writes "
                        "model_folded.keras); adds the TFLite-vs-folded rate differences")
    return p


def _first_line(err):
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _load_keras(path):
    import keras

    import s2nn_keras  # noqa: F401  (registers S2Activation and the regularizer)
    import s2nn_keras.regularizers  # noqa: F401
    try:
        import export.neurons  # noqa: F401  (registers the folded neuron)
    except ImportError:
        pass
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise ValueError(f"cannot load {path}: {_first_line(err)}") from None


def _validate(args):
    from s2nn_keras.energy import energies

    if args.max_test_examples < 0:
        raise ValueError(f"--max_test_examples must be >= 0, got {args.max_test_examples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    energies(args.preset, args.e_mac_pj, args.e_ac_pj)
    if args.folded_model and not args.tflite:
        raise ValueError("--folded_model is only used with --tflite")
    for path in [args.model] + args.tflite + ([args.folded_model] if args.folded_model else []):
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")


def main(argv=None) -> int:
    try:
        # Before anything imports Keras: with the TensorFlow backend that
        # imports TensorFlow, whose start-up lines would bury our one line.
        import_tensorflow_quietly()
    except ImportError as err:
        sys.stderr.write(f"{PROG}: error: {_first_line(err)}\n")
        return 2
    args = parser().parse_args(argv)
    try:
        _validate(args)
        import logging

        logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warnings; errors are ours
        from s2nn_keras.datasets import DatasetNotFoundError, load_arrays, to_float

        try:
            images, _ = load_arrays(args.dataset, "test", data_dir=args.data_dir,
                                    max_examples=args.max_test_examples or None)
        except DatasetNotFoundError as err:
            raise ValueError(_first_line(err)) from None
        x = to_float(images)
        from export.energy_report import format_table, write_energy_report, write_files

        if args.model.endswith(".tflite"):
            from export.energy_tflite import tflite_energy_report

            report = tflite_energy_report(args.model, x, args.convention, args.preset,
                                          e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj)
            paths = write_files(report, args.output_dir)
            print(format_table(report))
        else:
            model = _load_keras(args.model)
            folded = _load_keras(args.folded_model) if args.folded_model else None
            expected = tuple(model.inputs[0].shape[1:])
            if tuple(x.shape[1:]) != expected:
                raise ValueError(f"model {args.model} expects inputs {expected}, dataset {args.dataset} "
                                 f"has {tuple(x.shape[1:])}")
            tfl = {os.path.splitext(os.path.basename(p))[0]: p for p in args.tflite}
            report = write_energy_report(model, x, args.output_dir, args.convention, args.preset,
                                         e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj, tflite_models=tfl or None,
                                         folded_model=folded, batch_size=args.batch_size)
            skipped = any(n.startswith("energy_report.png not written") for n in report["notes"])
            paths = {"png": None if skipped else os.path.join(args.output_dir, "energy_report.png")}
        written = ["energy_report.json", "energy_layers.csv"] + (["energy_report.png"] if paths["png"] else [])
        print(f"wrote {', '.join(os.path.join(args.output_dir, w) for w in written)}")
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        sys.stderr.write(f"{PROG}: error: {_first_line(err)}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
