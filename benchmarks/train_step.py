"""Training-step cost of one PreActResNet with each activation, interleaved.

One training step = forward (training=True), label-smoothed softmax
cross-entropy, gradient of every trainable weight, Adam update. Each
(mode, activation) variant owns its own model and optimizer built from the
same seed, and all variants are timed **round-robin in the same process**:
every round runs ``--steps`` steps of each variant in turn (the starting
variant rotates each round), so load from other users of the machine hits all
variants alike. Reported per variant: the median step time over rounds,
images/s, and the median over rounds of the per-round ratio
``t(activation) / t(relu)`` of the same mode -- both for wall-clock time and
for the CPU time of this process (``time.process_time``, all threads), which
is far less disturbed when other users load the machine.

Modes:
  eager  Python-eager execution: the step runs op by op, no tf.function.
  graph  ``tf.function`` (TF graph executor with Grappler, oneDNN kernels), no XLA.
  xla    ``tf.function(jit_compile=True)``: the whole step compiled by XLA.

Spike backward (``--backward``, spiking activations only):
  fused  the library default on TensorFlow (``s2nn_keras.tf_fused_backward``):
         built-in surrogates' backward as one XLA-fused function outside
         XLA, a select-ending product inside XLA.
  plain  the backend-agnostic ``keras.ops`` backward of
         ``s2nn_keras.surrogates`` (``dy * surrogate_gradient(u)``), as on
         JAX and PyTorch.

Example (the figures in docs/RESULTS.md):
  python -m benchmarks.train_step --blocks 1,1,1 --width 16 --batch_size 64 \
      --modes graph,xla --rounds 7 --steps 10
  python -m benchmarks.train_step --activations relu,s2nn --backward plain,fused \
      --modes graph,xla --rounds 15 --steps 3
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

ACTIVATIONS = ("relu", "s2nn", "ste_s", "ste_b", "slayer", "sibnn", "superspike")
MODES = ("eager", "graph", "xla")
BACKWARDS = ("fused", "plain")


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.train_step", description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=C.csv_list(C.positive_int, name="block count"), default=[1, 1, 1],
                   help="basic blocks per stage, e.g. 2,2,2,2 for ResNet18 (default 1,1,1)")
    p.add_argument("--width", type=C.positive_int, default=16, help="stem/first-stage channels (default 16)")
    p.add_argument("--image_size", type=C.positive_int, default=28, help="square input side (default 28)")
    p.add_argument("--channels", type=C.positive_int, default=1, help="input channels (default 1)")
    p.add_argument("--num_classes", type=C.positive_int, default=10)
    p.add_argument("--batch_size", type=C.positive_int, default=64)
    p.add_argument("--steps", type=C.positive_int, default=10, help="steps per variant per round")
    p.add_argument("--rounds", type=C.positive_int, default=7, help="interleaved timing rounds")
    p.add_argument("--warmup", type=C.positive_int, default=3, help="untimed steps per variant after tracing")
    p.add_argument("--activations", type=C.csv_list(allowed=ACTIVATIONS, name="activation"),
                   default=list(ACTIVATIONS))
    p.add_argument("--modes", type=C.csv_list(allowed=MODES, name="mode"), default=["graph", "xla"])
    p.add_argument("--backward", type=C.csv_list(allowed=BACKWARDS, name="backward"), default=["fused"],
                   help="spike backward implementations to compare (default: fused, the library default)")
    p.add_argument("--threads", type=C.nonneg_int, default=0,
                   help="intra-op threads (0 = TF default); inter-op is set to 1 when > 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "train_step.json"))
    args = p.parse_args(argv)
    if "relu" not in args.activations:
        p.error("--activations must include relu (ratios are taken against it)")
    return args


def use_backward(backward):
    """Selects the spike backward traced and run from now on (see --backward)."""
    from s2nn_keras import surrogates, tf_fused_backward

    surrogates._TF_BACKWARD = tf_fused_backward.backward if backward == "fused" else None


def build_variant(args, activation, mode, backward="fused"):
    import keras
    import tensorflow as tf
    from s2nn_keras.models import PreActResNet

    use_backward(backward)
    keras.utils.set_random_seed(args.seed)
    model = PreActResNet(list(args.blocks), (args.image_size, args.image_size, args.channels),
                         args.num_classes, activation=activation, width=args.width)
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    variables = model.trainable_variables
    optimizer.build(variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss

    if mode == "graph":
        step = tf.function(step, jit_compile=False)
    elif mode == "xla":
        step = tf.function(step, jit_compile=True)
    return model, step


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    machine = C.machine_info()

    rng = np.random.default_rng(args.seed)
    x = tf.constant(rng.random((args.batch_size, args.image_size, args.image_size, args.channels), dtype=np.float32))
    labels = rng.integers(0, args.num_classes, args.batch_size)
    y = tf.constant(np.eye(args.num_classes, dtype=np.float32)[labels])

    variants = []
    for mode in args.modes:
        for act in args.activations:
            for backward in (["fused"] if act == "relu" else args.backward):
                model, step = build_variant(args, act, mode, backward)
                t0 = time.perf_counter()
                step(x, y).numpy()  # trace / compile
                compile_s = time.perf_counter() - t0
                for _ in range(args.warmup):
                    loss = step(x, y)
                loss.numpy()
                label = act if act == "relu" or len(args.backward) == 1 else f"{act}/{backward}"
                variants.append({"mode": mode, "activation": act, "backward": backward, "label": label,
                                 "step": step, "model": model,
                                 "compile_s": compile_s, "times": [], "cpu_times": []})
                print(f"built {mode:5s} {label:16s} params={model.count_params()} first call {compile_s:.1f}s",
                      flush=True)
    use_backward("fused")

    n = len(variants)
    for r in range(args.rounds):
        order = [variants[(r + i) % n] for i in range(n)]
        for v in order:
            step = v["step"]
            use_backward(v["backward"])  # matters in eager mode, where nothing is traced
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                loss = step(x, y)
            loss.numpy()
            v["times"].append((time.perf_counter() - t0) / args.steps)
            v["cpu_times"].append((time.process_time() - c0) / args.steps)
        print(f"round {r + 1}/{args.rounds} done, load {C.load()}", flush=True)

    results = []
    for v in variants:
        relu = next(u for u in variants if u["mode"] == v["mode"] and u["activation"] == "relu")
        ratios = [a / b for a, b in zip(v["times"], relu["times"])]
        cpu_ratios = [a / b for a, b in zip(v["cpu_times"], relu["cpu_times"])]
        med = C.median(v["times"])
        results.append({
            "mode": v["mode"], "activation": v["activation"], "backward": v["backward"], "label": v["label"],
            "step_ms_median": round(1e3 * med, 3),
            "step_ms_iqr": round(1e3 * C.iqr(v["times"]), 3),
            "images_per_s": round(args.batch_size / med, 1),
            "ratio_to_relu_median": round(C.median(ratios), 4),
            "ratio_to_relu_per_round": [round(q, 4) for q in ratios],
            "cpu_ms_median": round(1e3 * C.median(v["cpu_times"]), 3),
            "cpu_ratio_to_relu_median": round(C.median(cpu_ratios), 4),
            "cpu_ratio_to_relu_per_round": [round(q, 4) for q in cpu_ratios],
            "first_call_s": round(v["compile_s"], 2),
        })

    print()
    print(f"PreActResNet blocks={args.blocks} width={args.width} input={args.image_size}x{args.image_size}x"
          f"{args.channels} batch={args.batch_size}; {args.rounds} rounds x {args.steps} steps, medians")
    print("wall = wall-clock per step; cpu = CPU seconds of this process per step (all threads),")
    print("less sensitive to other users of a shared machine; ratios are medians of per-round ratios")
    print(f"{'mode':6s} {'activation':16s} {'wall ms':>9s} {'img/s':>8s} {'wall x relu':>11s} {'cpu ms':>9s} "
          f"{'cpu x relu':>10s}")
    for row in results:
        print(f"{row['mode']:6s} {row['label']:16s} {row['step_ms_median']:9.2f} {row['images_per_s']:8.1f} "
              f"{row['ratio_to_relu_median']:11.3f} {row['cpu_ms_median']:9.2f} {row['cpu_ratio_to_relu_median']:10.3f}")
    payload = {
        "benchmark": "train_step",
        "command": C.command_line(),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "step_definition": "forward(training=True) + label-smoothed CE + tape.gradient + Adam apply",
        "mode_definitions": {"eager": "Python eager, no tf.function", "graph": "tf.function, no XLA",
                             "xla": "tf.function(jit_compile=True)"},
        "backward_definitions": {"fused": "s2nn_keras.tf_fused_backward (library default on TensorFlow)",
                                 "plain": "keras.ops backward of s2nn_keras.surrogates (as on JAX/PyTorch)"},
        "results": results,
        "machine": machine,
    }
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
