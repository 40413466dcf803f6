"""Profile of the spiking neuron's backward pass inside a PreActResNet
training step: where S2NN's extra cost over ReLU comes from.

Two parts:

1. **XLA HLO census** (``--modes xla``): for each activation, the optimized
   HLO of the jit-compiled training step (``benchmarks.train_step``'s step)
   is scanned for how the per-channel reductions are emitted: ``ynn_fusion``
   (XLA:CPU offloads the reduce to YNNPACK) versus ``wrapped_reduce-window``
   (XLA's own tree reduction), and for the count of fusions and
   transcendental ops.
2. **Interleaved step cost** of backward-pass formulations of the same
   surrogate (CPU time of this process per step, median of per-round ratios
   to relu, as in ``benchmarks.train_step``):

   * ``current``: ``s2nn_keras.surrogates`` as it is on TensorFlow: the
     built-in surrogates' backward is one ``tf.function(jit_compile=True)``
     ending in a select (``s2nn_keras.tf_fused_backward``), inlined by TF
     into XLA-compiled steps;
   * ``multiply_guard``: the backend-agnostic ``keras.ops`` backward of
     ``s2nn_keras.surrogates`` (what JAX and PyTorch run),
     ``dy * where(finite(g), g, 0)``: same values, but outside XLA a dozen
     separate TF kernels, and inside XLA it ends in a multiply, which
     XLA:CPU will not hand to YNNPACK as a reduce operand.

Before timing it compares the gradients of ``current`` and
``multiply_guard`` for every surrogate in eager, ``tf.function`` and XLA
(bit for bit, equal values, or the largest relative difference: outside XLA
``current`` runs XLA's exp/logistic, which may differ from TF's kernels in
the last bits).

Example (figures in docs/RESULTS.md):
  python -m benchmarks.surrogate_profile --rounds 15
"""

from __future__ import annotations

import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

VARIANTS = ("current", "multiply_guard")


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.surrogate_profile", description=__doc__.split("\n")[0])
    p.add_argument("--activations", type=C.csv_list(name="activation"), default=["s2nn", "ste_s", "slayer"])
    p.add_argument("--variants", type=C.csv_list(allowed=VARIANTS, name="variant"), default=list(VARIANTS))
    p.add_argument("--modes", type=C.csv_list(allowed=("graph", "xla"), name="mode"), default=["graph", "xla"])
    p.add_argument("--rounds", type=C.positive_int, default=15)
    p.add_argument("--steps", type=C.positive_int, default=3)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "surrogate_profile.json"))
    args = p.parse_args(argv)
    from s2nn_keras import available_surrogates

    bad = [a for a in args.activations if a not in available_surrogates()]
    if bad:
        p.error(f"unknown activation(s) {', '.join(bad)}; valid: {', '.join(available_surrogates())}")
    return args


def _patched_spike(variant, original):
    import tensorflow as tf

    from s2nn_keras import surrogates as S

    if variant == "current":
        return original

    def spike(u, entry, threshold, params):
        def backward(x, dy):  # the backend-agnostic keras.ops backward
            return dy * S._grad_in_dtype(entry, x, threshold, params)

        @tf.custom_gradient
        def _heaviside(x):
            fire = x >= tf.cast(threshold, x.dtype)
            s = tf.where(fire, tf.ones_like(x), tf.fill(tf.shape(x), tf.cast(entry.off_value, x.dtype)))
            return s, lambda dy: backward(x, dy)

        return _heaviside(u)

    return spike


def equality_check(original):
    """Gradients of the current backward vs ``multiply_guard`` for every
    surrogate, float32, on normal draws plus 0, +-1e-38, +-inf, NaN, with
    upstream gradients including 0, -0, inf and NaN; eager, tf.function and
    XLA. Returns {surrogate: {mode: "bitwise" | "equal values (signed zeros
    differ)" | "max relative difference <r>, NaN positions equal" |
    "DIFFERENT"}}."""
    import numpy as np
    import tensorflow as tf

    from s2nn_keras import surrogates as S

    rng = np.random.default_rng(0)
    u = np.concatenate([3 * rng.normal(size=20000), [0, 1, -1, 1e-38, -1e-38, 0.3, np.inf, -np.inf, np.nan,
                                                     -30, 30, 1e30, -1e30]]).astype(np.float32)
    dy = rng.normal(size=u.shape).astype(np.float32)
    dy[:50], dy[50:60], dy[60], dy[61] = 0.0, -0.0, np.inf, np.nan
    u, dy = tf.constant(u), tf.constant(dy)
    legacy = _patched_spike("multiply_guard", original)
    out = {}
    for name in S.available_surrogates():
        entry, th, params = S.resolve_params(name)
        out[name] = {}
        for mode, jit in (("eager", None), ("graph", False), ("xla", True)):
            grads = []
            for spike in (original, legacy):
                def f(u, dy, spike=spike):
                    with tf.GradientTape() as tape:
                        tape.watch(u)
                        s = spike(u, entry, th, params)
                    return tape.gradient(s, u, output_gradients=dy)

                grads.append((f if jit is None else tf.function(f, jit_compile=jit))(u, dy).numpy())
            a, b = grads
            same_bits = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
            if same_bits.all():
                out[name][mode] = "bitwise"
            elif np.array_equal(a, b, equal_nan=True):
                out[name][mode] = "equal values (signed zeros differ)"
            elif np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a, b, rtol=1e-5, atol=1e-12,
                                                                          equal_nan=True):
                finite = np.isfinite(a) & (a != 0)
                rel = float(np.max(np.abs(a[finite] - b[finite]) / np.abs(b[finite]), initial=0.0))
                out[name][mode] = f"max relative difference {rel:.2e}, NaN positions equal"
            else:
                out[name][mode] = "DIFFERENT"
    return out


def hlo_census(hlo):
    entry = hlo[hlo.index("ENTRY"):]
    return {
        "fusions": len(re.findall(r" fusion\(", entry)),
        "ynnpack_reduce_fusions": len(re.findall(r"%ynn_fusion[.\d]* = ", entry)),
        "xla_reduce_window_fusions": len(re.findall(r"%wrapped_reduce-window[.\d]* = ", entry)),
        "exponential_ops": hlo.count(" exponential("),
        "divide_ops": hlo.count(" divide("),
    }


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import tensorflow as tf

    from benchmarks.train_step import build_variant, parse_args as ts_args
    from s2nn_keras import surrogates as S

    machine = C.machine_info()
    base = ts_args([])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((base.batch_size, 28, 28, 1), dtype=np.float32))
    y = tf.constant(np.eye(10, dtype=np.float32)[rng.integers(0, 10, base.batch_size)])
    original = S._spike
    equality = equality_check(original)
    print("current vs multiply_guard gradients:", equality, flush=True)
    census, steps = {}, {}
    try:
        for mode in args.modes:
            for act in ["relu"] + list(args.activations):
                for variant in (["current"] if act == "relu" else args.variants):
                    S._spike = _patched_spike(variant, original)
                    _, step = build_variant(base, act, mode)
                    step(x, y).numpy()  # trace with the patched backward
                    for _ in range(base.warmup):
                        step(x, y)
                    key = f"{mode}/{act}/{variant}"
                    steps[key] = {"step": step, "cpu": []}
                    if mode == "xla":
                        census[f"{act}/{variant}"] = hlo_census(
                            step.experimental_get_compiler_ir(x, y)(stage="optimized_hlo"))
                    print(f"built {key}", flush=True)
    finally:
        S._spike = original

    keys = list(steps)
    for r in range(args.rounds):
        for key in [keys[(r + i) % len(keys)] for i in range(len(keys))]:
            step = steps[key]["step"]
            c0 = time.process_time()
            for _ in range(args.steps):
                loss = step(x, y)
            loss.numpy()
            steps[key]["cpu"].append((time.process_time() - c0) / args.steps)
        print(f"round {r + 1}/{args.rounds} load {C.load()}", flush=True)

    results = []
    for key, v in steps.items():
        mode = key.split("/")[0]
        relu = steps[f"{mode}/relu/current"]["cpu"]
        ratios = [a / b for a, b in zip(v["cpu"], relu)]
        results.append({"key": key, "cpu_ms_median": round(1e3 * C.median(v["cpu"]), 2),
                        "cpu_ratio_to_relu_median": round(C.median(ratios), 4),
                        "cpu_ratio_iqr": round(C.iqr(ratios), 4)})
    print()
    print("XLA HLO census of the training step")
    print(f"{'activation/variant':28s} {'fusions':>8s} {'YNN reduce':>10s} {'reduce-window':>13s} {'exp':>4s} {'div':>4s}")
    for k, c in census.items():
        print(f"{k:28s} {c['fusions']:8d} {c['ynnpack_reduce_fusions']:10d} {c['xla_reduce_window_fusions']:13d} "
              f"{c['exponential_ops']:4d} {c['divide_ops']:4d}")
    print()
    print("training-step CPU time per step, median of per-round ratios to relu (same mode)")
    for r in results:
        print(f"{r['key']:32s} {r['cpu_ms_median']:8.2f} ms  x relu {r['cpu_ratio_to_relu_median']:.3f} "
              f"(IQR {r['cpu_ratio_iqr']:.3f})")
    payload = {"benchmark": "surrogate_profile", "command": C.command_line(),
               "config": {k: v for k, v in vars(args).items() if k != "output"},
               "model": "PreActResNet blocks [1,1,1] width 16, 28x28x1, batch 64 (benchmarks.train_step defaults)",
               "gradient_equality_current_vs_multiply_guard": equality,
               "hlo_census": census, "results": results, "machine": machine}
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
