"""Accuracy vs E_Full/E_Method trade-off of the firing-rate regularizer.

Trains a small PreActResNet S2NN on a Fashion-MNIST subset once per
regularizer strength (``FiringRateRegularizer(l1=...)`` on every neuron,
plus an optional ReLU baseline), then measures test accuracy, the mean
neuron firing rate and the Appendix B energy efficiency (both accounting
conventions, 45 nm fp32 energies) with :func:`s2nn_keras.energy.energy_report`.
Prints a Markdown table and writes a JSON file.

    python -m benchmarks.energy_tradeoff            # defaults: ~4 min on 2 cores

Every number in the table comes from this run; nothing is cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.energy_tradeoff", description=__doc__.splitlines()[0])
    p.add_argument("--train_examples", type=int, default=6000)
    p.add_argument("--test_examples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--blocks", default="1,1,1", help="basic blocks per stage")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--strengths", default="0,0.1,0.3,1.0", help="l1 weights of FiringRateRegularizer")
    p.add_argument("--relu_baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--output", default=os.path.join("benchmarks", "results", "energy_tradeoff.json"))
    return p.parse_args(argv)


def _run_one(activation, l1, args, x_train, y_train, x_test, y_test):
    import keras

    from s2nn_keras.energy import energy_report
    from s2nn_keras.models import PreActResNet
    from s2nn_keras.regularizers import FiringRateRegularizer

    keras.utils.set_random_seed(args.seed)
    reg = FiringRateRegularizer(l1=l1) if (activation != "relu" and l1 > 0) else None
    blocks = [int(b) for b in args.blocks.split(",")]
    model = PreActResNet(blocks, x_train.shape[1:], 10, activation=activation, width=args.width,
                         activity_regularizer=reg)
    steps = args.epochs * -(-len(x_train) // args.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    opt = keras.optimizers.Adam(lr) if args.optimizer == "adam" else keras.optimizers.SGD(lr, momentum=0.9)
    model.compile(opt,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.time()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    train_s = time.time() - start
    logits = model.predict(x_test, batch_size=256, verbose=0)
    acc = float((logits.argmax(-1) == y_test).mean())
    rep = energy_report(model, x_test, convention="default")
    rep_p = energy_report(model, x_test, convention="paper")
    rates = list(rep["neuron_firing_rates"].values())
    return {
        "activation": activation,
        "rate_l1": l1 if activation != "relu" else None,
        "test_accuracy": acc,
        "mean_firing_rate": (sum(rates) / len(rates)) if rates else None,
        "neuron_firing_rates": rep["neuron_firing_rates"],
        "efficiency_default": rep["efficiency"],
        "efficiency_paper": rep_p["efficiency"],
        "e_full_pj": rep["e_full_pj"],
        "e_method_pj_default": rep["e_method_pj"],
        "e_method_pj_paper": rep_p["e_method_pj"],
        "total_flops": rep["total_flops"],
        "train_seconds": train_s,
    }


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows):
    lines = ["| activation | rate L1 | test acc. | mean R | E_Full/E_Method (default) | E_Full/E_Method (paper) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['activation']} | {_fmt(r['rate_l1'], 'g')} | {100 * r['test_accuracy']:.2f}% | "
                     f"{_fmt(r['mean_firing_rate'], '.4f')} | {_fmt(r['efficiency_default'], '.2f')} | "
                     f"{_fmt(r['efficiency_paper'], '.2f')} |")
    return "\n".join(lines)


def main(argv=None):
    args = _args(argv)
    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
        if any(s < 0 for s in strengths) or not strengths:
            raise ValueError
    except ValueError:
        sys.stderr.write(f"error: --strengths must be comma-separated numbers >= 0, got {args.strengths!r}\n")
        return 2
    import keras

    from s2nn_keras import datasets

    x_train, y_train = datasets.load_arrays("fashion_mnist", "train", args.data_dir, args.train_examples)
    x_test, y_test = datasets.load_arrays("fashion_mnist", "test", args.data_dir, args.test_examples)
    x_train, x_test = datasets.to_float(x_train), datasets.to_float(x_test)
    runs = [("s2nn", s) for s in strengths] + ([("relu", 0.0)] if args.relu_baseline else [])
    rows = []
    start = time.time()
    for activation, l1 in runs:
        row = _run_one(activation, l1, args, x_train, y_train, x_test, y_test)
        rows.append(row)
        print(f"{activation} l1={l1:g}: acc {100 * row['test_accuracy']:.2f}%, "
              f"E_Full/E_Method {row['efficiency_default']:.2f} (default) / {row['efficiency_paper']:.2f} (paper), "
              f"{row['train_seconds']:.0f} s", flush=True)
    total = time.time() - start
    print()
    print(table(rows))
    result = {
        "command": "python -m benchmarks.energy_tradeoff " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "model": f"PreActResNet blocks [{args.blocks}], width {args.width}, s2nn neurons (tau_s 1, alpha 0.2)",
        "energy": "45nm_fp32 preset: E_MAC 4.6 pJ, E_AC 0.9 pJ (Horowitz, ISSCC 2014)",
        "rows": rows,
        "total_seconds": total,
        "environment": {"backend": keras.backend.backend(), "keras": keras.__version__,
                        "tensorflow": getattr(sys.modules.get("tensorflow"), "__version__", None),
                        "python": platform.python_version(), "cpu_count": os.cpu_count()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.output} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
