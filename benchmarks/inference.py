"""Inference cost of the int8 (or float32) S2NN against the ReLU network of the same architecture.

For each architecture (28x28x1 Fashion-MNIST input, 10 classes):

* ``quickstart``: PreActResNet, blocks [1, 1, 1], width 24, stride-1 stem (the
  quickstart's network until commit 3c0da24; the figures in docs/RESULTS.md
  were first measured on it);
* ``quickstart_s2``: the current quickstart network (blocks [1, 1, 1],
  width 32, stride-2 stem);
* ``resnet18_w16`` / ``resnet18_w64``: PreActResNet18, width 16 / 64;

each model variant is exported to a full-integer int8 flatbuffer (``--format
float32``: a float32 flatbuffer) through ``export.to_tflite`` with the same
converter settings and calibration images:

* ``s2nn``: the default export (``neuron="saturate"``: the step as a clamp
  fused into the convolutions; only ops XNNPACK, CMSIS-NN and Ethos-U55 run;
  in float32 the clamp's gain is ``2^40``, see docs/EXPORT.md);
* ``s2nn_compare``: the ablation ``neuron="compare"`` (GREATER_EQUAL /
  SELECT_V2 neurons, the export before issue 10);
* ``relu``: the same architecture with ReLU as the converter writes it
  (``rewrites=()``: BN folded into the convs where a conv precedes it, each
  pre-activation BN as MUL + ADD, global pooling as MEAN);
* ``relu_bnfolded``: the same ReLU model through the export's default
  rewrites (``export.transform.rewrites``: pre-activation BNs as 1x1 depthwise convs,
  global pooling as AVERAGE_POOL_2D), as the S2NN variants are; a ratio to
  it isolates spiking from BN folding.

Every ratio is given against both baselines (``ratio_to_relu``,
``ratio_to_relu_bnfolded``; summary rows carry ``baseline``).

Measured per flatbuffer: file size, op histogram (``export.tflite.flatbuffer``), the
smallest TFLite Micro tensor arena (bisection), Vela's compilation for
Ethos-U55-128 and Ethos-U85-256 (``export.tflite.vela``: NPU op fraction, NPU
partitions, estimated time, SRAM, flash), top-1 agreement with the Keras
model in LiteRT; and the per-image ``invoke()`` latency in three runtimes,
one thread: ``litert`` (``ai_edge_litert`` with its default XNNPACK
delegate), ``litert_noxnn`` (builtin kernels only) and ``tflm`` (TFLite Micro
Python interpreter, reference kernels). Latencies are timed **interleaved**:
every image goes through all variants of an architecture back to back (the
order rotating from image to image), so load on the shared machine hits all
alike. Each invoke is timed in process CPU time (what the targets use: on
the shared, oversubscribed machine it leaves out the waits for a core) and in
wall time; reported are the median over rounds of the per-round median and
the **median per-round ratio** variant/ReLU (and ``s2nn``/``s2nn_compare``,
the formulation choice, when both are measured). The images per round are
sized from a warm-up so each variant gets about ``--round_ms`` per round (at
least one image).

``--format float32`` times the float32 exports the same way (the question
it answers: is ``saturate``, chosen for float32 too because XNNPACK
delegates every op, also faster than ``compare``); Vela is skipped (it
compiles integer models only) and the results go to
``results/inference_float32.json``, so the int8 file is left as it is.

Models: architectures in ``--train_archs`` (default: quickstart) are trained
briefly here (``--train_examples`` images, ``--epochs``); the others keep
their seeded random initialisation with BatchNorm statistics measured on
``--bn_calibration_examples`` training images (forward passes in training
mode, no weight update). Latency, size and arena do not depend on the
weights. LiteRT top-1 and agreement with the Keras model are measured for
trained (or loaded) models only: a random network's logits are near ties,
so its top-1 agreement says nothing about the export. Accuracy is not a
target here (``python -m export`` reports it on trained models).

Targets (issue 10): int8 S2NN latency <= 1.0x ReLU in each runtime, file size
<= 1.0x, TFLM arena <= 1.0x. (No targets for float32: ratios only.)

Example (the figures in docs/RESULTS.md):
  python -m benchmarks.inference
  python -m benchmarks.inference --format float32 --archs quickstart,resnet18_w16 --rounds 30
  python -m benchmarks.inference --archs quickstart --rounds 5   # quick look
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

ARCHS = {
    "quickstart": {"blocks": [1, 1, 1], "width": 24},
    "quickstart_s2": {"blocks": [1, 1, 1], "width": 32, "stem_stride": 2},
    "resnet18_w16": {"blocks": [2, 2, 2, 2], "width": 16},
    "resnet18_w64": {"blocks": [2, 2, 2, 2], "width": 64},
}
VARIANTS = ("s2nn", "s2nn_compare", "relu", "relu_bnfolded")
BASELINES = ("relu", "relu_bnfolded")
RUNTIMES = ("litert", "litert_noxnn", "tflm")
ACCELERATORS = ("ethos-u55-128", "ethos-u85-256")
FORMATS = ("int8", "float32")
OUTPUTS = {"int8": "inference.json", "float32": "inference_float32.json"}
INPUT_SHAPE = (28, 28, 1)


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.inference", description=__doc__.split("\n")[0])
    p.add_argument("--archs", type=C.csv_list(allowed=tuple(ARCHS), name="architecture"), default=list(ARCHS))
    p.add_argument("--format", choices=FORMATS, default="int8",
                   help="flatbuffer format of every variant (float32: no Vela; output inference_float32.json)")
    p.add_argument("--variants", type=C.csv_list(allowed=VARIANTS, name="variant"), default=list(VARIANTS),
                   help="relu and relu_bnfolded are always measured (the baselines)")
    p.add_argument("--runtimes", type=C.csv_list(allowed=RUNTIMES, name="runtime"), default=list(RUNTIMES))
    p.add_argument("--accelerators", type=C.csv_list(name="accelerator"), default=list(ACCELERATORS),
                   help="Ethos-U configurations for Vela (export.tflite.vela.ACCELERATORS)")
    p.add_argument("--no_vela", action="store_true", help="skip the Vela compilations (always for float32)")
    p.add_argument("--s2nn_model", default=None, help=".keras S2NN model for the one architecture in --archs")
    p.add_argument("--relu_model", default=None, help=".keras ReLU model for the one architecture in --archs")
    p.add_argument("--train_archs", type=C.csv_list(allowed=tuple(ARCHS) + ("none",), name="architecture"),
                   default=["quickstart", "quickstart_s2"], help="architectures trained briefly here ('none': all random init)")
    p.add_argument("--train_examples", type=C.positive_int, default=5000)
    p.add_argument("--epochs", type=C.positive_int, default=1)
    p.add_argument("--bn_calibration_examples", type=C.positive_int, default=256)
    p.add_argument("--calibration_examples", type=C.positive_int, default=200,
                   help="int8 representative images (the last test images, disjoint from the accuracy images)")
    p.add_argument("--accuracy_examples", type=C.positive_int, default=300,
                   help="test images for LiteRT top-1 / agreement with Keras")
    p.add_argument("--rounds", type=C.positive_int, default=25)
    p.add_argument("--round_ms", type=C.positive_float, default=400.0,
                   help="target time per variant per round (images per round sized from a warm-up)")
    p.add_argument("--max_images_per_round", type=C.positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None,
                   help="JSON path (default benchmarks/results/inference.json, inference_float32.json for float32)")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = os.path.join(C.RESULTS_DIR, OUTPUTS[args.format])
    if args.format == "float32":
        args.no_vela = True  # Vela compiles int8/int16 models only
    for baseline in BASELINES:
        if baseline not in args.variants:
            args.variants.append(baseline)
    if "none" in args.train_archs:
        args.train_archs = []
    for flag in ("s2nn_model", "relu_model"):
        path = getattr(args, flag)
        if path is None:
            continue
        if len(args.archs) != 1:
            p.error(f"--{flag} needs exactly one architecture in --archs, got {','.join(args.archs)}")
        if not os.path.isfile(path):
            p.error(f"--{flag}: no such file {path!r}")
    if not args.no_vela:
        from export.tflite import vela

        bad = [a for a in args.accelerators if a not in vela.ACCELERATORS]
        if bad:
            p.error(f"unknown accelerator {bad[0]!r}; valid: {', '.join(vela.ACCELERATORS)}")
        if not vela.available():
            p.error(f"the Vela figures need ethos-u-vela ({vela.INSTALL_HINT}); or pass --no_vela")
    return args


# -- models -------------------------------------------------------------------

def build(arch, activation, seed):
    import keras

    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(seed)
    spec = ARCHS[arch]
    return PreActResNet(spec["blocks"], INPUT_SHAPE, 10, activation=activation, width=spec["width"],
                        stem_stride=spec.get("stem_stride", 1))


def train_briefly(model, x, y, epochs):
    import keras

    steps = epochs * -(-len(x) // 128)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=128, epochs=epochs, verbose=0, shuffle=True)


def calibrate_batchnorm(model, x):
    """Sets every BN's moving mean/variance to the statistics of ``x``
    (one training-mode forward pass with momentum 0; weights unchanged)."""
    import keras

    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    model(x, training=True)
    for l, m in zip(bns, saved):
        l.momentum = m


def export_flatbuffer(model, variant, fmt, representative_data):
    """The variant's ``fmt`` (int8 / float32) flatbuffer, always through
    ``export.to_tflite`` (the calibration images are used for int8 only)."""
    from export import to_tflite

    data = representative_data if fmt == "int8" else None
    if variant == "relu":
        return to_tflite(model, fmt, data, rewrites=())
    if variant == "relu_bnfolded":
        return to_tflite(model, fmt, data)
    return to_tflite(model, fmt, data, neuron="compare" if variant == "s2nn_compare" else "saturate")


def size_breakdown(blob):
    """Where a flatbuffer's bytes go (``export.tflite.flatbuffer``): constant data,
    quantization parameters (float32 scales + int64 zero points), tensor
    names, and the rest (operators, shapes, tables, alignment)."""
    from export.tflite.flatbuffer import read_model

    tensors = [t for sg in read_model(blob).subgraphs for t in sg.tensors]
    data = sum(int(t.data.nbytes) for t in tensors if t.data is not None)
    quant = sum(4 * t.quantization.scales.size + 8 * t.quantization.zero_points.size
                for t in tensors if t.quantization is not None)
    names = sum(len(t.name.encode()) for t in tensors)
    return {"tensors": len(tensors), "constant_data": data, "quantization_params": quant, "tensor_names": names,
            "other": len(blob) - data - quant - names}


def tflm_arena_breakdown(blob, arena_bytes):
    """TFLite Micro's own record of the arena (``print_allocations``): the
    head (activation buffers, planned), the tail (persistent: per-op
    buffers such as per-channel requantization parameters, tensor and node
    structs) and the tail's parts, in bytes."""
    import ctypes
    import re
    import tempfile

    from tflite_micro.python.tflite_micro import runtime as tflm

    libc = ctypes.CDLL(None)
    interp = tflm.Interpreter.from_bytes(bytes(blob), arena_size=int(arena_bytes))
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as f:
        try:
            os.dup2(f.fileno(), 2)
            interp.print_allocations()  # TFLM's MicroPrintf: vfprintf(stderr, ...)
            libc.fflush(None)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    out = {}
    for m in re.finditer(r"Arena allocation (total|head|tail) (\d+) bytes", text):
        out[m.group(1)] = int(m.group(2))
    for m in re.finditer(r"'([^']+)' used (\d+) bytes", text):
        out[m.group(1).lower().replace(" ", "_")] = int(m.group(2))
    return out


# -- measurement --------------------------------------------------------------

def interleaved_latency(runners, images, rounds, round_ms, max_per_round, seed, label):
    """Per runner, the per-round medians of the invoke time per image in ms,
    ``{"cpu": {name: [...]}, "wall": {name: [...]}}``, and the images per round.

    Interleaved at the finest grain: every image of a round goes through
    every runner back to back (the order rotating from image to image), so a
    burst of load from other processes hits all runners alike."""
    import numpy as np

    rng = np.random.default_rng(seed)
    warm = {r.name: C.median([r.predict(images[i])[1] for i in range(3)]) for r in runners}
    per_round = int(min(max_per_round, max(1, round(round_ms / 1e3 / max(max(warm.values()), 1e-6)))))
    ms = {"cpu": {r.name: [] for r in runners}, "wall": {r.name: [] for r in runners}}
    k = 0
    for _ in range(rounds):
        times = {r.name: ([], []) for r in runners}
        for img in images[rng.integers(0, len(images), per_round)]:
            for i in range(len(runners)):
                r = runners[(k + i) % len(runners)]
                _, wall, cpu = r.predict(img)
                times[r.name][0].append(wall)
                times[r.name][1].append(cpu)
            k += 1
        for name, (wall, cpu) in times.items():
            ms["wall"][name].append(1e3 * C.median(wall))
            ms["cpu"][name].append(1e3 * C.median(cpu))
    print(f"  {label}: {rounds} rounds x {per_round} images, load {C.load()}", flush=True)
    return ms, per_round


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    import keras
    import numpy as np

    import s2nn_keras  # noqa: F401 - custom layers for load_model
    from export.tflite.flatbuffer import op_counts
    from export.tflite.runtimes import tflm_arena_size
    from s2nn_keras.datasets import load_arrays

    machine = C.machine_info()
    test_x, test_y = load_arrays("fashion_mnist", "test")
    test_x = test_x.astype(np.float32) / 255.0
    calib = test_x[-args.calibration_examples:]
    acc_x, acc_y = test_x[:args.accuracy_examples], test_y[:args.accuracy_examples]
    n_train = max(args.train_examples if args.train_archs else 0, args.bn_calibration_examples)
    train_x, train_y = load_arrays("fashion_mnist", "train", max_examples=n_train)
    train_x = train_x.astype(np.float32) / 255.0

    def rep():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    models_info, flat_info, latency, summary = {}, {}, [], []
    for arch in args.archs:
        print(f"== {arch}", flush=True)
        keras_models, provenance = {}, {}
        for act in ("s2nn", "relu"):
            path = getattr(args, f"{act}_model")
            if path:
                keras_models[act] = keras.models.load_model(path, compile=False)
                provenance[act] = f"loaded {path}"
                continue
            m = build(arch, act, args.seed)
            if arch in args.train_archs:
                t0 = time.time()
                train_briefly(m, train_x[:args.train_examples], train_y[:args.train_examples], args.epochs)
                provenance[act] = (f"trained here: {args.train_examples} images x {args.epochs} epoch, Adam 3e-3 "
                                   f"cosine, label smoothing 0.1, seed {args.seed} ({time.time() - t0:.0f} s)")
            else:
                calibrate_batchnorm(m, train_x[:args.bn_calibration_examples])
                provenance[act] = (f"random init (seed {args.seed}), BN statistics from "
                                   f"{args.bn_calibration_examples} training images")
            keras_models[act] = m
        trained = bool(arch in args.train_archs or args.s2nn_model or args.relu_model)
        keras_pred = {act: np.concatenate([np.argmax(np.asarray(m(acc_x[i:i + 100], training=False)), 1)
                                           for i in range(0, len(acc_x), 100)])
                      for act, m in keras_models.items()} if trained else {}
        models_info[arch] = {
            "architecture": dict(ARCHS[arch], input_shape=list(INPUT_SHAPE)),
            "provenance": provenance,
            "keras_accuracy": ({act: float(np.mean(p == acc_y)) for act, p in keras_pred.items()}
                               if trained else None),
            "params": {act: int(m.count_params()) for act, m in keras_models.items()},
        }

        blobs = {}
        for variant in args.variants:
            t0 = time.time()
            model = keras_models["relu" if variant in BASELINES else "s2nn"]
            blobs[variant] = export_flatbuffer(model, variant, args.format, rep)
            info = {"size_bytes": len(blobs[variant]), "ops": op_counts(blobs[variant]),
                    "size_breakdown": size_breakdown(blobs[variant]), "convert_s": round(time.time() - t0, 1)}
            if "tflm" in args.runtimes:
                info["tflm_arena_bytes"] = tflm_arena_size(blobs[variant], acc_x[0])
                info["tflm_arena_breakdown"] = tflm_arena_breakdown(blobs[variant], info["tflm_arena_bytes"])
            if not args.no_vela:
                from export.tflite.vela import compile_for_accelerators

                info["vela"] = compile_for_accelerators(blobs[variant], args.accelerators)
            flat_info[f"{arch}/{variant}"] = info
            print(f"  {variant:13s} {info['size_bytes']:9d} B  arena {info.get('tflm_arena_bytes')}  "
                  f"ops {info['ops']}", flush=True)
            for acc, v in info.get("vela", {}).items():
                print(f"    {acc}: NPU {100 * v['npu_op_fraction']:.1f}% of ops, {v['npu_partitions']} partitions, "
                      f"est {v['estimated_inference_ms']:.3f} ms, SRAM {v['sram_bytes']} B, "
                      f"flash {v['flash_bytes']} B, CPU {v['cpu_op_types'] or 'none'}", flush=True)

        for runtime in args.runtimes:
            runners = [C.Runner(v, blobs[v], runtime, flat_info[f"{arch}/{v}"].get("tflm_arena_bytes"))
                       for v in args.variants]
            if runtime == "litert" and trained:  # top-1, agreement with the variant's Keras model
                for r in runners:
                    pred = np.asarray([np.argmax(r.predict(img)[0]) for img in acc_x])
                    ref = keras_pred["relu" if r.name in BASELINES else "s2nn"]
                    flat_info[f"{arch}/{r.name}"].update(
                        litert_accuracy=float(np.mean(pred == acc_y)),
                        agreement_with_keras=float(np.mean(pred == ref)), accuracy_examples=len(acc_x))
            ms, per_round = interleaved_latency(runners, acc_x, args.rounds, args.round_ms,
                                                args.max_images_per_round, args.seed, f"{runtime}")
            for v in args.variants:
                row = {"arch": arch, "runtime": runtime, "variant": v,
                       "images_per_round": per_round, "rounds": args.rounds}
                for kind, prefix in (("cpu", ""), ("wall", "wall_")):
                    row[f"{prefix}latency_ms"] = round(C.median(ms[kind][v]), 4)
                    for base in BASELINES:
                        ratios = [a / b for a, b in zip(ms[kind][v], ms[kind][base])]
                        iqr = "ratio_iqr" if base == "relu" else f"ratio_to_{base}_iqr"
                        per_round = "ratio_per_round" if base == "relu" else f"ratio_to_{base}_per_round"
                        row.update({f"{prefix}{base}_latency_ms": round(C.median(ms[kind][base]), 4),
                                    f"{prefix}ratio_to_{base}": round(C.median(ratios), 4),
                                    f"{prefix}{iqr}": round(C.iqr(ratios), 4),
                                    f"{prefix}{per_round}": [round(q, 4) for q in ratios]})
                if v == "s2nn" and "s2nn_compare" in args.variants:  # the formulation choice
                    for kind, prefix in (("cpu", ""), ("wall", "wall_")):
                        ratios = [a / b for a, b in zip(ms[kind][v], ms[kind]["s2nn_compare"])]
                        row.update({f"{prefix}ratio_to_compare": round(C.median(ratios), 4),
                                    f"{prefix}compare_ratio_iqr": round(C.iqr(ratios), 4)})
                latency.append(row)
            del runners

        for v, base in ((v, b) for v in args.variants if v not in BASELINES for b in BASELINES):
            relu = flat_info[f"{arch}/{base}"]
            f = flat_info[f"{arch}/{v}"]
            row = {"arch": arch, "variant": v, "baseline": base,
                   "latency_ratio": {l["runtime"]: l[f"ratio_to_{base}"] for l in latency
                                     if l["arch"] == arch and l["variant"] == v},
                   "size_ratio": round(f["size_bytes"] / relu["size_bytes"], 4)}
            to_compare = {l["runtime"]: l["ratio_to_compare"] for l in latency
                          if l["arch"] == arch and l["variant"] == v and "ratio_to_compare" in l}
            if to_compare:
                row["latency_ratio_to_compare"] = to_compare
            if "tflm_arena_bytes" in f:
                row["arena_ratio"] = round(f["tflm_arena_bytes"] / relu["tflm_arena_bytes"], 4)
            if "vela" in f:
                row["vela"] = {acc: {k: (round(f["vela"][acc][k] / relu["vela"][acc][k], 4)
                                         if relu["vela"][acc][k] else None)
                                     for k in ("estimated_inference_ms", "sram_bytes", "flash_bytes")}
                               for acc in f["vela"]}
            if args.format == "int8":  # issue 10's targets are int8 targets
                checks = {f"latency_{rt}": q <= 1.0 for rt, q in row["latency_ratio"].items()}
                checks["size"] = row["size_ratio"] <= 1.0
                if "arena_ratio" in row:
                    checks["arena"] = row["arena_ratio"] <= 1.0
                row["targets_met"] = checks
            summary.append(row)

    print()
    print(f"{args.format} ratios to each ReLU baseline (latency: CPU time, median of per-round ratios"
          + ("; target <= 1.0 each)" if args.format == "int8" else ")"))
    print(f"{'arch':14s} {'variant':13s} {'baseline':14s} " + " ".join(f"{rt:>12s}" for rt in args.runtimes)
          + f" {'size':>6s} {'arena':>6s}" + ("  targets" if args.format == "int8" else ""))
    for row in summary:
        lat = " ".join(f"{row['latency_ratio'].get(rt, float('nan')):12.3f}" for rt in args.runtimes)
        line = (f"{row['arch']:14s} {row['variant']:13s} {row['baseline']:14s} {lat} {row['size_ratio']:6.3f} "
                f"{row.get('arena_ratio', float('nan')):6.3f}")
        if "targets_met" in row:
            missed = [k for k, ok in row["targets_met"].items() if not ok]
            line += f"  {'all met' if not missed else 'missed: ' + ', '.join(missed)}"
        print(line)
    compared = [row for row in summary if "latency_ratio_to_compare" in row and row["baseline"] == "relu"]
    if compared:
        print(f"\n{args.format} saturate / compare latency (CPU time, median of per-round ratios)")
        for row in compared:
            print(f"{row['arch']:14s} {row['variant']:13s} " + " ".join(
                f"{row['latency_ratio_to_compare'].get(rt, float('nan')):12.3f}" for rt in args.runtimes))
    return C.write_result(args, "inference", machine, t_start, format=args.format, models=models_info,
                          flatbuffers=flat_info, latency=latency, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
