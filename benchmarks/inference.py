"""Inference cost of the folded S2NN against the same architecture with ReLU.

Both models are the same PreActResNet on Fashion-MNIST (28x28x1), either
trained here briefly (default) or loaded from ``--s2nn_model`` /
``--relu_model`` (``.keras`` files, e.g. ``runs/table2/s2nn_seed0/final.keras``).

* S2NN: ``export.fold_batchnorm`` (every BN becomes a conv kernel/bias or a
  per-channel firing threshold, Eq. 27) then ``export.to_tflite``.
* ReLU: BN "folded as usual", i.e. by the TFLite converter itself (it merges
  what it can into the convs and leaves per-channel MUL/ADD for the
  pre-activation BNs), with the same converter settings as
  ``export.to_tflite`` (batch-1 signature; int8: full-integer, int8 I/O,
  the same representative images).

Measured for float32 and int8: flatbuffer size, per-image latency in LiteRT
(``ai_edge_litert``, one thread, invoke only; ``litert`` with its default
XNNPACK delegate, ``litert_noxnn`` with the builtin kernels only) and in the TFLite Micro
interpreter (reference kernels, smallest working arena found by bisection),
and top-1 accuracy on the test images. Latencies are timed **interleaved**:
each round runs ``--images_per_round`` images through every model in turn
(rotating the start), so other load on the machine hits all models alike;
reported are the median per-image latency and the median per-round ratio
S2NN/ReLU.

Prototype variant ``s2nn_ramp`` (int8 only, measured unless
``--no_ramp_int8``): the export package's ``"ramp"`` neuron
(``z = gain * p_c * (u - theta_c)`` as a 1x1 depthwise conv, then
``min(relu(z), 1)``) with the gain set for int8 (``127 / max|z|`` on the
calibration images instead of int16's ``32767 / max|z|``, which XNNPACK
refuses to prepare). It replaces GREATER_EQUAL/SELECT_V2, which the XNNPACK
delegate does not take, by ops it does; it is a measurement of a proposed
export change, not what ``export.to_tflite`` produces.

Example (the figures in docs/RESULTS.md):
  python -m benchmarks.inference --rounds 15
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import _common as C  # noqa: E402

FORMATS = ("float32", "int8")
RUNTIMES = ("litert", "litert_noxnn", "tflm")


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.inference", description=__doc__.split("\n")[0])
    p.add_argument("--s2nn_model", default=None, help=".keras S2NN model (default: train one here)")
    p.add_argument("--relu_model", default=None, help=".keras ReLU model (default: train one here)")
    p.add_argument("--blocks", type=C.csv_list(C.positive_int, name="block count"), default=[1, 1, 1])
    p.add_argument("--width", type=C.positive_int, default=16)
    p.add_argument("--train_examples", type=C.positive_int, default=10000)
    p.add_argument("--epochs", type=C.positive_int, default=1)
    p.add_argument("--calibration_examples", type=C.positive_int, default=200)
    p.add_argument("--accuracy_examples", type=C.positive_int, default=1000)
    p.add_argument("--rounds", type=C.positive_int, default=15)
    p.add_argument("--images_per_round", type=C.positive_int, default=20, help="LiteRT images per model per round")
    p.add_argument("--tflm_images_per_round", type=C.positive_int, default=3)
    p.add_argument("--formats", type=C.csv_list(allowed=FORMATS, name="format"), default=list(FORMATS))
    p.add_argument("--runtimes", type=C.csv_list(allowed=RUNTIMES, name="runtime"), default=list(RUNTIMES))
    p.add_argument("--no_ramp_int8", action="store_true",
                   help="skip the prototype 's2nn_ramp' int8 variant (see module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "inference.json"))
    args = p.parse_args(argv)
    for flag in ("s2nn_model", "relu_model"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            p.error(f"--{flag}: no such file {path!r}")
    return args


def train_briefly(args, activation, x, y):
    import keras

    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(args.seed)
    model = PreActResNet(list(args.blocks), (28, 28, 1), 10, activation=activation, width=args.width)
    steps = args.epochs * -(-len(x) // 128)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    model.fit(x, keras.utils.to_categorical(y, 10), batch_size=128, epochs=args.epochs, verbose=2,
              shuffle=True)
    return model


def relu_to_tflite(model, quantization, representative_data):
    """The ReLU baseline through the TFLite converter, settings as export.to_tflite."""
    import keras
    import numpy as np
    import tensorflow as tf

    inp = keras.Input(batch_shape=(1,) + tuple(model.inputs[0].shape[1:]), dtype="float32")
    batch1 = keras.Model(inp, model(inp, training=False))
    converter = tf.lite.TFLiteConverter.from_keras_model(batch1)
    if quantization == "int8":
        def rep():
            for batch in representative_data():
                for i in range(batch[0].shape[0]):
                    yield [np.asarray(batch[0][i:i + 1], np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


class _Runner:
    """One flatbuffer in one runtime, timing invoke() per image."""

    def __init__(self, name, model_bytes, runtime, arena=None):
        from export import runtimes as R

        self.name, self.runtime, self.R = name, runtime, R
        if runtime.startswith("litert"):
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            resolver = (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if runtime == "litert_noxnn"
                        else OpResolverType.AUTO)
            self.interp = Interpreter(model_content=model_bytes, num_threads=1,
                                      experimental_op_resolver_type=resolver)
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            self.out = self.interp.get_output_details()[0]
        else:
            self.interp = R._tflm(model_bytes, arena)
            self.inp = self.interp.get_input_details(0)
            self.out = self.interp.get_output_details(0)
        self.times = []

    def predict(self, image):
        R = self.R
        if self.runtime.startswith("litert"):
            self.interp.set_tensor(self.inp["index"], R.quantize(image[None], self.inp))
            t0 = time.perf_counter()
            self.interp.invoke()
            dt = time.perf_counter() - t0
            out = R.dequantize(self.interp.get_tensor(self.out["index"]), self.out)[0]
        else:
            self.interp.set_input(R.quantize(image[None], self.inp), 0)
            t0 = time.perf_counter()
            self.interp.invoke()
            dt = time.perf_counter() - t0
            out = R.dequantize(self.interp.get_output(0), self.out)[0]
        return out, dt


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    import s2nn_keras  # noqa: F401 - custom layers for load_model
    from export import fold_batchnorm, to_tflite
    from export.runtimes import tflm_arena_size
    from trainers.data import load_arrays

    machine = C.machine_info()
    test_x, test_y = load_arrays("fashion_mnist", "test")
    test_x = test_x.astype(np.float32) / 255.0
    calib = test_x[-args.calibration_examples:]  # calibration images disjoint from the accuracy images
    acc_x, acc_y = test_x[:args.accuracy_examples], test_y[:args.accuracy_examples]

    models, provenance = {}, {}
    for act, path in (("s2nn", args.s2nn_model), ("relu", args.relu_model)):
        if path:
            models[act] = keras.models.load_model(path, compile=False)
            provenance[act] = f"loaded {path}"
        else:
            if "train_x" not in locals():
                train_x, train_y = load_arrays("fashion_mnist", "train", max_examples=args.train_examples)
                train_x = train_x.astype(np.float32) / 255.0
            print(f"training {act} briefly ({args.train_examples} images x {args.epochs} epoch)", flush=True)
            models[act] = train_briefly(args, act, train_x, train_y)
            provenance[act] = (f"trained here: PreActResNet blocks={args.blocks} width={args.width}, Adam 3e-3 cosine, "
                               f"label smoothing 0.1, {args.train_examples} images x {args.epochs} epoch, seed {args.seed}")

    def rep():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    folded = fold_batchnorm(models["s2nn"])
    keras_acc = {act: float(np.mean(np.argmax(m.predict(acc_x, verbose=0), 1) == acc_y)) for act, m in models.items()}
    flat = {}
    for fmt in args.formats:
        flat[("s2nn", fmt)] = to_tflite(folded, fmt, rep if fmt != "float32" else None)
        flat[("relu", fmt)] = relu_to_tflite(models["relu"], fmt, rep)

    if "int8" in args.formats and not args.no_ramp_int8:
        from export.neurons import ThresholdNeuron
        from export.tflite import _with_neurons, ramp_model

        ramp16 = ramp_model(folded, rep)  # gain = 32767 / max|z| per neuron
        int16_max = 32767.0

        def make(layer):
            config = layer.get_config()
            config.update(gain=float(config["gain"]) * 127.0 / int16_max)
            return ThresholdNeuron.from_config(config)

        flat[("s2nn_ramp", "int8")] = to_tflite(_with_neurons(ramp16, make), "int8", rep)

    from export.tflite import op_names

    info = {}
    for (act, fmt), blob in flat.items():
        info[(act, fmt)] = {"size_bytes": len(blob), "ops": op_names(blob)}
        if "tflm" in args.runtimes:
            info[(act, fmt)]["tflm_arena_bytes"] = tflm_arena_size(blob, acc_x[0])
        print(f"{act:9s} {fmt:8s} size {len(blob):8d} B  ops {info[(act, fmt)]['ops']}"
              + (f"  TFLM arena {info[(act, fmt)]['tflm_arena_bytes']} B" if "tflm" in args.runtimes else ""),
              flush=True)

    # LiteRT execution plan: what the default XNNPACK delegate takes and what stays on the builtin kernels.
    from ai_edge_litert.interpreter import Interpreter

    for key, blob in flat.items():
        interp = Interpreter(model_content=blob, num_threads=1)
        interp.allocate_tensors()
        names = [d["op_name"] for d in interp._get_ops_details()]
        k = names.count("DELEGATE")
        info[key]["litert_plan"] = {"model_ops": len(names) - k, "xnnpack_partitions": k}
        print(f"{key[0]:9s} {key[1]:8s} LiteRT default plan: {len(names) - k} ops in {k} XNNPACK partitions",
              flush=True)

    results = []
    for runtime in args.runtimes:
        runners = [_Runner(f"{act}/{fmt}", blob, runtime, info[(act, fmt)].get("tflm_arena_bytes"))
                   for (act, fmt), blob in flat.items()]
        # Accuracy (also warms every interpreter up).
        n_acc = len(acc_x) if runtime.startswith("litert") else min(len(acc_x), 200)
        accuracy = {}
        for r in runners:
            preds = [np.argmax(r.predict(img)[0]) for img in acc_x[:n_acc]]
            accuracy[r.name] = float(np.mean(np.asarray(preds) == acc_y[:n_acc]))
        per_round = args.images_per_round if runtime.startswith("litert") else args.tflm_images_per_round
        round_ms = {r.name: [] for r in runners}
        rng = np.random.default_rng(args.seed)
        for rnd in range(args.rounds):
            imgs = acc_x[rng.integers(0, len(acc_x), per_round)]
            order = [runners[(rnd + i) % len(runners)] for i in range(len(runners))]
            for r in order:
                times = [r.predict(img)[1] for img in imgs]
                round_ms[r.name].append(1e3 * float(np.median(times)))
            print(f"{runtime} round {rnd + 1}/{args.rounds} load {C.load()}", flush=True)
        for act, fmt in flat:
            if act == "relu":
                continue
            s, rl = f"{act}/{fmt}", f"relu/{fmt}"
            ratios = [a / b for a, b in zip(round_ms[s], round_ms[rl])]
            results.append({
                "runtime": runtime, "format": fmt, "spiking_variant": act,
                "s2nn_latency_ms": round(C.median(round_ms[s]), 4),
                "relu_latency_ms": round(C.median(round_ms[rl]), 4),
                "latency_ratio_s2nn_over_relu": round(C.median(ratios), 4),
                "latency_ratio_per_round": [round(q, 4) for q in ratios],
                "s2nn_size_bytes": info[(act, fmt)]["size_bytes"],
                "relu_size_bytes": info[("relu", fmt)]["size_bytes"],
                "size_ratio_s2nn_over_relu": round(info[(act, fmt)]["size_bytes"]
                                                   / info[("relu", fmt)]["size_bytes"], 4),
                "s2nn_tflm_arena_bytes": info[(act, fmt)].get("tflm_arena_bytes"),
                "relu_tflm_arena_bytes": info[("relu", fmt)].get("tflm_arena_bytes"),
                "s2nn_accuracy": accuracy[s], "relu_accuracy": accuracy[rl], "accuracy_examples": n_acc,
                "s2nn_litert_plan": info[(act, fmt)]["litert_plan"],
                "relu_litert_plan": info[("relu", fmt)]["litert_plan"],
            })

    print()
    print("per-image latency (median of per-round medians), ratio = median per-round S2NN/ReLU")
    print(f"{'runtime':12s} {'variant':10s} {'format':8s} {'S2NN ms':>9s} {'ReLU ms':>9s} {'ratio':>6s} {'S2NN B':>9s} {'ReLU B':>9s} "
          f"{'size r':>6s} {'S2NN arena':>10s} {'ReLU arena':>10s} {'acc S2NN':>8s} {'acc ReLU':>8s}")
    for r in results:
        print(f"{r['runtime']:12s} {r['spiking_variant']:10s} {r['format']:8s} {r['s2nn_latency_ms']:9.3f} {r['relu_latency_ms']:9.3f} "
              f"{r['latency_ratio_s2nn_over_relu']:6.3f} {r['s2nn_size_bytes']:9d} {r['relu_size_bytes']:9d} "
              f"{r['size_ratio_s2nn_over_relu']:6.3f} {str(r['s2nn_tflm_arena_bytes']):>10s} "
              f"{str(r['relu_tflm_arena_bytes']):>10s} {r['s2nn_accuracy']:8.3f} {r['relu_accuracy']:8.3f}")
    print(f"Keras accuracy on {len(acc_x)} test images: {keras_acc}")
    payload = {
        "benchmark": "inference",
        "command": C.command_line(),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "models": provenance,
        "keras_accuracy": keras_acc,
        "flatbuffers": {f"{a}/{f}": v for (a, f), v in info.items()},
        "results": results,
        "machine": machine,
    }
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
