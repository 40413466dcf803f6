"""The quickstart models on microcontrollers: export.mcu's C on Cortex-M4 and
Cortex-M55 under QEMU, measured side by side.

Models (trained ``.keras`` files; the quickstart config trains the S2NN,
``--activation relu`` its ReLU twin):

* ``s2nn``: the default int8 export (saturate neurons), its spike-driven
  layers in the layout measured fastest on each core;
* ``s2nn_gap_avgpool``: the same with global average pooling as
  ``AVERAGE_POOL_2D`` (``export.transform.rewrites.global_average_pool_as_average_pool``);
* ``relu_bnfolded``: the ReLU twin with its pre-activation BatchNorms as 1x1
  depthwise convs (``export.transform.rewrites.batchnorm_as_depthwise``), so that the
  comparison isolates spiking from BN folding (the converter's own ReLU
  form, broadcast MUL + ADD, is outside the edge op set the generator runs).

Per model: the host build of every layout against the ``tflite-micro``
interpreter on ``--host_images`` test images; per core the firmware run
under ``qemu-system-arm -icount shift=0`` on ``--images`` test images
(byte-compared with TFLM), retired instructions per inference and per
layer, flash and RAM from the map file and the stack paint; for the S2NN
the all-dense build of the same model beside the spike-driven one, the
per-layer table of instructions against measured input firing rate, and
the fit of instructions to Appendix B's AC count (FLOPs x rate). Then the
targets of issue 16, each with its measured number.

Instruction counts do not depend on the machine's load; the timings in
the JSON (``seconds``) do.

    python -m benchmarks.mcu --s2nn_model runs/quickstart/final.keras \\
        --relu_model runs/quickstart_relu/final.keras
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402
from export.mcu.targets import CORES  # noqa: E402

TFLM_CMSIS_M55 = 3_181_757   # TFLM + CMSIS-NN, quickstart S2NN on the M55 (issue 16's anchor table)


def parse(argv=None):
    p = C.OneLineParser(prog="python -m benchmarks.mcu", description=__doc__.split("\n\n")[0])
    p.add_argument("--s2nn_model", default="runs/quickstart/final.keras")
    p.add_argument("--relu_model", default="runs/quickstart_relu/final.keras",
                   help="the ReLU twin (trainers.cifar --flagfile trainers/configs/quickstart.cfg --activation relu)")
    p.add_argument("--images", type=C.positive_int, default=200, help="test images per QEMU run")
    p.add_argument("--host_images", type=C.positive_int, default=10000, help="test images of the host check")
    p.add_argument("--measure_images", type=C.positive_int, default=20, help="images of the layout choice")
    p.add_argument("--num_calibration", type=C.positive_int, default=500)
    p.add_argument("--cores", type=C.csv_list(str, CORES, "core"), default=list(CORES))
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "mcu_quickstart.json"))
    return p.parse_args(argv)


def _convert(path, calib, gap, bnfold):
    from export.loader import load_model
    from export.tflite.convert import convert, ensure_folded

    model = ensure_folded(load_model(path))
    names = (("bn_as_depthwise",) if bnfold else ()) + (("gap_as_average_pool",) if gap else ())

    def representative():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    return convert(model, "int8", representative, rewrites=names)


def _targets(models, cores):
    s2 = models["s2nn"]["cores"]
    relu = models.get("relu_bnfolded", {}).get("cores", {})
    out = []
    for core in cores:
        e = s2[core]
        out.append({"core": core, "target": "spike-driven <= 0.5 x dense path", "measured": e["spike_vs_dense"],
                    "met": e["spike_vs_dense"] <= 0.5})
        if core in relu:
            r = e["instructions"]["mean"] / relu[core]["instructions"]["mean"]
            out.append({"core": core, "target": "spike-driven <= 0.6 x ReLU twin (relu_bnfolded)", "measured": r,
                        "met": r <= 0.6})
        out.append({"core": core, "target": "RAM <= TFLM arena", "measured": e["ram_bytes"],
                    "limit": e["tflm_arena_bytes"], "met": e["ram_bytes"] <= e["tflm_arena_bytes"]})
        limit = e["tflite_bytes"] + 16 * 1024
        out.append({"core": core, "target": "flash <= .tflite + 16 KiB", "measured": e["flash_bytes"], "limit": limit,
                    "met": e["flash_bytes"] <= limit})
        out.append({"core": core, "target": "byte-identical with TFLM on every image",
                    "measured": e["bit_exact"]["fraction"], "met": e["bit_exact"]["fraction"] == 1.0})
        if core == "cortex-m55":
            out.append({"core": core, "target": "whole model <= TFLM + CMSIS-NN (3.18 M)",
                        "measured": e["instructions"]["mean"], "limit": TFLM_CMSIS_M55,
                        "met": e["instructions"]["mean"] <= TFLM_CMSIS_M55})
    host = models["s2nn"]["host"]
    out.append({"core": "host", "target": f"host build byte-identical with TFLM ({host['dense']['images']} images)",
                "measured": min(h["fraction"] for h in host.values()),
                "met": all(h["fraction"] == 1.0 for h in host.values())})
    return out


def main(argv=None):
    args = parse(argv)
    for flag, path in (("--s2nn_model", args.s2nn_model), ("--relu_model", args.relu_model)):
        if not os.path.isfile(path):
            C.fail("python -m benchmarks.mcu", f"{flag} {path!r} does not exist (train it: python -m trainers.cifar "
                   "--flagfile trainers/configs/quickstart.cfg [--activation relu] --output_dir DIR)")
    from export.mcu.firmware import missing_tools

    if missing_tools():
        C.fail("python -m benchmarks.mcu", f"{', '.join(missing_tools())} not found (Debian: apt-get install "
               "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import numpy as np

    from export.mcu.config import McuConfig
    from export.mcu.run import format_summary, run_mcu
    from s2nn_keras.datasets import load_arrays

    machine = C.machine_info()
    x_test, _ = load_arrays("fashion_mnist", "test", None, max(args.host_images, args.images))
    x_train, _ = load_arrays("fashion_mnist", "train")
    calib = x_train[-args.num_calibration:].astype(np.float32) / 255.0
    specs = {"s2nn": (args.s2nn_model, False, False), "s2nn_gap_avgpool": (args.s2nn_model, True, False),
             "relu_bnfolded": (args.relu_model, False, True)}
    models = {}
    for name, (path, gap, bnfold) in specs.items():
        print(f"{name}: {path}", flush=True)
        conv = _convert(path, calib, gap, bnfold)
        host_images = args.host_images if name == "s2nn" else min(args.host_images, 1000)
        report = run_mcu(conv, x_test, McuConfig(cores=args.cores, num_images=args.images,
                                                 measure_images=args.measure_images, host_images=host_images,
                                                 model_name=name, verbose=True))
        report["source"] = path
        report["ops"] = report.pop("op_counts")
        print(format_summary(report), flush=True)
        models[name] = report
    targets = _targets(models, args.cores)
    print("\nmodel              core        instructions   dense path   x dense  flash[B]  RAM[B]  bit-exact")
    for name, r in models.items():
        for core, e in r["cores"].items():
            print(f"{name:<18} {core:<10} {e['instructions']['mean']:>13,.0f} {e['instructions_dense']['mean']:>12,.0f}"
                  f"  {e['spike_vs_dense']:>6.3f}  {e['flash_bytes']:>8}  {e['ram_bytes']:>6}  "
                  f"{e['bit_exact']['equal']}/{e['bit_exact']['images']}")
    for core in args.cores:
        e = models["s2nn"]["cores"][core]
        print(f"\nS2NN per layer on {core}: mean instructions per inference over {e['measured_layouts']['dense']['images']}"
              " images (dense / spike_list / spike_mask), chosen layout, input firing rate")
        print("layer                            op                  MACs  rate     dense   spike_list  spike_mask  "
              "chosen      x dense")
        for row in e["per_layer"]:
            ins = row["instructions"]
            rate = row.get("input_firing_rate")
            print(f"{row['name'][:32]:<32} {row['op'][:17]:<17} {row['macs']:>9,} "
                  f"{'' if rate is None else f'{rate:.3f}':>5} {ins['dense']:>9,.0f} {ins['spike_list']:>12,.0f}"
                  f" {ins['spike_mask']:>11,.0f}  {row['layout']:<10} {ins['chosen'] / ins['dense']:>6.3f}")
        fit = e["fit"]
        print(f"fit over {fit['points']} (spike-driven layer, image) points: instructions = "
              f"{fit['instructions_vs_ac']['per_ac']:.3f} x AC + {fit['instructions_vs_ac']['intercept']:,.0f} "
              f"(R^2 {fit['instructions_vs_ac']['r2']:.3f}); = {fit['instructions_vs_ac_and_outputs']['per_ac']:.3f} "
              f"x AC + {fit['instructions_vs_ac_and_outputs']['per_output']:.1f} x outputs "
              f"(R^2 {fit['instructions_vs_ac_and_outputs']['r2']:.3f}); AC = FLOPs x input firing rate (Appendix B)")
    print("\ntargets (issue 16)")
    for t in targets:
        limit = f" (limit {t['limit']:,})" if "limit" in t else ""
        value = f"{t['measured']:,.0f}" if t["measured"] > 10 else f"{t['measured']:.3f}"
        print(f"  {t['core']:<10} {t['target']:<52} {value:>11}{limit}  {'met' if t['met'] else 'NOT met'}")
    payload = {"benchmark": "mcu", "command": C.command_line(), "machine": machine,
               "tools": _tool_versions(), "tflm_cmsis_nn_m55_anchor": TFLM_CMSIS_M55,
               "models": models, "targets": targets}
    C.write_json(args.output, payload)
    return 0 if all(t["met"] for t in targets if "byte-identical" in t["target"]) else 1


def _tool_versions():
    import subprocess

    out = {}
    for tool, flag in (("arm-none-eabi-gcc", "--version"), ("qemu-system-arm", "--version"), ("gcc", "--version")):
        try:
            out[tool] = subprocess.run([tool, flag], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[tool] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
