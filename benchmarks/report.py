"""Prints the Markdown tables of docs/RESULTS.md from benchmarks/results/*.json.

    python -m benchmarks.report            # all sections found
    python -m benchmarks.report train_step # one section

Only formats what the benchmark scripts measured; it runs no benchmark.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks import _common as C

SECTIONS = ("train_step", "surrogate_profile", "inference", "neuron_ops", "table2", "gpu_fullscale")


def _load(name):
    path = os.path.join(C.RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _machine(d):
    m = d["machine"]
    return (f"{m['date_utc']} UTC, {m['cpu_model']}, {m['cpu_cores']} cores, TF {m['tensorflow']}, "
            f"Keras {m['keras']}, commit {m.get('git_commit')}, load average (1/5/15 min) "
            f"{m.get('load_avg_start')} at start, {m.get('load_avg_end')} at end")


def train_step(d):
    out = [f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}", "",
           "| mode | activation | wall ms/step | images/s | wall × relu | CPU ms/step | CPU × relu |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in d["results"]:
        out.append(f"| {r['mode']} | {r['activation']} | {r['step_ms_median']:.1f} | {r['images_per_s']:.0f} | "
                   f"{r['ratio_to_relu_median']:.3f} | {r['cpu_ms_median']:.1f} | {r['cpu_ratio_to_relu_median']:.3f} |")
    return "\n".join(out)


def surrogate_profile(d):
    eq = d.get("gradient_equality_current_vs_multiply_guard", {})
    out = [f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}  ", f"Model: {d['model']}", ""]
    if eq:
        out += ["Gradients, current vs multiply_guard: " + "; ".join(
            f"{k}: " + ", ".join(f"{m} {v}" for m, v in modes.items()) for k, modes in eq.items()), ""]
    out += ["| XLA step: activation/variant | fusions | YNNPACK reduce fusions | XLA reduce-window fusions | exp ops | divide ops |",
            "|---|---:|---:|---:|---:|---:|"]
    for k, c in d["hlo_census"].items():
        out.append(f"| {k} | {c['fusions']} | {c['ynnpack_reduce_fusions']} | {c['xla_reduce_window_fusions']} | "
                   f"{c['exponential_ops']} | {c['divide_ops']} |")
    out += ["", "| mode/activation/variant | CPU ms/step | CPU × relu (median) | IQR of ratio |", "|---|---:|---:|---:|"]
    for r in d["results"]:
        out.append(f"| {r['key']} | {r['cpu_ms_median']:.1f} | {r['cpu_ratio_to_relu_median']:.3f} | {r['cpu_ratio_iqr']:.3f} |")
    return "\n".join(out)


def inference(d):
    out = [f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}  ",
           f"Models: S2NN {d['models']['s2nn']}; ReLU {d['models']['relu']}", "",
           "| runtime | S2NN variant | format | S2NN ms/image | ReLU ms/image | latency × ReLU | S2NN bytes | "
           "ReLU bytes | size × ReLU | TFLM arena S2NN / ReLU | top-1 S2NN / ReLU |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in d["results"]:
        out.append(f"| {r['runtime']} | {r.get('spiking_variant', 's2nn')} | {r['format']} | {r['s2nn_latency_ms']:.3f} | "
                   f"{r['relu_latency_ms']:.3f} | {r['latency_ratio_s2nn_over_relu']:.3f} | {r['s2nn_size_bytes']} | "
                   f"{r['relu_size_bytes']} | {r['size_ratio_s2nn_over_relu']:.3f} | {r['s2nn_tflm_arena_bytes']} / "
                   f"{r['relu_tflm_arena_bytes']} | {r['s2nn_accuracy']:.3f} / {r['relu_accuracy']:.3f} |")
    out += ["", "| flatbuffer | ops | LiteRT default plan |", "|---|---|---|"]
    for k, v in d["flatbuffers"].items():
        ops = ", ".join(f"{o}×{n}" for o, n in v["ops"].items())
        plan = v.get("litert_plan", {})
        out.append(f"| {k} | {ops} | {plan.get('model_ops')} ops, {plan.get('xnnpack_partitions')} XNNPACK partitions |")
    return "\n".join(out)


def neuron_ops(d):
    out = [f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}", "",
           "| runtime | format | variant | µs/invoke | × relu_bn |", "|---|---|---|---:|---:|"]
    for r in d["results"]:
        out.append(f"| {r['runtime']} | {r['format']} | {r['variant']} | {r['latency_us']:.2f} | {r['ratio_to_relu_bn']:.3f} |")
    return "\n".join(out)


def table2(d):
    def fmt(a):
        return f"{a['mean']:.2f}" + (f" ± {a['std']:.2f}" if a["std"] is not None else "")

    c = d["config"]
    out = [f"Command: `{d['command']}` (total {d['total_wall_s'] / 60:.1f} min)  ", f"Machine: {_machine(d)}  ",
           f"Setup: Fashion-MNIST, first {c['train_examples']} training images, {c['test_examples']} test images; "
           f"PreActResNet blocks {c['blocks']} width {c['width']}; {c['epochs']} epochs, batch {c['batch_size']}, "
           f"{c['optimizer']} lr {c['learning_rate']} cosine, weight decay {c['weight_decay']}, label smoothing 0.1, "
           f"dropout 0.1, RandAugment ops {c['randaugment_ops']}, jit_compile {c['jit_compile']}; "
           f"E_Full/E_Method: {d['energy_method']}.", "",
           "| method | seeds | test acc % | flip-TTA acc % | E_Full/E_Method | paper T2 acc % (CIFAR-10 R18) | paper T2 E_Full/E_Method |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for m, row in d["rows"].items():
        p = row["paper_table2_cifar10_resnet18"]
        out.append(f"| {m} | {','.join(map(str, row['seeds']))} | {fmt(row['test_accuracy_pct'])} | "
                   f"{fmt(row['tta_accuracy_pct'])} | {fmt(row['efficiency'])} | {p['accuracy']:.2f} ± {p['std']:.2f} | "
                   f"{p['efficiency']:.2f} |")
    p5 = d["paper_table5_fashion_mnist"]
    out += ["", f"Paper Table 5 (Fashion-MNIST): S²NN ResNet18 {p5['s2nn_resnet18']} % (its ReLU network "
            f"{p5['relu_resnet18']} %), S²NN ResNet106 {p5['s2nn_resnet106']} %.", ""]
    for k, v in d["comparison"].items():
        out.append(f"* {k.replace('_', ' ')}: {', '.join(v) if v else 'none'}")
    out += ["", "Per run:", "", "| method | seed | test acc % | TTA % | E_Full/E_Method | mean firing rate | train s |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for r in d["runs"]:
        fr = r.get("mean_neuron_firing_rate")
        out.append(f"| {r['method']} | {r['seed']} | {100 * r['test_accuracy']:.2f} | {100 * r['tta_accuracy']:.2f} | "
                   f"{r['efficiency']:.2f} | {'' if fr is None else f'{fr:.3f}'} | {r['train_time_s']:.0f} |")
    return "\n".join(out)


def gpu_fullscale(d):
    f = d["trainer_flags"]
    return "\n".join([
        f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}", "",
        f"{f['model']} ({f['activation']}, width {f['width']}), budget {d['time_budget_s']} s: {d['steps']} steps "
        f"({d['epochs_done']} epochs of {f['epochs']}), {d['images_per_s']} images/s ({d['images_per_s_kind']}), "
        f"test accuracy {100 * d['test_accuracy']:.2f} %, TTA {100 * d['tta_accuracy']:.2f} % on {d['test_examples']} "
        f"test images; full recipe at this rate {d['full_recipe_hours_at_this_rate']} h."])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    for name in argv:
        if name not in SECTIONS:
            C.fail("benchmarks.report", f"unknown section {name!r}; valid: {', '.join(SECTIONS)}")
    for name in argv or SECTIONS:
        d = _load(name)
        if d is None:
            if argv:
                C.fail("benchmarks.report", f"no benchmarks/results/{name}.json; run python -m benchmarks.{name}")
            continue
        print(f"## {name}\n")
        print(globals()[name](d))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
