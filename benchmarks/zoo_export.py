"""Every model of the export zoo through the default (saturate) export: ops
per format, int8 agreement with and without quantization-aware fine-tuning,
and Arm Ethos-U55 (Vela) NPU fraction and estimated time against its ReLU twin.

The zoo is ``tests/zoo.py``: the S2NN versions of the four MLPerf Tiny
networks (:mod:`s2nn_keras.models.mlperf_tiny`) and the layer patterns users
write by hand, on Fashion-MNIST reshaped to each model's input. Each model
and its ReLU twin (the same network with ReLU; ``tests.zoo.trained(name,
"relu")``) are trained with the zoo's recipe for ``--epochs`` epochs on the
first ``--train_examples`` training images. Then, per model:

* ``formats.<fmt>.ops``: the ops of the float32 / int8 / int16x8 flatbuffer
  (``export.tflite.convert.convert``), whether they are all edge ops
  (``export.formats.EDGE_OPS``), how many neurons are fused into their
  producer (``conv``) or written as their own 1x1 depthwise op (``tensor``),
  and how many spike grids had to come from the levels (neurons silent on
  the calibration images);
* ``agreement``: ``export.metrics.agreement_report`` (same argmax; for the
  regression autoencoder, per-example RMS within 1 % of the output range)
  of the LiteRT int8 / int16x8 model with its Keras model on the first
  ``--test_examples`` test images: post-training (against the trained
  model) and after ``--qat_epochs`` of quantization-aware fine-tuning
  (``export.transform.qat``; against the fine-tuned Keras model, which is what gets
  deployed), and the fine-tuned model's own agreement with the trained one;
* ``vela``: Vela's NPU op fraction, CPU fallbacks and estimated inference
  time (``export.tflite.vela``, ``--accelerator``) of the S2NN int8 model and of
  the ReLU twin's int8 model in its two baselines (``export.transform.rewrites``):
  ``relu``, as the converter writes it (``rewrites=()``: the BatchNorms no
  conv absorbs as MUL + ADD, global pooling as MEAN), and ``relu_bnfolded``,
  through the same default rewrites as the S2NN model (those BatchNorms as
  1x1 depthwise convs, global pooling as AVERAGE_POOL_2D), and the ratios.

Every figure is a count, a fraction of images or a Vela estimate: none
depends on the machine's load. Calibration: the last ``--calibration``
training images.

Example:
  python -m benchmarks.zoo_export --epochs 2 --train_examples 5000
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

FORMATS = ("float32", "int8", "int16x8")


def parse_args(argv=None):
    from tests import zoo

    p = C.OneLineParser(prog="benchmarks.zoo_export", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=C.csv_list(allowed=tuple(zoo.ZOO), name="model"), default=list(zoo.ZOO))
    p.add_argument("--epochs", type=C.positive_int, default=2)
    p.add_argument("--train_examples", type=C.positive_int, default=5000)
    p.add_argument("--test_examples", type=C.positive_int, default=1000)
    p.add_argument("--calibration", type=C.positive_int, default=500)
    p.add_argument("--qat_epochs", type=C.positive_float, default=1.0)
    p.add_argument("--accelerator", default="ethos-u55-128")
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "zoo_export.json"))
    args = p.parse_args(argv)
    if args.calibration > args.train_examples:
        C.fail(p.prog, f"--calibration {args.calibration} exceeds --train_examples {args.train_examples}")
    from export.tflite.vela import ACCELERATORS, available

    if args.accelerator not in ACCELERATORS:
        C.fail(p.prog, f"unknown --accelerator {args.accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    if not available():
        C.fail(p.prog, "Vela is not installed: pip install 's2nn_keras[edge]'")
    return args


def _kinds(conversion):
    kinds = {}
    for n in (conversion.plan.neurons.values() if conversion.plan is not None else ()):
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    return kinds


def _vela(flatbuffer, accelerator):
    from export.tflite.vela import compile_for_ethos_u

    u = compile_for_ethos_u(flatbuffer, accelerator)
    return {k: u[k] for k in ("npu_op_fraction", "cpu_fallback", "estimated_inference_ms", "estimated_cycles")}


def measure(name, args):
    from export.formats import EDGE_OPS
    from export.transform.qat import QATConfig, quantization_aware_fine_tune
    from export.tflite.runtimes import run_litert
    from export.tflite.convert import convert, op_names
    from export.metrics import agreement_report, model_logits
    from tests import zoo

    entry = zoo.ZOO[name]
    task = entry.task
    model = zoo.trained(name, "s2nn", args.epochs, args.train_examples)
    relu = zoo.trained(name, "relu", args.epochs, args.train_examples)
    x_train, y_train, x_test, y_test = zoo.data(name, args.train_examples, args.test_examples)
    calibration = x_train[-args.calibration:]

    def representative():
        for i in range(0, len(calibration), 100):
            yield [calibration[i:i + 100]]

    def score(outputs):
        if task == "regression":
            return {"mse": float(((outputs - y_test) ** 2).mean())}
        return {"accuracy": float((outputs.argmax(1) == y_test).mean())}

    def agree(reference, outputs):
        return agreement_report(reference, outputs, task, inputs=x_test if task == "regression" else None)

    keras_out = model_logits(model, x_test)
    out = {"task": task, "pattern": entry.pattern, "parameters": int(model.count_params()),
           "keras": score(keras_out), "relu_keras": score(model_logits(relu, x_test)), "formats": {},
           "agreement": {}}
    flats = {}
    for fmt in FORMATS:
        conv = convert(model, fmt, representative if fmt != "float32" else None)
        ops = op_names(conv.flatbuffer)
        flats[fmt] = conv.flatbuffer
        out["formats"][fmt] = {"ops": ops, "op_count": int(sum(ops.values())), "edge_only": set(ops) <= EDGE_OPS,
                               "neurons": _kinds(conv), "spike_grids_from_levels": len(conv.spike_grids),
                               "size_bytes": len(conv.flatbuffer)}
        if fmt != "float32":
            lite = run_litert(conv.flatbuffer, x_test)["outputs"]
            out["agreement"][f"{fmt}_post_training"] = agree(keras_out, lite)
            out["formats"][fmt]["litert"] = score(lite)
    relu_int8 = {"relu": convert(relu, "int8", representative, rewrites=()).flatbuffer,
                 "relu_bnfolded": convert(relu, "int8", representative).flatbuffer}
    out["relu_int8_ops"] = {k: op_names(v) for k, v in relu_int8.items()}

    qat = quantization_aware_fine_tune(model, x_train, calibration, QATConfig(epochs=args.qat_epochs, task=task))
    qat_out = model_logits(qat.model, x_test)
    qat_int8 = convert(qat.model, "int8", representative)
    qat_lite = run_litert(qat_int8.flatbuffer, x_test)["outputs"]
    out["agreement"]["int8_qat"] = agree(qat_out, qat_lite)
    out["agreement"]["qat_keras_vs_trained_keras"] = agree(keras_out, qat_out)
    out["qat"] = {"steps": qat.report["steps"], "epochs": qat.report["epochs"], "keras": score(qat_out),
                  "int8_litert": score(qat_lite), "int8_ops": op_names(qat_int8.flatbuffer)}

    vela = {"accelerator": args.accelerator, "s2nn": _vela(flats["int8"], args.accelerator)}
    for baseline, flat in relu_int8.items():
        vela[baseline] = _vela(flat, args.accelerator)
        ms = vela[baseline]["estimated_inference_ms"]
        vela[f"s2nn_over_{baseline}_time"] = vela["s2nn"]["estimated_inference_ms"] / ms if ms else None
    out["vela"] = vela
    return out


def _line(name, r):
    ops = {f: r["formats"][f]["op_count"] for f in FORMATS}
    a = r["agreement"]
    v = r["vela"]
    return (f"{name:22s} ops f32/i8/i16 {ops['float32']:3d}/{ops['int8']:3d}/{ops['int16x8']:3d} "
            f"edge {'yes' if all(r['formats'][f]['edge_only'] for f in FORMATS) else 'NO '} "
            f"int8 agree PTQ {100 * a['int8_post_training']['agreement']:6.2f}% QAT {100 * a['int8_qat']['agreement']:6.2f}% "
            f"U55 NPU {100 * v['s2nn']['npu_op_fraction']:5.1f}% {v['s2nn']['estimated_inference_ms']:.4f} ms "
            f"vs ReLU {100 * v['relu']['npu_op_fraction']:5.1f}% {v['relu']['estimated_inference_ms']:.4f} ms "
            f"({v['s2nn_over_relu_time']:.3f}x), BN-folded ReLU {100 * v['relu_bnfolded']['npu_op_fraction']:5.1f}% "
            f"{v['relu_bnfolded']['estimated_inference_ms']:.4f} ms ({v['s2nn_over_relu_bnfolded_time']:.3f}x)")


def main(argv=None):
    args = parse_args(argv)
    machine = C.machine_info()
    results = {}
    for name in args.models:
        results[name] = measure(name, args)
        print(_line(name, results[name]), flush=True)
    payload = {"benchmark": "zoo_export", "command": C.command_line(), "machine": machine,
               "settings": {k: v for k, v in vars(args).items() if k != "output"}, "models": results}
    print(f"command: {payload['command']}")
    C.write_json(args.output, payload)


if __name__ == "__main__":
    sys.exit(main())
