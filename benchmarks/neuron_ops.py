"""Profile of one neuron layer in int8 TFLite: what each S2NN neuron
formulation costs against the ReLU baseline's BN + ReLU, per runtime.

Two contexts, each a small Keras model on a ``[1, H, W, C]`` tensor
(default the first stage of the quickstart network, 28x28x24) ending in the
consumer every variant shares (global average pooling + Dense(10); the
saturate neuron's {0, 6} spikes need a consumer to carry the 1/6), exported
to int8 through ``export.to_tflite`` (batch 1, full integer with int8 I/O,
calibrated on random normal data):

* ``after_conv``: 3x3 conv -> BN -> neuron (the neuron inside a block);
* ``standalone``: BN -> neuron on a tensor no conv produces alone (after the
  stem, whose output also feeds the shortcut, and after each residual Add).

Variants: ``saturate`` (the default export: the clamp fused into the conv,
or a 1x1 DEPTHWISE_CONV_2D with a fused clamp when standalone), ``compare``
(the ablation: GREATER_EQUAL/LESS_EQUAL/SELECT_V2), ``relu`` (BN folded into
the conv or left as per-channel MUL + ADD by the converter, ReLU fused), and
``base``: the context without BN and neuron, so ``neuron_us`` (variant minus
base, per round) is what the BN + neuron itself costs.

Each is timed interleaved in process CPU time (every invoke through all
variants back to back, order rotating; median per round, median per-round
ratio to ``relu``) in
LiteRT with the default XNNPACK delegate, LiteRT builtin kernels only, and
TFLite Micro; its ops are read with ``export.tflite.flatbuffer`` and, unless
``--no_vela``, Vela's estimated cycles and CPU fallbacks for Ethos-U55-128
and Ethos-U85-256 are recorded.

Example:
  python -m benchmarks.neuron_ops --rounds 15
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

CONTEXTS = ("after_conv", "standalone")
VARIANTS = ("saturate", "compare", "relu")
ALL = VARIANTS + ("base",)  # base: the context without BN and neuron
RUNTIMES = ("litert", "litert_noxnn", "tflm")


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.neuron_ops", description=__doc__.split("\n")[0])
    p.add_argument("--height", type=C.positive_int, default=28)
    p.add_argument("--width", type=C.positive_int, default=28)
    p.add_argument("--channels", type=C.positive_int, default=24)
    p.add_argument("--rounds", type=C.positive_int, default=15)
    p.add_argument("--invokes", type=C.positive_int, default=30, help="LiteRT invokes per variant per round")
    p.add_argument("--tflm_invokes", type=C.positive_int, default=5)
    p.add_argument("--no_vela", action="store_true")
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "neuron_ops.json"))
    args = p.parse_args(argv)
    if not args.no_vela:
        from export.tflite import vela

        if not vela.available():
            p.error(f"the Vela figures need ethos-u-vela ({vela.INSTALL_HINT}); or pass --no_vela")
    return args


def build(context, activation, shape, seed=0):
    """One-layer Keras model followed by the consumer every variant shares
    (global average pooling + a 10-way Dense: the saturate neuron's {0, 6}
    spikes need a consumer to carry the 1/6). ``activation=None``: the base
    model without BN and neuron. BN with a spread of scales (a quarter
    negative) and shifts."""
    import keras
    import numpy as np

    from s2nn_keras.models import make_activation

    rng = np.random.default_rng(seed)
    c = shape[-1]
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape)
    x = inp
    if context == "after_conv":
        x = keras.layers.Conv2D(c, 3, padding="same", use_bias=False, name="conv")(x)
    bn = None
    if activation is not None:
        bn = keras.layers.BatchNormalization(name="bn")
        x = make_activation(activation, "act")(bn(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    if bn is not None:
        gamma = rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < 0.25, -1.0, 1.0)
        scale = 3.0 if context == "after_conv" else 1.0  # conv output std ~ 3 x input std
        bn.set_weights([gamma, rng.normal(0, 0.2, c), rng.normal(0, 0.2 * scale, c),
                        rng.uniform(0.5, 1.5, c) * scale ** 2])
    return model


def export(model, variant, shape):
    import numpy as np

    from export import to_tflite

    def rep():
        rng = np.random.default_rng(1)
        for _ in range(5):
            yield [rng.normal(size=(10,) + shape).astype(np.float32)]

    if variant in ("relu", "base"):
        return to_tflite(model, "int8", rep)
    return to_tflite(model, "int8", rep, neuron=variant)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from export.tflite.flatbuffer import op_counts
    from export.tflite.runtimes import tflm_arena_size

    machine = C.machine_info()
    shape = (args.height, args.width, args.channels)
    blobs = {}
    for context in CONTEXTS:
        keras_models = {"s2nn": build(context, "s2nn", shape), "relu": build(context, "relu", shape),
                        "base": build(context, None, shape)}
        for variant in ALL:
            blobs[(context, variant)] = export(keras_models.get(variant, keras_models["s2nn"]), variant, shape)
    info = {}
    for (context, variant), blob in blobs.items():
        key = f"{context}/{variant}"
        info[key] = {"size_bytes": len(blob), "ops": op_counts(blob)}
        if not args.no_vela:
            from export.tflite.vela import compile_for_accelerators

            info[key]["vela"] = {acc: {k: r[k] for k in ("estimated_cycles", "npu_op_fraction", "npu_partitions",
                                                        "cpu_op_types", "sram_bytes")}
                                 for acc, r in compile_for_accelerators(blob).items()}
        print(f"{key:22s} ops {info[key]['ops']}"
              + "".join(f"  {acc}: {v['estimated_cycles']} cycles, NPU {100 * v['npu_op_fraction']:.0f}%"
                        for acc, v in info[key].get("vela", {}).items()), flush=True)

    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    results = []
    for runtime in RUNTIMES:
        for context in CONTEXTS:
            runners = [C.Runner(v, blobs[(context, v)], runtime,
                                tflm_arena_size(blobs[(context, v)], x) if runtime == "tflm" else None)
                       for v in ALL]
            for r in runners:
                r.predict(x)
            n_inv = args.tflm_invokes if runtime == "tflm" else args.invokes
            med, k = {r.name: [] for r in runners}, 0
            for _ in range(args.rounds):
                times = {r.name: [] for r in runners}
                for _ in range(n_inv):  # every invoke through every variant back to back, order rotating
                    for i in range(len(runners)):
                        r = runners[(k + i) % len(runners)]
                        times[r.name].append(r.predict(x)[2])  # process CPU time
                    k += 1
                for name, t in times.items():
                    med[name].append(1e6 * C.median(t))
            neuron = {v: [a - b for a, b in zip(med[v], med["base"])] for v in VARIANTS}
            for v in ALL:
                ratios = [a / b for a, b in zip(med[v], med["relu"])]
                row = {"runtime": runtime, "context": context, "variant": v,
                       "latency_us": round(C.median(med[v]), 2),
                       "ratio_to_relu": round(C.median(ratios), 3), "ratio_iqr": round(C.iqr(ratios), 3)}
                if v in neuron:  # the BN + neuron alone: this variant minus the base, per round
                    row["neuron_us"] = round(C.median(neuron[v]), 2)
                    row["neuron_us_iqr"] = round(C.iqr(neuron[v]), 2)
                results.append(row)
        print(f"{runtime} done, load {C.load()}", flush=True)
    print()
    print(f"one int8 neuron layer on a 1x{shape[0]}x{shape[1]}x{shape[2]} tensor, median invoke CPU time")
    print(f"{'runtime':12s} {'context':11s} {'variant':9s} {'us':>9s} {'x relu':>7s} {'neuron us':>10s}")
    for r in results:
        print(f"{r['runtime']:12s} {r['context']:11s} {r['variant']:9s} {r['latency_us']:9.2f} "
              f"{r['ratio_to_relu']:7.3f} {r.get('neuron_us', float('nan')):10.2f}")
    payload = {"benchmark": "neuron_ops", "command": C.command_line(),
               "config": {k: v for k, v in vars(args).items() if k != "output"},
               "flatbuffers": info, "results": results, "machine": machine}
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
