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
ratios against TFLite Micro + CMSIS-NN on both cores (measured outside this
repository on 2026-12-07, on the same .tflite files and images: TFLM_CMSIS),
before and now, per op type, and the targets, each with its measured number.
Retired instructions are not cycles: QEMU models no pipeline, memory wait
states or Helium beat timing.

Instruction counts do not depend on the machine's load; the timings in
the JSON (``seconds``) do.

    python -m benchmarks.mcu --s2nn_model runs/quickstart/final.keras \\
        --relu_model runs/quickstart_relu/final.keras
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402
from export.mcu.targets import CORES, DEFAULT_CORES  # noqa: E402

#: TFLite Micro + CMSIS-NN, measured OUTSIDE this repository on 2026-12-07 on the
#: quickstart models' .tflite files (the ones python -m export.mcu converts) and
#: the same 50 test images: TFLM's cmsis_nn kernels at the revisions its download
#: scripts pin, -O2, GCC 12, the project's board harness, QEMU -icount shift=0,
#: every output byte equal. Retired instructions per inference, quickstart
#: architecture (308,650 parameters). "s2nn" is export.mcu's int8 (the default
#: export, global pool as AVERAGE_POOL_2D); "ops": the S2NN per op type.
TFLM_CMSIS = {
    "source": "TFLite Micro + CMSIS-NN, measured outside this repository on 2026-12-07 (same .tflite files, "
              "same 50 test images, QEMU -icount shift=0, every output byte equal)",
    "cortex-m55": {"s2nn": 2_873_985, "relu_bnfolded": 2_873_985, "relu_converter_form": 5_826_390,
                   "s2nn_reference_kernels": 59_870_000,
                   "ops": {"CONV_2D": 2_484_376, "DEPTHWISE_CONV_2D": 185_335, "ADD": 159_759,
                           "AVERAGE_POOL_2D": 43_491}},
    "cortex-m4": {"s2nn": 20_517_886, "relu_bnfolded": 20_867_742, "relu_converter_form": 23_038_113,
                  "ops": {"CONV_2D": 18_842_367, "DEPTHWISE_CONV_2D": 667_895, "ADD": 933_990,
                          "AVERAGE_POOL_2D": 70_552}},
}
#: This generator before the threshold outputs, spike streams and the new dense
#: kernels, in the same outside measurement (default export).
BEFORE = {
    "cortex-m55": {"spike": 1_588_998, "dense": 4_020_638, "relu_bnfolded": 4_020_638,
                   "ops_spike": {"CONV_2D": 1_323_500, "DEPTHWISE_CONV_2D": 107_485, "ADD": 143_415,
                                 "AVERAGE_POOL_2D": 13_751},
                   "ops_dense": {"CONV_2D": 3_755_143}},
    "cortex-m4": {"spike": 7_513_978, "dense": 21_861_335, "relu_bnfolded": 22_240_742,
                  "ops_spike": {"CONV_2D": 6_031_952, "DEPTHWISE_CONV_2D": 632_094, "ADD": 790_685,
                                "AVERAGE_POOL_2D": 56_004},
                  "ops_dense": {"CONV_2D": 20_379_311}},
}
#: Flash and RAM of the default export's spike-driven build before (docs/MCU.md,
#: 2026-12-06): "no larger than today".
MEMORY_BEFORE = {"cortex-m55": {"flash": 328_072, "ram": 20_940}, "cortex-m4": {"flash": 324_360, "ram": 20_672}}
#: The targets per core: spike-driven S2NN against TFLM + CMSIS-NN, and the
#: fixed cost per output value of a spike-driven layer (the fit).
GOALS = {"cortex-m55": {"vs_tflm": 0.30, "per_output": 5.0}, "cortex-m4": {"vs_tflm": 0.20, "per_output": 20.0}}
#: the model whose .tflite TFLM was measured on: the default export
MEASURED_MODEL = "s2nn_gap_avgpool"


def parse(argv=None):
    p = C.OneLineParser(prog="python -m benchmarks.mcu", description=__doc__.split("\n\n")[0])
    p.add_argument("--s2nn_model", default="runs/quickstart/final.keras")
    p.add_argument("--relu_model", default="runs/quickstart_relu/final.keras",
                   help="the ReLU twin (trainers.cifar --flagfile trainers/configs/quickstart.cfg --activation relu)")
    p.add_argument("--images", type=C.positive_int, default=200, help="test images per QEMU run")
    p.add_argument("--host_images", type=C.positive_int, default=10000, help="test images of the host check")
    p.add_argument("--measure_images", type=C.positive_int, default=20, help="images of the layout choice")
    p.add_argument("--num_calibration", type=C.positive_int, default=500)
    p.add_argument("--cores", type=C.csv_list(str, CORES, "core"), default=list(DEFAULT_CORES))
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "mcu_quickstart.json"))
    return p.parse_args(argv)


def measurement_data(prog, cores, n_test, num_calibration):
    """What a QEMU measurement of a Fashion-MNIST model needs, after one
    refusal line (``prog``) if the tools of ``cores`` (``None``: every
    target) are missing: TensorFlow imported quietly, the first ``n_test``
    test images (uint8) and the last ``num_calibration`` training images as
    float32 in [0, 1] (the int8 calibration set)."""
    from export.mcu.firmware import missing_tools

    missing = missing_tools(cores)
    if missing:
        C.fail(prog, f"{', '.join(missing)} not found (Debian: apt-get install gcc-arm-none-eabi "
               "libnewlib-arm-none-eabi qemu-system-arm)")
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import numpy as np

    from s2nn_keras.datasets import load_arrays

    x_test, _ = load_arrays("fashion_mnist", "test", None, n_test)
    x_train, _ = load_arrays("fashion_mnist", "train")
    return x_test, x_train[-num_calibration:].astype(np.float32) / 255.0


def convert_quickstart(path, calib, *, gap, bnfold):
    """The int8 conversion of a trained ``.keras`` the way this benchmark
    measures it: ``gap`` global pooling as AVERAGE_POOL_2D (the default
    export's form, the one TFLM + CMSIS-NN was measured on), ``bnfold`` the
    ReLU twin's pre-activation BatchNorms as 1x1 depthwise convs."""
    from export.loader import load_model
    from export.tflite.convert import convert, ensure_folded

    model = ensure_folded(load_model(path))
    names = (("bn_as_depthwise",) if bnfold else ()) + (("gap_as_average_pool",) if gap else ())

    def representative():
        for i in range(0, len(calib), 50):
            yield [calib[i:i + 50]]

    return convert(model, "int8", representative, rewrites=names)


def op_totals(rows, layout: str) -> Dict[str, float]:
    """Instructions per op type (a per-layer table of :func:`export.mcu.run.run_mcu`);
    the fused ADD + neuron layers (``ADD+DEPTHWISE_CONV_2D``) under that name."""
    out: Dict[str, float] = {}
    for row in rows:
        out[row["op"]] = out.get(row["op"], 0.0) + row["instructions"].get(layout, 0.0)
    return out


def _compare_ops(ours: Dict[str, float], tflm: Dict[str, int]) -> List[Dict]:
    """Rows op / TFLM + CMSIS-NN / ours: the fused ADD + neuron against TFLM's
    ADD plus DEPTHWISE_CONV_2D (all the neurons of shared tensors), our
    1x1 subsamples inside CONV_2D against TFLM's AVERAGE_POOL_2D."""
    fused = ours.get("ADD+DEPTHWISE_CONV_2D", 0.0) + ours.get("ADD", 0.0) + ours.get("DEPTHWISE_CONV_2D", 0.0)
    return [{"op": "CONV_2D", "tflm": tflm["CONV_2D"], "ours": ours.get("CONV_2D", 0.0)},
            {"op": "ADD + DEPTHWISE_CONV_2D", "tflm": tflm["ADD"] + tflm["DEPTHWISE_CONV_2D"], "ours": fused},
            {"op": "AVERAGE_POOL_2D", "tflm": tflm["AVERAGE_POOL_2D"], "ours": ours.get("AVERAGE_POOL_2D", 0.0)}]


def _targets(models, cores):
    s2 = models["s2nn"]["cores"]
    measured = models.get(MEASURED_MODEL, models["s2nn"])["cores"]
    relu = models.get("relu_bnfolded", {}).get("cores", {})
    out = []
    for core in cores:
        e, m = s2[core], measured[core]
        out.append({"core": core, "target": "spike-driven <= 0.5 x dense path", "measured": e["spike_vs_dense"],
                    "met": e["spike_vs_dense"] <= 0.5})
        if core in relu:
            r = e["instructions"]["mean"] / relu[core]["instructions"]["mean"]
            out.append({"core": core, "target": "spike-driven <= 0.6 x ReLU twin (relu_bnfolded)", "measured": r,
                        "met": r <= 0.6})
        if core in TFLM_CMSIS:
            t, goal = TFLM_CMSIS[core], GOALS[core]
            r = m["instructions"]["mean"] / t["s2nn"]
            out.append({"core": core, "target": f"spike-driven <= {goal['vs_tflm']:.2f} x TFLM + CMSIS-NN "
                        f"({t['s2nn']:,})", "measured": r, "met": r <= goal["vs_tflm"]})
            conv = op_totals(m["per_layer"], "dense").get("CONV_2D", 0.0) / t["ops"]["CONV_2D"]
            out.append({"core": core, "target": "dense CONV_2D <= 1.0 x TFLM + CMSIS-NN's", "measured": conv,
                        "met": conv <= 1.0})
            per_out = (m.get("fit") or {}).get("instructions_vs_ac_and_outputs", {}).get("per_output")
            if per_out is not None:
                out.append({"core": core, "target": f"spike-driven layer per output value <= {goal['per_output']:g} "
                            "(fit)", "measured": per_out, "met": per_out <= goal["per_output"]})
            before = MEMORY_BEFORE[core]
            out.append({"core": core, "target": "flash <= before (the default export)", "measured": m["flash_bytes"],
                        "limit": before["flash"], "met": m["flash_bytes"] <= before["flash"]})
            out.append({"core": core, "target": "RAM <= before (the default export)", "measured": m["ram_bytes"],
                        "limit": before["ram"], "met": m["ram_bytes"] <= before["ram"]})
        out.append({"core": core, "target": "RAM <= TFLM arena", "measured": e["ram_bytes"],
                    "limit": e["tflm_arena_bytes"], "met": e["ram_bytes"] <= e["tflm_arena_bytes"]})
        limit = e["tflite_bytes"] + 16 * 1024
        out.append({"core": core, "target": "flash <= .tflite + 16 KiB", "measured": e["flash_bytes"], "limit": limit,
                    "met": e["flash_bytes"] <= limit})
        for name, r in models.items():
            b = r["cores"][core]["bit_exact"]
            out.append({"core": core, "target": f"{name}: byte-identical with TFLM on every image",
                        "measured": b["fraction"], "met": b["fraction"] == 1.0})
    host = models["s2nn"]["host"]
    out.append({"core": "host", "target": f"host build byte-identical with TFLM ({host['dense']['images']} images)",
                "measured": min(h["fraction"] for h in host.values()),
                "met": all(h["fraction"] == 1.0 for h in host.values())})
    return out


def _print_against_tflm(models, cores):
    """Ratios against TFLite Micro + CMSIS-NN (measured outside this
    repository, TFLM_CMSIS) on both cores, before and now, and per op type."""
    print(f"\nagainst {TFLM_CMSIS['source']}; retired instructions, not cycles (QEMU models no pipeline, memory "
          "or Helium beat timing)")
    print("model / build                         core        before        now    TFLM+CMSIS-NN  now x TFLM  "
          "before x TFLM")
    for core in cores:
        if core not in TFLM_CMSIS:
            continue
        t, b = TFLM_CMSIS[core], BEFORE[core]
        m = models.get(MEASURED_MODEL, models["s2nn"])["cores"][core]
        rows = [("S2NN spike-driven", b["spike"], m["instructions"]["mean"], t["s2nn"]),
                ("S2NN dense kernels", b["dense"], m["instructions_dense"]["mean"], t["s2nn"])]
        if "relu_bnfolded" in models:
            rows.append(("ReLU twin, BN folded", b["relu_bnfolded"],
                         models["relu_bnfolded"]["cores"][core]["instructions"]["mean"], t["relu_bnfolded"]))
        for name, before, now, ref in rows:
            print(f"{name:<37} {core:<10} {before:>11,.0f} {now:>11,.0f} {ref:>15,.0f} {now / ref:>10.3f}  "
                  f"{before / ref:>12.3f}")
        print(f"  per op type on {core} (S2NN): TFLM+CMSIS-NN / before spike / now spike / before dense / now dense")
        spike, dense = op_totals(m["per_layer"], "chosen"), op_totals(m["per_layer"], "dense")
        dense_rows = {r["op"]: r["ours"] for r in _compare_ops(dense, t["ops"])}
        before_ops = dict(b["ops_spike"])
        before_rows = {r["op"]: r["ours"] for r in _compare_ops(before_ops, t["ops"])}
        for r in _compare_ops(spike, t["ops"]):
            bd = b["ops_dense"].get(r["op"])
            print(f"    {r['op']:<26} {r['tflm']:>12,.0f} {before_rows[r['op']]:>12,.0f} {r['ours']:>12,.0f} "
                  f"{'' if bd is None else f'{bd:,.0f}':>12} {dense_rows[r['op']]:>12,.0f}")
    print("  (ADD + DEPTHWISE_CONV_2D: TFLM's ADDs and its 1x1 depthwise neurons; here the ADDs fused with the "
          "neuron that reads them plus the stem's neuron. The shortcut's 1x1 AVERAGE_POOL_2D subsample is the "
          "stride of the 1x1 conv here, inside CONV_2D.)")


def appendix_b_vs_measured(models, cores, efficiency, energy_images):
    """Rows core / E_Full/E_Method (Appendix B) / measured instruction
    ratios in the same sense (> 1 a saving): own dense path over
    spike-driven, and TFLM + CMSIS-NN on the BN-folded ReLU twin over
    spike-driven (TFLM_CMSIS)."""
    out = []
    for core in cores:
        m = models.get(MEASURED_MODEL, models["s2nn"])["cores"][core]
        spike = m["instructions"]["mean"]
        row = {"core": core, "e_full_over_e_method": efficiency, "energy_images": energy_images,
               "dense_over_spike": m["instructions_dense"]["mean"] / spike}
        if core in TFLM_CMSIS:
            row["tflm_relu_over_spike"] = TFLM_CMSIS[core]["relu_bnfolded"] / spike
        out.append(row)
    return out


def _print_appendix_b(rows):
    print(f"\nAppendix B's E_Full/E_Method (Keras model, {rows[0]['energy_images']} test images, 45 nm fp32 MAC/AC "
          "energies) beside the measured instruction ratios")
    print("core        E_Full/E_Method  dense/spike-driven  TFLM+CMSIS-NN ReLU twin/spike-driven")
    for r in rows:
        tflm = r.get("tflm_relu_over_spike")
        print(f"{r['core']:<10} {r['e_full_over_e_method']:>16.1f} {r['dense_over_spike']:>19.2f} "
              f"{'' if tflm is None else f'{tflm:.2f}':>37}")
    print("  They differ because Appendix B counts only the multiply-accumulates of conv and dense layers "
          "(E_MAC = 4.6 pJ against E_AC = 0.9 pJ, times the firing rate), while an MCU spends instructions "
          "also on what it does not count: the stem conv on real-valued pixels, the BatchNorm+neuron after "
          "each residual ADD, pooling, the per-output threshold compare and spike encoding, and the walk over "
          "the lists of fired inputs; and an int8 MAC costs an MCU about what an add does (SMLAD, VMLADAV), "
          "not 5x.")


def _appendix_b_efficiency(path, x_test):
    from export.loader import load_model
    from s2nn_keras.energy import energy_report

    return float(energy_report(load_model(path), x_test.astype("float32") / 255.0)["efficiency"])


def main(argv=None):
    args = parse(argv)
    for flag, path in (("--s2nn_model", args.s2nn_model), ("--relu_model", args.relu_model)):
        if not os.path.isfile(path):
            C.fail("python -m benchmarks.mcu", f"{flag} {path!r} does not exist (train it: python -m trainers.cifar "
                   "--flagfile trainers/configs/quickstart.cfg [--activation relu] --output_dir DIR)")
    x_test, calib = measurement_data("python -m benchmarks.mcu", None, max(args.host_images, args.images),
                                     args.num_calibration)
    from export.mcu.config import McuConfig
    from export.mcu.run import format_summary, run_mcu

    machine = C.machine_info()
    specs = {"s2nn": (args.s2nn_model, False, False), "s2nn_gap_avgpool": (args.s2nn_model, True, False),
             "relu_bnfolded": (args.relu_model, False, True)}
    models = {}
    for name, (path, gap, bnfold) in specs.items():
        print(f"{name}: {path}", flush=True)
        conv = convert_quickstart(path, calib, gap=gap, bnfold=bnfold)
        host_images = args.host_images if name == "s2nn" else min(args.host_images, 1000)
        report = run_mcu(conv, x_test, McuConfig(cores=args.cores, num_images=args.images,
                                                 measure_images=args.measure_images, host_images=host_images,
                                                 model_name=name, verbose=True))
        report["source"] = path
        report["ops"] = report.pop("op_counts")
        print(format_summary(report), flush=True)
        models[name] = report
    targets = _targets(models, args.cores)
    _print_against_tflm(models, args.cores)
    n_energy = min(1000, len(x_test))
    appendix_b = appendix_b_vs_measured(models, args.cores, _appendix_b_efficiency(args.s2nn_model, x_test[:n_energy]),
                                        n_energy)
    _print_appendix_b(appendix_b)
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
    print("\ntargets")
    for t in targets:
        limit = f" (limit {t['limit']:,})" if "limit" in t else ""
        value = f"{t['measured']:,.0f}" if t["measured"] > 100 else f"{t['measured']:.3f}"
        print(f"  {t['core']:<10} {t['target']:<52} {value:>11}{limit}  {'met' if t['met'] else 'NOT met'}")
    payload = {"benchmark": "mcu", "command": C.command_line(), "machine": machine,
               "tools": _tool_versions(), "tflm_cmsis_nn": TFLM_CMSIS, "before": BEFORE,
               "memory_before": MEMORY_BEFORE, "appendix_b_vs_measured": appendix_b,
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
