"""Profile of one neuron layer in TFLite: what the folded S2NN neuron costs
against the ReLU baseline's BN + ReLU, per runtime and formulation.

Single-layer int8/float32 flatbuffers on a ``[1, H, W, C]`` tensor (default
the first stage of the benchmark PreActResNet, 28x28x16), converted with the
same settings as ``export.to_tflite`` (batch 1, int8 full-integer with int8
I/O, calibrated on random normal data):

* ``s2nn_compare``: ``export.neurons.ThresholdNeuron`` in its ``compare``
  formulation with per-channel thresholds (GREATER_EQUAL + SELECT_V2), what
  ``export.to_tflite`` emits for a BN-threshold neuron;
* ``s2nn_ramp8``: the ``ramp`` formulation with an int8 gain
  (DEPTHWISE_CONV_2D + MINIMUM), the prototype of ``benchmarks.inference``;
* ``relu_bn``: BatchNormalization (per-channel MUL + ADD) + ReLU, the
  baseline's pre-activation block as the TFLite converter leaves it.

Each is timed interleaved (rounds x invokes, median) in LiteRT with the
default XNNPACK delegate, LiteRT builtin kernels only, and TFLite Micro.

Example:
  python -m benchmarks.neuron_ops --rounds 15
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common as C  # noqa: E402


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.neuron_ops", description=__doc__.split("\n")[0])
    p.add_argument("--height", type=C.positive_int, default=28)
    p.add_argument("--width", type=C.positive_int, default=28)
    p.add_argument("--channels", type=C.positive_int, default=16)
    p.add_argument("--rounds", type=C.positive_int, default=15)
    p.add_argument("--invokes", type=C.positive_int, default=30, help="LiteRT invokes per variant per round")
    p.add_argument("--tflm_invokes", type=C.positive_int, default=5)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "neuron_ops.json"))
    return p.parse_args(argv)


def build_models(args):
    import keras
    import numpy as np

    from export.neurons import ThresholdNeuron

    rng = np.random.default_rng(0)
    shape = (args.height, args.width, args.channels)
    th = rng.normal(0.5, 0.5, args.channels).astype(np.float32)
    models = {}
    inp = keras.Input(batch_shape=(1,) + shape)
    models["s2nn_compare"] = keras.Model(inp, ThresholdNeuron(th, 1, formulation="compare")(inp))
    inp = keras.Input(batch_shape=(1,) + shape)
    zmax = 4.0 + float(np.max(np.abs(th)))  # |u - theta| range of N(0,1) calibration data
    models["s2nn_ramp8"] = keras.Model(inp, ThresholdNeuron(th, 1, formulation="ramp", gain=127.0 / zmax)(inp))
    inp = keras.Input(batch_shape=(1,) + shape)
    bn = keras.layers.BatchNormalization()
    out = keras.layers.ReLU()(bn(inp))
    m = keras.Model(inp, out)
    bn.set_weights([rng.uniform(0.5, 1.5, args.channels), rng.normal(0, 0.2, args.channels),
                    rng.normal(0, 0.1, args.channels), rng.uniform(0.5, 1.5, args.channels)])
    models["relu_bn"] = m
    return models, shape


def convert(model, quantization, shape):
    import numpy as np
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "int8":
        def rep():
            rng = np.random.default_rng(1)
            for _ in range(50):
                yield [rng.normal(size=(1,) + shape).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from benchmarks.inference import _Runner
    from export.runtimes import tflm_arena_size
    from export.tflite import op_names

    machine = C.machine_info()
    models, shape = build_models(args)
    blobs = {}
    for q in ("float32", "int8"):
        for name, m in models.items():
            if name == "s2nn_ramp8" and q == "float32":
                continue
            blobs[(name, q)] = convert(m, q, shape)
            print(f"{name:13s} {q:8s} ops {op_names(blobs[(name, q)])}", flush=True)
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    results = []
    for runtime in ("litert", "litert_noxnn", "tflm"):
        runners = [_Runner(f"{n}/{q}", b, runtime, tflm_arena_size(b, x) if runtime == "tflm" else None)
                   for (n, q), b in blobs.items()]
        for r in runners:
            r.predict(x)
        n_inv = args.tflm_invokes if runtime == "tflm" else args.invokes
        med = {r.name: [] for r in runners}
        for rnd in range(args.rounds):
            for r in [runners[(rnd + i) % len(runners)] for i in range(len(runners))]:
                med[r.name].append(1e6 * float(np.median([r.predict(x)[1] for _ in range(n_inv)])))
        for q in ("float32", "int8"):
            base = med[f"relu_bn/{q}"]
            for name in models:
                key = f"{name}/{q}"
                if key not in med:
                    continue
                ratios = [a / b for a, b in zip(med[key], base)]
                results.append({"runtime": runtime, "format": q, "variant": name,
                                "latency_us": round(C.median(med[key]), 2),
                                "ratio_to_relu_bn": round(C.median(ratios), 3)})
        print(f"{runtime} done, load {C.load()}", flush=True)
    print()
    print(f"one neuron layer on a 1x{shape[0]}x{shape[1]}x{shape[2]} tensor, median invoke latency")
    print(f"{'runtime':12s} {'format':8s} {'variant':13s} {'us':>9s} {'x relu_bn':>9s}")
    for r in results:
        print(f"{r['runtime']:12s} {r['format']:8s} {r['variant']:13s} {r['latency_us']:9.2f} {r['ratio_to_relu_bn']:9.3f}")
    payload = {"benchmark": "neuron_ops", "command": C.command_line(),
               "config": {k: v for k, v in vars(args).items() if k != "output"},
               "ops": {f"{n}/{q}": op_names(b) for (n, q), b in blobs.items()},
               "results": results, "machine": machine}
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
