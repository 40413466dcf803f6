"""Reduced-scale reproduction of the paper's Table 2 on Fashion-MNIST, on CPU.

Every method of Table 2 (relu, ste_b, slayer, ste_s, s2nn, sibnn) is trained
with the project's trainer (``python -m trainers.cifar``, one subprocess per
run, same fixed small PreActResNet and budget for all), then measured:

* test accuracy and flip-TTA accuracy (from the trainer's ``metrics.json``);
* E_Full / E_Method of Appendix B, from ``export.energy.energy_report`` on
  the trained model over the first ``--energy_examples`` test images
  (B.1 FLOPs, B.2 firing rates measured, E_MAC = 4.6 pJ, E_AC = 0.9 pJ).

The paper's own figures are printed beside ours (Table 2: CIFAR-10 ResNet18;
Table 5: Fashion-MNIST ResNet18/106) with the rankings by accuracy and by
energy efficiency, and the method pairs whose order differs from the paper.

A run whose ``metrics.json`` already exists in ``--workdir`` with the same
trainer flags is reused (``--force`` retrains).

Example (the figures in docs/RESULTS.md):
  python -m benchmarks.table2 --workdir runs/table2
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

METHODS = ("relu", "ste_b", "slayer", "ste_s", "s2nn", "sibnn")

# Paper figures (citations, not measurements). Table 2: CIFAR-10, ResNet18,
# mean +- std of 5 runs, and E_Full/E_Method. Table 5: Fashion-MNIST.
PAPER_TABLE2_RESNET18 = {
    "relu": {"accuracy": 94.89, "std": 0.13, "efficiency": 1.00},
    "ste_b": {"accuracy": 89.04, "std": 0.28, "efficiency": 12.23},
    "slayer": {"accuracy": 91.06, "std": 0.16, "efficiency": 29.26},
    "ste_s": {"accuracy": 91.60, "std": 0.09, "efficiency": 33.73},
    "s2nn": {"accuracy": 93.25, "std": 0.14, "efficiency": 38.96},
    "sibnn": {"accuracy": 93.50, "std": 0.20, "efficiency": 34.75},
}
PAPER_TABLE5_FASHION_MNIST = {
    "s2nn_resnet18": 94.81, "relu_resnet18": 95.03, "s2nn_resnet106": 94.5,
}


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.table2", description=__doc__.split("\n")[0])
    p.add_argument("--methods", type=C.csv_list(allowed=METHODS, name="method"), default=list(METHODS))
    p.add_argument("--seeds", type=C.csv_list(C.nonneg_int, name="seed"), default=[0, 1],
                   help="seeds for the relu and s2nn rows (default 0,1)")
    p.add_argument("--other_seeds", type=C.csv_list(C.nonneg_int, name="seed"), default=[0],
                   help="seeds for the other methods (default 0)")
    p.add_argument("--blocks", default="1,1,1", type=C.csv_list(C.positive_int, name="block count"))
    p.add_argument("--width", type=C.positive_int, default=16)
    p.add_argument("--epochs", type=C.positive_int, default=3)
    p.add_argument("--batch_size", type=C.positive_int, default=128)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--learning_rate", type=C.positive_float, default=0.003)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--train_examples", type=C.positive_int, default=20000,
                   help="first N Fashion-MNIST training images (default 20000)")
    p.add_argument("--test_examples", type=C.positive_int, default=10000)
    p.add_argument("--randaugment_ops", type=C.nonneg_int, default=0)
    p.add_argument("--jit_compile", action="store_true")
    p.add_argument("--energy_examples", type=C.positive_int, default=2000,
                   help="test images over which firing rates for E_Full/E_Method are measured")
    p.add_argument("--workdir", default="runs/table2", help="trainer output folders go here")
    p.add_argument("--force", action="store_true", help="retrain even if a finished run exists")
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "table2.json"))
    return p.parse_args(argv)


def trainer_args(args, method, seed, out_dir):
    argv = [
        "--dataset=fashion_mnist", "--model=custom", f"--blocks={','.join(map(str, args.blocks))}",
        f"--width={args.width}", f"--activation={method}", f"--optimizer={args.optimizer}",
        f"--learning_rate={args.learning_rate}", f"--weight_decay={args.weight_decay}",
        f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
        f"--randaugment_ops={args.randaugment_ops}", "--dropout=0.1", "--label_smoothing=0.1",
        f"--max_train_examples={args.train_examples}", f"--max_test_examples={args.test_examples}",
        f"--seed={seed}", "--tta", "--verbose=2", f"--output_dir={out_dir}",
    ]
    if args.jit_compile:
        argv.append("--jit_compile")
    return argv


def run_training(args, method, seed):
    out_dir = os.path.join(args.workdir, f"{method}_seed{seed}")
    argv = trainer_args(args, method, seed, out_dir)
    metrics_path = os.path.join(out_dir, "metrics.json")
    done = False
    if os.path.exists(metrics_path) and not args.force:
        with open(metrics_path) as f:
            m = json.load(f)
        done = m.get("epochs_completed") == args.epochs and m.get("flags", {}).get("activation") == method \
            and m.get("flags", {}).get("seed") == seed \
            and m.get("flags", {}).get("max_train_examples") == args.train_examples \
            and m.get("flags", {}).get("width") == args.width
    cmd = [sys.executable, "-m", "trainers.cifar"] + argv
    if not done:
        if os.path.isdir(out_dir) and args.force:
            import shutil
            shutil.rmtree(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        log_path = os.path.join(out_dir, "train.log")
        print(f"[{time.strftime('%H:%M:%S')}] training {method} seed {seed} -> {out_dir} (log {log_path})",
              flush=True)
        t0 = time.time()
        with open(log_path, "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"benchmarks.table2: error: training {method} seed {seed} failed (rc {rc}); see {log_path}")
        print(f"[{time.strftime('%H:%M:%S')}]   done in {time.time() - t0:.0f}s", flush=True)
    else:
        print(f"reusing finished run {out_dir}", flush=True)
    with open(metrics_path) as f:
        metrics = json.load(f)
    return out_dir, metrics, " ".join(["python -m trainers.cifar"] + argv), not done


def measure_energy(out_dir, test_images):
    import keras

    import s2nn_keras  # noqa: F401 - registers the custom layers for loading
    from export.energy import energy_report

    model = keras.models.load_model(os.path.join(out_dir, "final.keras"), compile=False)
    report = energy_report(model, test_images)
    return {
        "efficiency": float(report["efficiency"]),
        "e_full_pj": float(report["e_full_pj"]),
        "e_method_pj": float(report["e_method_pj"]),
        "total_flops": int(report["total_flops"]),
        "mean_neuron_firing_rate": (float(statistics.mean(report["neuron_firing_rates"].values()))
                                    if report["neuron_firing_rates"] else None),
    }


def ranking(values):
    return [k for k, _ in sorted(values.items(), key=lambda kv: -kv[1])]


def disagreements(ours, paper):
    keys = [k for k in ours if k in paper]
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if (ours[a] - ours[b]) * (paper[a] - paper[b]) < 0:
                hi, lo = (a, b) if ours[a] > ours[b] else (b, a)
                out.append(f"{hi} > {lo} here, {lo} > {hi} in the paper")
    return out


def main(argv=None):
    args = parse_args(argv)
    from trainers.data import load_arrays

    machine = C.machine_info()
    t_start = time.time()
    test_x, _ = load_arrays("fashion_mnist", "test", max_examples=args.energy_examples)
    test_images = test_x.astype("float32") / 255.0

    runs = []
    for method in args.methods:
        seeds = args.seeds if method in ("relu", "s2nn") else args.other_seeds
        for seed in seeds:
            out_dir, metrics, cmd, trained = run_training(args, method, seed)
            energy = measure_energy(out_dir, test_images)
            runs.append({
                "method": method, "seed": seed, "output_dir": out_dir, "trainer_command": cmd,
                "trained_in_this_invocation": trained,
                "test_accuracy": metrics["test_accuracy"], "tta_accuracy": metrics["tta_accuracy"],
                "train_time_s": metrics.get("session_train_time_s"), "wall_time_s": metrics.get("wall_time_s"),
                "num_parameters": metrics.get("num_parameters"),
                "firing_rates": metrics.get("firing_rates"), **energy,
            })
            r = runs[-1]
            print(f"  {method:7s} seed {seed}: test {100 * r['test_accuracy']:.2f}%  tta {100 * r['tta_accuracy']:.2f}%"
                  f"  E_Full/E_Method {r['efficiency']:.2f}", flush=True)

    rows = {}
    for method in args.methods:
        rs = [r for r in runs if r["method"] == method]

        def agg(key, scale=1.0):
            vals = [scale * r[key] for r in rs]
            return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
                    "values": vals}

        rows[method] = {"seeds": [r["seed"] for r in rs], "test_accuracy_pct": agg("test_accuracy", 100.0),
                        "tta_accuracy_pct": agg("tta_accuracy", 100.0), "efficiency": agg("efficiency"),
                        "paper_table2_cifar10_resnet18": PAPER_TABLE2_RESNET18[method]}

    acc = {m: rows[m]["test_accuracy_pct"]["mean"] for m in rows}
    tta = {m: rows[m]["tta_accuracy_pct"]["mean"] for m in rows}
    eff = {m: rows[m]["efficiency"]["mean"] for m in rows}
    p_acc = {m: PAPER_TABLE2_RESNET18[m]["accuracy"] for m in rows}
    p_eff = {m: PAPER_TABLE2_RESNET18[m]["efficiency"] for m in rows}
    comparison = {
        "ranking_by_accuracy": ranking(acc), "ranking_by_tta_accuracy": ranking(tta),
        "paper_ranking_by_accuracy": ranking(p_acc),
        "ranking_by_efficiency": ranking(eff), "paper_ranking_by_efficiency": ranking(p_eff),
        "accuracy_pairs_in_other_order_than_paper": disagreements(acc, p_acc),
        "efficiency_pairs_in_other_order_than_paper": disagreements(eff, p_eff),
    }

    print()
    print(f"Fashion-MNIST, PreActResNet blocks={args.blocks} width={args.width}, {args.train_examples} train / "
          f"{args.test_examples} test images, {args.epochs} epochs, batch {args.batch_size}, {args.optimizer} "
          f"lr {args.learning_rate} cosine, label smoothing 0.1, dropout 0.1, RandAugment ops {args.randaugment_ops}")
    print(f"{'method':8s} {'n':>2s} {'test acc %':>14s} {'TTA acc %':>14s} {'E_Full/E_Meth':>14s} | "
          f"{'paper T2 acc':>12s} {'paper T2 E':>10s}")

    def fmt(a):
        return f"{a['mean']:.2f}" + (f"±{a['std']:.2f}" if a["std"] is not None else "")

    for m, row in rows.items():
        p = PAPER_TABLE2_RESNET18[m]
        print(f"{m:8s} {len(row['seeds']):2d} {fmt(row['test_accuracy_pct']):>14s} {fmt(row['tta_accuracy_pct']):>14s} "
              f"{fmt(row['efficiency']):>14s} | {p['accuracy']:12.2f} {p['efficiency']:10.2f}")
    print(f"paper Table 5 (Fashion-MNIST): S2NN ResNet18 {PAPER_TABLE5_FASHION_MNIST['s2nn_resnet18']}% "
          f"(ReLU {PAPER_TABLE5_FASHION_MNIST['relu_resnet18']}%), S2NN ResNet106 "
          f"{PAPER_TABLE5_FASHION_MNIST['s2nn_resnet106']}%")
    for k, v in comparison.items():
        print(f"{k}: {v}")

    return C.write_result(
        args, "table2", machine, t_start, not_config=("output", "force"),
        energy_method="export.energy.energy_report (Appendix B; default convention, 45nm_fp32 preset) "
                      f"over the first {args.energy_examples} test images",
        rows=rows, runs=runs, comparison=comparison, paper_table2_cifar10_resnet18=PAPER_TABLE2_RESNET18,
        paper_table5_fashion_mnist=PAPER_TABLE5_FASHION_MNIST)


if __name__ == "__main__":
    sys.exit(main())
