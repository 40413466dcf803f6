"""Prints the Markdown tables of docs/RESULTS.md from benchmarks/results/*.json.

    python -m benchmarks.report            # all sections found
    python -m benchmarks.report train_step # one section

Only formats what the benchmark scripts measured; it runs no benchmark.
"""

from __future__ import annotations

import json
import os
import sys

from benchmarks import common as C

SECTIONS = ("train_step", "surrogate_profile", "inference", "inference_float32", "neuron_ops", "table2",
            "gpu_fullscale")


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


def _ops(ops):
    return ", ".join(f"{o}×{n}" for o, n in ops.items())


def inference(d):
    """benchmarks/results/inference.json (int8) or inference_float32.json."""
    c = d["config"]
    fmt = d.get("format", "int8")
    targets = any("targets_met" in r for r in d["summary"])
    to_compare = any("latency_ratio_to_compare" in r for r in d["summary"])
    out = [f"Command: `{d['command']}` (total {d['total_wall_s'] / 60:.1f} min)  ", f"Machine: {_machine(d)}  ",
           f"Rounds: {c['rounds']}, images per round sized for ~{c['round_ms']:g} ms per variant "
           f"(at most {c['max_images_per_round']}); one thread."]
    for arch, m in d["models"].items():
        a = m["architecture"]
        out.append(f"* {arch}: PreActResNet blocks {a['blocks']} width {a['width']}"
                   + (f", stem stride {a['stem_stride']}" if a.get("stem_stride", 1) != 1 else "") + ", input "
                   f"{'×'.join(map(str, a['input_shape']))}; S2NN {m['provenance']['s2nn']}; "
                   f"ReLU {m['provenance']['relu']}")
    runtimes = c["runtimes"]
    baselines = [b for b in ("relu", "relu_bnfolded") if any(r.get("baseline", "relu") == b for r in d["summary"])]
    out += ["", f"Ratios to the {fmt} ReLU model in each baseline (latency: median of per-round ratios): "
            "`relu` as the converter writes it (pre-activation BNs as MUL + ADD, global pooling as MEAN)"
            + (", `relu_bnfolded` through the export's default rewrites (those BNs as 1×1 depthwise convs, "
               "global pooling as AVERAGE_POOL_2D, as in the S2NN export)" if "relu_bnfolded" in baselines else "")
            + "." + (" Targets: each ≤ 1.0." if targets else "")
            + (" `× compare`: the saturate S2NN over the compare S2NN, per round." if to_compare else ""), "",
            "| arch | S2NN variant | baseline | " + " | ".join(f"latency × ReLU, {rt}" for rt in runtimes)
            + "".join(f" | latency × compare, {rt}" for rt in runtimes if to_compare)
            + " | size × ReLU | TFLM arena × ReLU |" + (" targets missed |" if targets else ""),
            "|---|---|---|" + "---:|" * (len(runtimes) * (1 + to_compare) + 2) + ("---|" if targets else "")]
    for r in d["summary"]:
        line = (f"| {r['arch']} | {r['variant']} | {r.get('baseline', 'relu')} | "
                + " | ".join(f"{r['latency_ratio'][rt]:.3f}" for rt in runtimes)
                + "".join(f" | {r['latency_ratio_to_compare'][rt]:.3f}" if rt in r.get("latency_ratio_to_compare", {})
                          else " | " for rt in runtimes if to_compare)
                + f" | {r['size_ratio']:.3f} | {r.get('arena_ratio', float('nan')):.3f} |")
        if targets:
            missed = [k for k, ok in r["targets_met"].items() if not ok]
            line += " " + (", ".join(missed) if missed else "none") + " |"
        out.append(line)
    out += ["", "Per image, invoke only: CPU time of the process (the ratios above) and wall time (which on "
            "this oversubscribed machine includes the waits for a core; see the IQRs).", "",
            "| arch | runtime | variant | CPU ms/image | ReLU CPU ms/image | × ReLU (IQR) | "
            + ("CPU × compare (IQR) | " if to_compare else "") + "wall ms/image | "
            "ReLU wall ms/image | wall × ReLU (IQR) | " + ("wall × compare (IQR) | " if to_compare else "")
            + "images/round |",
            "|---|---|---|" + "---:|" * (7 + 2 * to_compare)]
    for r in d["latency"]:
        if r["variant"] in ("relu", "relu_bnfolded"):
            continue

        def vs_compare(prefix):
            if not to_compare:
                return ""
            if f"{prefix}ratio_to_compare" not in r:
                return " |"
            return f" {r[prefix + 'ratio_to_compare']:.3f} ({r[prefix + 'compare_ratio_iqr']:.3f}) |"

        out.append(f"| {r['arch']} | {r['runtime']} | {r['variant']} | {r['latency_ms']:.3f} | "
                   f"{r['relu_latency_ms']:.3f} | {r['ratio_to_relu']:.3f} ({r['ratio_iqr']:.3f}) |{vs_compare('')} "
                   f"{r['wall_latency_ms']:.3f} | {r['wall_relu_latency_ms']:.3f} | "
                   f"{r['wall_ratio_to_relu']:.3f} ({r['wall_ratio_iqr']:.3f}) |{vs_compare('wall_')} "
                   f"{r['images_per_round']} |")
    if "relu_bnfolded" in baselines:
        out += ["", "The same invokes against the BN-folded ReLU (`relu_bnfolded`):", "",
                "| arch | runtime | variant | CPU ms/image | relu_bnfolded CPU ms/image | × relu_bnfolded (IQR) | "
                "wall × relu_bnfolded (IQR) |", "|---|---|---|---:|---:|---:|---:|"]
        for r in d["latency"]:
            if r["variant"] in ("relu", "relu_bnfolded") or "ratio_to_relu_bnfolded" not in r:
                continue
            out.append(f"| {r['arch']} | {r['runtime']} | {r['variant']} | {r['latency_ms']:.3f} | "
                       f"{r['relu_bnfolded_latency_ms']:.3f} | {r['ratio_to_relu_bnfolded']:.3f} "
                       f"({r['ratio_to_relu_bnfolded_iqr']:.3f}) | {r['wall_ratio_to_relu_bnfolded']:.3f} "
                       f"({r['wall_ratio_to_relu_bnfolded_iqr']:.3f}) |")
    out += ["", "Flatbuffers (size breakdown from `export.tflite.flatbuffer`: constant data, quantization parameters, "
            "tensor names, rest = operators, shapes, tables, alignment):", "",
            "| flatbuffer | bytes | constants / quant. params / names / rest | tensors | TFLM arena bytes "
            "(head: activations / tail: persistent, of it per-op buffers) | LiteRT top-1 | agreement with Keras | ops |",
            "|---|---:|---|---:|---:|---:|---:|---|"]
    for k, v in d["flatbuffers"].items():
        acc = v.get("litert_accuracy")
        agree = v.get("agreement_with_keras")
        b = v.get("size_breakdown", {})
        parts = " / ".join(str(b.get(x, "")) for x in ("constant_data", "quantization_params", "tensor_names", "other"))
        a = v.get("tflm_arena_breakdown") or {}
        arena = f"{v.get('tflm_arena_bytes')}" + (f" ({a['head']} / {a['tail']}, {a.get('persistent_buffer_data')})"
                                                  if "head" in a else "")
        out.append(f"| {k} | {v['size_bytes']} | {parts} | {b.get('tensors', '')} | {arena} | "
                   f"{'' if acc is None else f'{acc:.3f}'} | {'' if agree is None else f'{agree:.3f}'} | "
                   f"{_ops(v['ops'])} |")
    vela_rows = [(k, acc, r) for k, v in d["flatbuffers"].items() for acc, r in v.get("vela", {}).items()]
    if vela_rows:
        first = vela_rows[0][2]
        out += ["", f"Vela {first['vela_version']} (`export.tflite.vela`), `--optimise {first['optimise']}`; system config "
                + "; ".join(sorted({f"{acc}: {r['system_config']} / {r['memory_mode']}, "
                                    f"{r['core_clock_hz'] / 1e6:.0f} MHz" for _, acc, r in vela_rows}))
                + ". Estimated time covers the NPU operators only (Vela does not model the CPU fallbacks).", "",
                "| flatbuffer | Ethos-U | NPU ops | NPU partitions | CPU fallback | est. ms | "
                + "".join(f"est. × {b} | " for b in baselines) + "SRAM KiB | flash KiB | Vela model bytes |",
                "|---|---|---:|---:|---|---:|" + "---:|" * len(baselines) + "---:|---:|---:|"]
        for k, acc, r in vela_rows:
            ratios = ""
            for b in baselines:
                relu = d["flatbuffers"].get(k.split("/")[0] + f"/{b}", {}).get("vela", {}).get(acc)
                ratios += (f"{r['estimated_inference_ms'] / relu['estimated_inference_ms']:.3f}" if relu else "") + " | "
            out.append(f"| {k} | {acc} | {100 * r['npu_op_fraction']:.1f} % ({r['npu_ops']}/{r['input_ops']}) | "
                       f"{r['npu_partitions']} | {_ops(r['cpu_op_types']) or 'none'} | "
                       f"{r['estimated_inference_ms']:.3f} | {ratios}{r['sram_bytes'] / 1024:.1f} | "
                       f"{r['flash_bytes'] / 1024:.1f} | {r['optimized_model_bytes']} |")
    return "\n".join(out)


def inference_float32(d):
    return inference(d)


def neuron_ops(d):
    c = d["config"]
    out = [f"Command: `{d['command']}`  ", f"Machine: {_machine(d)}  ",
           f"Tensor 1×{c['height']}×{c['width']}×{c['channels']}, int8, {c['rounds']} rounds.",
           "CPU time per invoke; `neuron µs` = variant minus `base` (the same model without BN and neuron), "
           "per round.", "",
           "| runtime | context | variant | µs/invoke | × relu (IQR) | neuron µs (IQR) |", "|---|---|---|---:|---:|---:|"]
    for r in d["results"]:
        neuron = f"{r['neuron_us']:.2f} ({r['neuron_us_iqr']:.2f})" if "neuron_us" in r else ""
        out.append(f"| {r['runtime']} | {r['context']} | {r['variant']} | {r['latency_us']:.2f} | "
                   f"{r['ratio_to_relu']:.3f} ({r['ratio_iqr']:.3f}) | {neuron} |")
    accs = sorted({acc for v in d["flatbuffers"].values() for acc in v.get("vela", {})})
    out += ["", "| layer | ops | " + " | ".join(f"{acc} cycles (NPU ops, CPU fallback)" for acc in accs) + " |",
            "|---|---|" + "---|" * len(accs)]
    for k, v in d["flatbuffers"].items():
        cells = []
        for acc in accs:
            r = v.get("vela", {}).get(acc)
            cells.append("" if r is None else f"{r['estimated_cycles']} ({100 * r['npu_op_fraction']:.0f} %, "
                                              f"{_ops(r['cpu_op_types']) or 'none'})")
        out.append(f"| {k} | {_ops(v['ops'])} | " + " | ".join(cells) + " |")
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
