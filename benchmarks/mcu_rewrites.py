"""What export.transform.rewrites changes, measured on the quickstart models.

* ``gap_as_average_pool`` on the folded S2NN: TFLite ops per format, and
  the rounding difference of ``MEAN`` against ``AVERAGE_POOL_2D`` in the
  TFLite Micro interpreter over ``--images`` test images -- the fraction of
  images whose outputs are identical, the largest difference in output
  steps, top-1 agreement, and the accuracy of each -- in float32, int8 and
  int16x8.
* ``bn_as_depthwise`` on the ReLU twin ("relu" -> "relu_bnfolded"): the
  largest logit difference and top-1 agreement of the two Keras models, and
  the int8 op counts and file sizes.

    python -m benchmarks.mcu_rewrites --s2nn_model runs/quickstart/final.keras \\
        --relu_model runs/quickstart_relu/final.keras
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402


def main(argv=None):
    p = C.OneLineParser(prog="python -m benchmarks.mcu_rewrites", description=__doc__.split("\n\n")[0])
    p.add_argument("--s2nn_model", default="runs/quickstart/final.keras")
    p.add_argument("--relu_model", default="runs/quickstart_relu/final.keras")
    p.add_argument("--images", type=C.positive_int, default=2000)
    p.add_argument("--num_calibration", type=C.positive_int, default=500)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "mcu_rewrites.json"))
    args = p.parse_args(argv)
    for flag, path in (("--s2nn_model", args.s2nn_model), ("--relu_model", args.relu_model)):
        if not os.path.isfile(path):
            C.fail("python -m benchmarks.mcu_rewrites", f"{flag} {path!r} does not exist")
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import numpy as np

    from export.transform import rewrites
    from export.tflite.flatbuffer import op_counts, read_model
    from export.transform.fold import fold_batchnorm
    from export.loader import load_model
    from export.tflite.runtimes import run_tflm
    from export.tflite.convert import convert
    from s2nn_keras.datasets import load_arrays

    machine = C.machine_info()
    x, y = load_arrays("fashion_mnist", "test", None, args.images)
    x = x.astype(np.float32) / 255.0
    calib = load_arrays("fashion_mnist", "train")[0][-args.num_calibration:].astype(np.float32) / 255.0

    def representative():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    folded = fold_batchnorm(load_model(args.s2nn_model))
    gap = rewrites.global_average_pool_as_average_pool(folded)
    out = {"gap_as_average_pool": {"model": args.s2nn_model, "images": len(x), "formats": {}},
           "bn_as_depthwise": {"model": args.relu_model}}
    keras_diff = float(np.max(np.abs(folded.predict(x, verbose=0) - gap.predict(x, verbose=0))))
    out["gap_as_average_pool"]["keras_max_logit_diff"] = keras_diff
    print(f"gap_as_average_pool (S2NN, folded): Keras max |logit diff| {keras_diff:.3g}")
    print("  format   ops before -> after                          identical outputs  max diff [steps]  "
          "top-1 agree  accuracy MEAN / AVG_POOL")
    for fmt in ("float32", "int8", "int16x8"):
        rep = representative if fmt != "float32" else None
        a, b = convert(folded, fmt, rep, rewrites=()), convert(gap, fmt, rep, rewrites=())
        oa, ob = run_tflm(a.flatbuffer, x)["outputs"], run_tflm(b.flatbuffer, x)["outputs"]
        g = read_model(b.flatbuffer).main
        q = g.tensors[g.outputs[0]].quantization
        step = float(q.scales[0]) if q is not None else None
        diff = float(np.max(np.abs(oa - ob)))
        entry = {"ops_mean": op_counts(a.flatbuffer), "ops_average_pool": op_counts(b.flatbuffer),
                 "bytes_mean": len(a.flatbuffer), "bytes_average_pool": len(b.flatbuffer),
                 "identical_images": float(np.mean(np.all(oa == ob, axis=1))),
                 "max_abs_diff": diff, "max_diff_steps": None if step is None else diff / step,
                 "top1_agreement": float(np.mean(oa.argmax(1) == ob.argmax(1))),
                 "accuracy_mean": float(np.mean(oa.argmax(1) == y)),
                 "accuracy_average_pool": float(np.mean(ob.argmax(1) == y))}
        out["gap_as_average_pool"]["formats"][fmt] = entry
        steps = "-" if step is None else f"{entry['max_diff_steps']:.2f}"
        print(f"  {fmt:<8} MEAN {entry['ops_mean'].get('MEAN', 0)} / AVERAGE_POOL_2D "
              f"{entry['ops_mean'].get('AVERAGE_POOL_2D', 0)} -> {entry['ops_average_pool'].get('MEAN', 0)} / "
              f"{entry['ops_average_pool'].get('AVERAGE_POOL_2D', 0)}   {100 * entry['identical_images']:>14.2f}%"
              f"  {steps:>16}  {100 * entry['top1_agreement']:>10.2f}%  "
              f"{100 * entry['accuracy_mean']:.2f}% / {100 * entry['accuracy_average_pool']:.2f}%")
    relu = load_model(args.relu_model)
    bnf = rewrites.batchnorm_as_depthwise(relu)
    la, lb = relu.predict(x, verbose=0), bnf.predict(x, verbose=0)
    ca, cb = convert(relu, "int8", representative, rewrites=()), convert(bnf, "int8", representative, rewrites=())
    entry = out["bn_as_depthwise"]
    entry.update(keras_max_logit_diff=float(np.max(np.abs(la - lb))),
                 keras_top1_agreement=float(np.mean(la.argmax(1) == lb.argmax(1))),
                 int8_ops_relu=op_counts(ca.flatbuffer), int8_ops_relu_bnfolded=op_counts(cb.flatbuffer),
                 int8_bytes_relu=len(ca.flatbuffer), int8_bytes_relu_bnfolded=len(cb.flatbuffer),
                 layers_relu={k: sum(1 for l in relu.layers if type(l).__name__ == k)
                              for k in ("BatchNormalization", "DepthwiseConv2D", "ReLU")},
                 layers_relu_bnfolded={k: sum(1 for l in bnf.layers if type(l).__name__ == k)
                                       for k in ("BatchNormalization", "DepthwiseConv2D", "ReLU")})
    print(f"bn_as_depthwise (ReLU twin): Keras max |logit diff| {entry['keras_max_logit_diff']:.3g}, top-1 agreement "
          f"{100 * entry['keras_top1_agreement']:.2f}%")
    print(f"  layers  relu {entry['layers_relu']}  relu_bnfolded {entry['layers_relu_bnfolded']}")
    print(f"  int8 ops relu {entry['int8_ops_relu']} ({entry['int8_bytes_relu']} B)")
    print(f"  int8 ops relu_bnfolded {entry['int8_ops_relu_bnfolded']} ({entry['int8_bytes_relu_bnfolded']} B)")
    C.write_json(args.output, {"benchmark": "mcu_rewrites", "command": C.command_line(), "machine": machine, **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
