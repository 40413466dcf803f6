"""Generate, build, run and measure: the microcontroller report of an int8 model.

:func:`run_mcu` is the whole path for one conversion (or int8 flatbuffer),
which it parses once:

1. lower it (:mod:`export.mcu.lower`), spike tensors from the conversion
   (:func:`spike_codes`);
2. quantize the images with the model's input quantization and run them
   through the ``tflite-micro`` interpreter (the reference, raw int8
   outputs);
3. host build of every layout (``gcc``): outputs byte-compared with TFLM;
4. per core: firmware of every layout on the first ``measure_images``
   images under QEMU -- per-layer retired instructions; each spike-capable
   layer takes the layout with the fewest (``layouts="auto"``); the chosen
   firmware then runs every image, outputs byte-compared with TFLM, and
   twice on a few images to check the counts are the same;
5. a JSON-friendly report (:func:`run_mcu`'s docstring) and a summary.

What a run does is an :class:`export.mcu.config.McuConfig`. :func:`reporter`
wraps the run as an :class:`export.report.FormatReporter` for ``export_run``
(``report["formats"]["int8"]["mcu"]``).

Example::

    from export import mcu
    report = mcu.run_mcu(conversion, x_test, mcu.McuConfig(cores=("cortex-m4", "cortex-m55"), num_images=50))
    report["cores"]["cortex-m55"]["instructions"]["mean"]
    print(mcu.format_summary(report))
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from export.mcu.config import McuConfig
from s2nn_keras.datasets import as_model_input
from export.mcu.lower import DENSE, SPIKE_LAYOUTS, Program, TensorSpec, lower, parsed_model

__all__ = ["spike_codes", "quantize_inputs", "tflm_outputs", "run_mcu", "reporter", "format_summary",
           "McuConfig", "DETERMINISM_IMAGES"]

#: images the chosen firmware runs twice (the counts must be the same)
DETERMINISM_IMAGES = 3


def spike_codes(conversion, model=None) -> Dict[int, Tuple[int, int]]:
    """``{tensor index: (off code, on code)}`` of the spike tensors of an
    :class:`export.tflite.convert.Conversion` (saturate neuron: the levels of its
    plan, as int8 codes; other formulations have none the generator can use).
    ``model``: the conversion's flatbuffer already parsed
    (:func:`export.tflite.flatbuffer.read_model`), else it is read."""
    from export.tflite.convert import level_codes

    if conversion is None or conversion.plan is None or not conversion.spike_tensors:
        return {}
    graph = parsed_model(conversion.flatbuffer if model is None else model).main
    out = {}
    for name, t in conversion.spike_tensors.items():
        tensor = graph.tensors[t]
        neuron = conversion.plan.neurons.get(name)
        if tensor.quantization is None or neuron is None or tensor.dtype != np.int8:
            continue
        out[int(t)] = tuple(int(c) for c in level_codes(tensor.quantization, tensor.dtype, neuron.levels))
    return out


def quantize_inputs(model, images) -> np.ndarray:
    """The images (uint8, or float32 in the model's convention) as the
    input tensor of ``model`` (flatbuffer bytes or parsed) holds them:
    ``[N, input bytes]`` int8 (or float32), quantized as
    :func:`export.tflite.runtimes.quantize` does."""
    from export.tflite.runtimes import quantize

    graph = parsed_model(model).main
    t = graph.tensors[graph.inputs[0]]
    x = as_model_input(images)
    if tuple(x.shape[1:]) != tuple(t.shape[1:]):
        raise ValueError(f"images of shape {tuple(x.shape[1:])} do not match the model input {tuple(t.shape[1:])}")
    details = {"dtype": t.dtype}
    if t.quantization is not None:
        details["quantization_parameters"] = {"scales": t.quantization.scales, "zero_points": t.quantization.zero_points}
    return quantize(x, details).reshape(len(x), -1)


def tflm_outputs(flatbuffer, inputs: np.ndarray, arena_bytes: Optional[int] = None,
                 model=None) -> Tuple[np.ndarray, int]:
    """Raw outputs of the ``tflite-micro`` interpreter for ``inputs`` (as
    :func:`quantize_inputs` gives them) and its tensor arena: the smallest
    that runs (:func:`export.tflite.runtimes.tflm_arena_size`) unless
    ``arena_bytes`` is given. ``model``: ``flatbuffer`` already parsed."""
    from export.tflite.quiet import silenced_stderr
    from export.tflite.runtimes import interpreter, tflm_arena_size

    graph = parsed_model(flatbuffer if model is None else model).main
    shape = graph.tensors[graph.inputs[0]].shape
    arena = tflm_arena_size(flatbuffer) if arena_bytes is None else int(arena_bytes)
    with silenced_stderr():
        interp = interpreter(flatbuffer, "tflm", arena_size=arena)
    outs = []
    for x in inputs:
        interp.set_input(np.asarray(x).reshape(shape), 0)
        interp.invoke()
        outs.append(np.asarray(interp.get_output(0)).reshape(-1).copy())
    return np.stack(outs), int(arena)


def _layer_table(program, layouts, runs_by_layout, chosen):
    """Per layer: op, layout, MACs, mean instructions per layout, input firing rate."""
    rows = []
    any_run = next(iter(runs_by_layout.values()))
    fired_src = next((r for lay, r in runs_by_layout.items() if lay != DENSE), None)
    for l in program.layers:
        p = l.params
        row = {"index": l.index, "name": l.name, "op": l.op, "layout": chosen[l.index], "macs": int(l.macs),
               "instructions": {lay: float(np.mean(r.layer_instructions[:, l.index]))
                                for lay, r in runs_by_layout.items()}}
        if l.spike_capable and fired_src is not None:
            inputs = p["in_h"] * p["in_w"] * p["in_c"]
            rate = fired_src.fired[:, l.index] / float(inputs)
            row["input_firing_rate"] = float(np.mean(rate))
            row["ac_operations"] = float(np.mean(rate) * l.macs)
        rows.append(row)
    del any_run
    return rows


def _fit(program, run, layout_of):
    """Least squares over (spike-driven layer, image): instructions against
    Appendix B's AC count (FLOPs x input firing rate), alone and with a
    per-output term."""
    xs, outs, ys = [], [], []
    for l in program.layers:
        if not l.spike_capable or layout_of[l.index] == DENSE:
            continue
        p = l.params
        rate = run.fired[:, l.index] / float(p["in_h"] * p["in_w"] * p["in_c"])
        xs.append(rate * l.macs)
        outs.append(np.full(len(rate), p["out_h"] * p["out_w"] * p["out_c"], float))
        ys.append(run.layer_instructions[:, l.index].astype(float))
    if not xs:
        return None
    x, o, y = np.concatenate(xs), np.concatenate(outs), np.concatenate(ys)

    def r2(pred):
        return float(1.0 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12))

    a = np.vstack([x, np.ones_like(x)]).T
    (slope, icept), *_ = np.linalg.lstsq(a, y, rcond=None)
    b = np.vstack([x, o]).T
    (s2, per_out), *_ = np.linalg.lstsq(b, y, rcond=None)
    return {"points": int(len(y)),
            "instructions_vs_ac": {"per_ac": float(slope), "intercept": float(icept), "r2": r2(a @ [slope, icept])},
            "instructions_vs_ac_and_outputs": {"per_ac": float(s2), "per_output": float(per_out),
                                               "r2": r2(b @ [s2, per_out])}}


def _source(model):
    """``(flatbuffer bytes, conversion or None)`` of :func:`run_mcu`'s ``model``."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), None
    flatbuffer = getattr(model, "flatbuffer", None)
    if not isinstance(flatbuffer, (bytes, bytearray)):
        raise TypeError(f"run_mcu takes a Conversion (export.tflite.convert.convert) or int8 .tflite bytes, "
                        f"got {type(model).__name__}")
    return bytes(flatbuffer), model


@dataclasses.dataclass
class _Run:
    """What the stages of one :func:`run_mcu` share."""

    program: Program
    config: McuConfig
    model_name: str
    inputs: np.ndarray          # [N, input bytes], quantized
    reference: np.ndarray       # TFLM's outputs of the first max(n_host, n_qemu) images
    n_host: int
    n_qemu: int
    n_measure: int
    candidates: Tuple[str, ...]
    root: str                   # where the sources and builds go

    @property
    def output(self) -> TensorSpec:
        return self.program.tensors[self.program.output]

    @property
    def output_dtype(self):
        return np.float32 if self.output.dtype == "float32" else np.int8

    def generate(self, layouts, target):
        from export.mcu.generate import generate

        return generate(self.program, layouts, target=target, model_name=self.model_name)

    def qemu(self, firmware, images: int):
        """The firmware run under QEMU on the first ``images`` inputs."""
        from export.mcu.firmware import run_qemu

        return run_qemu(firmware, self.inputs[:images], len(self.program.layers), self.output.nbytes,
                        self.output_dtype)

    def equal(self, outputs) -> np.ndarray:
        """Per image: ``outputs`` byte-identical with TFLM's."""
        return np.all(outputs == self.reference[:len(outputs)].reshape(outputs.shape), axis=1)


def run_mcu(model, images, config: McuConfig = McuConfig()) -> Dict:
    """Generates, builds, runs and measures the C of ``model`` (module
    docstring).

    Args:
      model: an :class:`export.tflite.convert.Conversion` (its int8
        flatbuffer, edge ops, and the spike tensors of its neuron plan), or
        int8 ``.tflite`` bytes (no spike tensors: dense layouts only).
      images: test images (uint8 NHWC, or float32 in the model's convention).
      config: what to run (:class:`export.mcu.config.McuConfig`: cores,
        layouts, image counts, output directory, ...).

    Returns:
      ``{"model", "tflite_bytes", "tflm_arena_bytes", "layers", "spike_tensors",
      "spike_layers", "op_counts", "host": {...}, "cores": {core: {...}}, "seconds"}``; per core ``board``,
      ``layouts`` (per layer), ``bit_exact`` (images, equal, fraction),
      ``instructions`` (mean/min/max per inference of the chosen build),
      ``instructions_dense`` (the all-dense build), ``per_layer`` (table),
      ``fit``, ``flash_bytes``, ``ram_bytes`` (.data + .bss + stack
      high-water mark), ``arena_bytes``, ``deterministic``, ``command``
      (the gcc line), ``qemu_command``.

    Raises:
      export.mcu.lower.UnsupportedModelError: an op without a kernel.
      export.mcu.build.ToolError: a missing or failing compiler / QEMU.

    Example::

        from export import mcu
        conv = convert(model, "int8", representative_data)     # export.tflite.convert
        report = mcu.run_mcu(conv, x_test, mcu.McuConfig(cores=("cortex-m55",), output_dir="runs/qs/mcu"))
    """
    from export.tflite.flatbuffer import read_model

    t_start = time.perf_counter()
    flatbuffer, conversion = _source(model)
    parsed = read_model(flatbuffer)
    codes = spike_codes(conversion, parsed)
    program = lower(parsed, codes)
    inputs = quantize_inputs(parsed, images)
    n_host = len(inputs) if config.host_images is None else min(len(inputs), config.host_images)
    n_qemu = min(len(inputs), config.num_images)
    ref, arena_tflm = tflm_outputs(flatbuffer, inputs[:max(n_host, n_qemu)], model=parsed)
    if program.tensors[program.output].dtype == "float32" and ref.dtype != np.float32:
        ref = ref.view(np.float32)
    spike_layers = program.spike_layers
    name = config.model_name or getattr(getattr(conversion, "model", None), "name", None) or "model"
    report = {"model": name, "tflite_bytes": len(flatbuffer), "tflm_arena_bytes": arena_tflm,
              "layers": len(program.layers), "spike_tensors": len(codes),
              "spike_layers": [l.name for l in spike_layers],
              "op_counts": program.op_counts, "host": {}, "cores": {}}
    tmp = None
    if config.output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="s2mcu_")
        root = tmp.name
    else:
        root = os.fspath(config.output_dir)
        os.makedirs(root, exist_ok=True)
    run = _Run(program, config, name, inputs, ref, n_host, n_qemu, min(n_qemu, config.measure_images),
               (DENSE,) + (SPIKE_LAYOUTS if spike_layers else ()), root)
    try:
        report["host"] = _run_host(run)
        if config.verbose:
            parts = ", ".join(f"{k} {v['equal']}/{v['images']}" for k, v in report["host"].items())
            print(f"  host build: {parts} byte-identical with TFLM", flush=True)
        for core in config.cores:
            entry = _run_core(run, core)
            entry["tflite_bytes"] = len(flatbuffer)
            entry["tflm_arena_bytes"] = arena_tflm
            report["cores"][core] = entry
            if config.verbose:
                print(_core_line(core, entry), flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["seconds"] = time.perf_counter() - t_start
    return report


def _run_host(run: _Run) -> Dict:
    """Every layout built for the host, its outputs against TFLM's."""
    from export.mcu.build import build_host, run_host

    host = {}
    width = 4 if run.output_dtype == np.float32 else 1
    for lay in run.candidates:
        code = run.generate(lay, "host")
        exe = build_host(code, os.path.join(run.root, "host", lay))
        got = run_host(exe, run.inputs[:run.n_host], (run.output.nbytes // width,), output_dtype=run.output_dtype)
        equal = run.equal(got["outputs"])
        host[lay] = {"images": int(run.n_host), "equal": int(equal.sum()), "fraction": float(equal.mean()),
                     "arena_bytes": int(code.arena_bytes)}
    return host


def _run_core(run: _Run, core: str) -> Dict:
    """One core: the layouts measured, the chosen build run on every image."""
    from export.mcu import firmware as fw_mod

    program, layouts = run.program, run.config.layouts
    runs, firmwares, codes = {}, {}, {}
    measure = layouts == "auto" and len(run.candidates) > 1
    for lay in run.candidates if measure else ():
        code = run.generate(lay, core)
        fw = fw_mod.build_firmware(code, core, os.path.join(run.root, core, lay))
        runs[lay] = run.qemu(fw, run.n_measure)
        firmwares[lay], codes[lay] = fw, code
    if measure:
        chosen = {}
        for l in program.layers:
            if l.spike_capable:
                chosen[l.index] = min(run.candidates, key=lambda lay: (
                    runs[lay].layer_instructions[:, l.index].mean(), run.candidates.index(lay)))
            else:
                chosen[l.index] = DENSE
    else:
        chosen = layouts if isinstance(layouts, dict) else (layouts if layouts != "auto" else DENSE)
    code = run.generate(chosen, core)
    fw = fw_mod.build_firmware(code, core, os.path.join(run.root, core, "chosen"))
    final = run.qemu(fw, run.n_qemu)
    again = run.qemu(fw, min(DETERMINISM_IMAGES, run.n_qemu))
    equal = run.equal(final.outputs)
    # the all-dense build over the same images (the dense path of the same model)
    if DENSE in runs and run.n_measure == run.n_qemu:
        dense_run = runs[DENSE]
    else:
        dcode = run.generate(DENSE, core)
        dfw = fw_mod.build_firmware(dcode, core, os.path.join(run.root, core, DENSE))
        dense_run = run.qemu(dfw, run.n_qemu)
        firmwares[DENSE], codes[DENSE] = dfw, dcode
    dense_equal = run.equal(dense_run.outputs)
    b = fw_mod.board(core)
    by_layout = dict(runs) if runs else {DENSE: dense_run}
    by_layout["chosen"] = final
    layout_names = code.layouts

    def stats(v):
        return {"mean": float(np.mean(v)), "min": int(np.min(v)), "max": int(np.max(v)), "images": int(len(v))}

    entry = {
        "board": b.machine, "core": core, "layouts": {program.layers[i].name: lay for i, lay in layout_names.items()
                                                       if program.layers[i].spike_capable},
        "bit_exact": {"images": int(len(equal)), "equal": int(equal.sum()), "fraction": float(equal.mean())},
        "dense_bit_exact": {"images": int(len(dense_equal)), "equal": int(dense_equal.sum())},
        "instructions": stats(final.instructions),
        "instructions_dense": stats(dense_run.instructions),
        "measured_layouts": {lay: stats(r.instructions) for lay, r in runs.items()},
        "per_layer": _layer_table(program, layout_names, by_layout, layout_names),
        "fit": _fit(program, final, layout_names),
        "flash_bytes": int(fw.flash_bytes), "static_ram_bytes": int(fw.static_ram_bytes),
        "stack_bytes": int(final.stack_used), "ram_bytes": int(fw.static_ram_bytes + final.stack_used),
        "arena_bytes": int(code.arena_bytes), "constant_bytes": int(code.const_bytes),
        "sections": {k: v for k, v in fw.sections.items() if v and not k.startswith((".debug", ".comment"))},
        "breakdown": fw.breakdown,
        "dense": {"flash_bytes": int((firmwares.get(DENSE) or fw).flash_bytes),
                  "ram_bytes": int((firmwares.get(DENSE) or fw).static_ram_bytes + dense_run.stack_used),
                  "arena_bytes": int((codes.get(DENSE) or code).arena_bytes)},
        "deterministic": bool(np.array_equal(again.instructions, final.instructions[:len(again.instructions)]) and
                              np.array_equal(again.layer_instructions,
                                             final.layer_instructions[:len(again.instructions)])),
        "instructions_per_tick": final.instructions_per_tick,
        "mve_self_test": {1: "passed", 2: "no MVE"}.get(final.mve, "failed"),
        "mvfr1": f"0x{final.mvfr1:08x}",
        "command": " ".join(fw.command), "qemu_command": " ".join(final.command[:-1] + ["firmware.elf"]),
    }
    entry["spike_vs_dense"] = entry["instructions"]["mean"] / entry["instructions_dense"]["mean"]
    return entry


def _core_line(core, e):
    return (f"  {core} ({e['board']}): {e['instructions']['mean'] / 1e6:.3f} M instructions per inference "
            f"({e['instructions_dense']['mean'] / 1e6:.3f} M dense, x{e['spike_vs_dense']:.2f}); flash "
            f"{e['flash_bytes']} B, RAM {e['ram_bytes']} B (stack {e['stack_bytes']} B); "
            f"{e['bit_exact']['equal']}/{e['bit_exact']['images']} images byte-identical with TFLM")


def format_summary(report: Dict, indent: str = "  ") -> str:
    """Printed summary of a :func:`run_mcu` report: host checks, per core
    the instructions (spike-driven and dense), flash, RAM, activation buffer,
    stack and bit-exactness, and each layer's instructions and layout on
    every core."""
    lines = [f"{indent}microcontroller C (export.mcu): {report['layers']} layers, "
             f"{len(report['spike_layers'])} spike-driven candidates; .tflite {report['tflite_bytes']} B, "
             f"TFLM arena {report['tflm_arena_bytes']} B"]
    for lay, h in report["host"].items():
        lines.append(f"{indent}  host {lay}: {h['equal']}/{h['images']} images byte-identical with TFLM")
    if report["cores"]:
        lines.append(f"{indent}  core        instructions  dense       ratio  flash[B]  RAM[B]  buffer[B]  stack[B]  "
                     "bit-exact  deterministic")
        for core, e in report["cores"].items():
            lines.append(f"{indent}  {core:<10} {e['instructions']['mean']:>13,.0f} {e['instructions_dense']['mean']:>12,.0f}"
                         f"  {e['spike_vs_dense']:>5.2f}  {e['flash_bytes']:>8}  {e['ram_bytes']:>6}  "
                         f"{e['arena_bytes']:>9}  {e['stack_bytes']:>8}  "
                         f"{e['bit_exact']['equal']:>4}/{e['bit_exact']['images']:<4}  "
                         f"{'yes' if e['deterministic'] else 'NO'}")
        cores = list(report["cores"])
        lines.append(f"{indent}  per layer (instructions per inference, mean; buffer[B]: the liveness-planned "
                     "activation buffer; rate: input firing rate of a spike-driven layer)")
        lines.append(f"{indent}  {'layer':<28} {'op':<18} " + " ".join(f"{c + ' layout':>22} {c:>12}" for c in cores)
                     + "    rate")
        rows = {core: {r["index"]: r for r in e["per_layer"]} for core, e in report["cores"].items()}
        for r in report["cores"][cores[0]]["per_layer"]:
            cells = " ".join(f"{rows[c][r['index']]['layout']:>22} "
                             f"{rows[c][r['index']]['instructions']['chosen']:>12,.0f}" for c in cores)
            rate = r.get("input_firing_rate")
            lines.append(f"{indent}  {r['name'][:28]:<28} {r['op']:<18} {cells}"
                         + (f"  {rate:6.3f}" if rate is not None else ""))
    return "\n".join(lines)


def reporter(images, config: McuConfig = McuConfig(), *, formats: Sequence[str] = ("int8",), subdir: str = "mcu"):
    """The export pipeline's hook (:class:`export.report.FormatReporter`,
    name ``"mcu"``): for each conversion of ``formats`` (int8 only), runs
    :func:`run_mcu` on ``images`` (the verification images: uint8 or
    float32) with ``config``, adds its report, and keeps the C sources and
    firmware in ``<export output_dir>/<subdir>`` (published with the
    export's files; ``config.output_dir`` is not used). Its checks: every
    host build and every core's firmware byte-identical with TFLite Micro
    on every image, and the instruction counts deterministic -- a
    difference fails the export.

    Example::

        from export import ExportConfig, export_run, mcu
        export_run(model, ExportConfig(out_dir, x_test, y_test,
                                       reporters=(mcu.reporter(x_test, mcu.McuConfig(num_images=100)),)))
    """
    from export.checks import CheckResult
    from export.mcu.firmware import missing_tools
    from export.report import FormatReporter

    if images is None:
        raise ValueError("export.mcu.reporter needs images: the test images the firmware runs and TFLM checks")
    if any(f != "int8" for f in formats):
        raise ValueError("the microcontroller generator runs int8 models only (formats=('int8',))")
    if config.cores and missing_tools():
        from export.mcu.build import ToolError

        raise ToolError(f"--mcu needs {', '.join(missing_tools())}; on Debian: apt-get install gcc-arm-none-eabi "
                        "libnewlib-arm-none-eabi qemu-system-arm")

    def run(fmt, conversion, output_dir):
        return run_mcu(conversion, images, dataclasses.replace(config, output_dir=os.path.join(output_dir, subdir)))

    def summary(fmt, figures):
        return format_summary(figures)

    def checks(fmt, figures):
        def check(name, ok, what):
            return CheckResult(name, bool(ok), True, "is", bool(ok), what)

        results = [check(f"host.{lay}.bit_exact", h["equal"] == h["images"],
                         f"host build ({lay}) byte-identical with TFLite Micro on every image")
                   for lay, h in figures["host"].items()]
        for core, e in figures["cores"].items():
            results.append(check(f"{core}.bit_exact", e["bit_exact"]["equal"] == e["bit_exact"]["images"],
                                 f"{core} firmware byte-identical with TFLite Micro on every image"))
            results.append(check(f"{core}.deterministic", e["deterministic"],
                                 "the same instruction counts on a second run"))
        return results

    return FormatReporter(name="mcu", formats=tuple(formats), run=run, summary=summary, checks=checks,
                          writes_files=True)
