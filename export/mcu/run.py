"""Generate, build, run and measure: the microcontroller report of an int8 model.

:func:`run_mcu` is the whole path for one conversion (or int8 flatbuffer),
which it parses once:

1. lower it (:mod:`export.mcu.lower`), spike tensors from the conversion
   or the export's report (:func:`spike_codes`, :mod:`export.mcu.artefact`);
2. quantize the images with the model's input quantization and run them
   through the ``tflite-micro`` interpreter (the reference, raw int8
   outputs);
3. host build of every layout (``gcc``): outputs byte-compared with TFLM;
4. per core: firmware of every layout on the first ``measure_images``
   images under QEMU -- per-layer retired instructions; each spike-capable
   layer takes the layout with the fewest (``layouts="auto"``); the chosen
   firmware then runs every image, outputs byte-compared with TFLM, and
   twice on a few images to check the counts are the same; its sources
   also as drop-in CMake and Arduino libraries (:mod:`export.mcu.library`).
   A model that does not fit a board is refused before anything is
   built; a target not run on a board (``generic``; the Cortex-M0+ when
   the model does not fit its stand-in) is compiled, linked for its sizes
   (``generic``: run by the host compiler);
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

from export.errors import InputError
from export.mcu.config import McuConfig
from s2nn_keras.datasets import as_model_input
from export.mcu.firmware import BOARDS
from export.mcu.lower import DENSE, SPIKE_LAYOUTS, Program, TensorSpec, lower, parsed_model

__all__ = ["spike_codes", "quantize_inputs", "tflm_outputs", "run_mcu", "reporter", "format_summary",
           "mismatches", "McuConfig", "DETERMINISM_IMAGES"]

#: images the chosen firmware runs twice (the counts must be the same)
DETERMINISM_IMAGES = 3


def spike_codes(conversion, model=None) -> Dict[int, Tuple[int, int]]:
    """``{tensor index: (off code, on code)}`` of the spike tensors of an
    :class:`export.tflite.convert.Conversion` (saturate neuron: the levels of its
    plan, as int8 codes; other formulations have none the generator can use),
    or those a :class:`export.mcu.artefact.VerifiedTflite` read from its
    export's report. ``model``: the conversion's flatbuffer already parsed
    (:func:`export.tflite.flatbuffer.read_model`), else it is read."""
    from export.mcu.artefact import codes_of, spike_code_table

    if isinstance(getattr(conversion, "codes", None), dict):
        return dict(conversion.codes)
    if conversion is None or getattr(conversion, "plan", None) is None:
        return {}
    return codes_of(spike_code_table(conversion, None if model is None else parsed_model(model)))


def _pixels_on_input_grid(images, tensor) -> np.ndarray:
    """Images as the real values the int8 input takes. Float images are
    taken as they are (the model's own convention). ``uint8`` pixels need
    the model's convention, which the flatbuffer tells by its input grid:
    scale 1 (a model that rescales its input itself takes the raw pixels,
    :func:`export.transform.inputs.model_inputs`) or 1/255 (pixels divided
    by 255); any other grid is refused rather than guessed."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or tensor.quantization is None:
        return as_model_input(images)
    scale = float(tensor.quantization.scales[0])
    if abs(scale - 1.0) <= 1e-6:
        return images.astype(np.float32)
    if abs(scale * 255.0 - 1.0) <= 1e-3:
        return as_model_input(images)
    raise InputError(f"uint8 images cannot be fed to this model: its int8 input has scale {scale:g}, neither the raw "
                     "pixels' 1 nor 1/255; pass float inputs in the model's own convention (an .npz with float32 "
                     "test_images)")


def quantize_inputs(model, images) -> np.ndarray:
    """The images (uint8, or float32 in the model's convention) as the
    input tensor of ``model`` (flatbuffer bytes or parsed) holds them:
    ``[N, input bytes]`` int8 (or float32), quantized as
    :func:`export.tflite.runtimes.quantize` does."""
    from export.tflite.runtimes import quantize

    graph = parsed_model(model).main
    t = graph.tensors[graph.inputs[0]]
    x = _pixels_on_input_grid(images, t)
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


def _layer_table(program, runs_by_layout, chosen, run_layouts):
    """Per layer: op, layout, MACs, mean instructions per layout, input
    firing rate. A layer counts its fired inputs only where it runs a spike
    layout (``run_layouts``: per run, the layout of each layer in its
    firmware; a uniform run gives a layer without that layout the dense
    kernel, e.g. ``spike_list`` for a Dense of more than 255 inputs): the
    rate comes from the first such run, and a layer that runs dense in
    every run has none."""
    rows = []
    for l in program.layers:
        p = l.params
        row = {"index": l.index, "name": l.name, "op": l.op, "layout": chosen[l.index], "macs": int(l.macs),
               "instructions": {lay: float(np.mean(r.layer_instructions[:, l.index]))
                                for lay, r in runs_by_layout.items()}}
        fired_src = next((r for key, r in runs_by_layout.items()
                          if run_layouts.get(key, {}).get(l.index, DENSE) != DENSE), None)
        if l.spike_capable and fired_src is not None:
            inputs = p["in_h"] * p["in_w"] * p["in_c"]
            rate = fired_src.fired[:, l.index] / float(inputs)
            row["input_firing_rate"] = float(np.mean(rate))
            row["ac_operations"] = float(np.mean(rate) * l.macs)
        rows.append(row)
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
        raise TypeError(f"run_mcu takes a Conversion (export.tflite.convert.convert), an "
                        f"export.mcu.artefact.VerifiedTflite or int8 .tflite bytes, got {type(model).__name__}")
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
        flatbuffer, edge ops, and the spike tensors of its neuron plan), an
        :class:`export.mcu.artefact.VerifiedTflite` (the verified
        ``model_int8.tflite`` of an export and the spike tensors its report
        records), or int8 ``.tflite`` bytes (no spike tensors: dense
        layouts only).
      images: test images (uint8 NHWC, or float32 in the model's convention).
      config: what to run (:class:`export.mcu.config.McuConfig`: cores,
        layouts, image counts, output directory, ...).

    Returns:
      ``{"model", "tflite_bytes", "tflm_arena_bytes", "layers", "spike_tensors",
      "spike_layers", "op_counts", "host": {...}, "cores": {core: {...}}, "seconds"}``
      (and ``source``, ``export_checks`` for a ``VerifiedTflite``); per core
      with a board ``board``, ``layouts`` (per layer), ``bit_exact``
      (images, equal, fraction), ``instructions`` (mean/min/max per
      inference of the chosen build), ``instructions_dense`` (the all-dense
      build), ``per_layer`` (table), ``fit``, ``flash_bytes``,
      ``ram_bytes`` (.data + .bss + stack high-water mark), ``arena_bytes``,
      ``deterministic``, ``command`` (the gcc line), ``qemu_command``,
      ``library`` (the drop-in CMake and Arduino folders); per target not
      run on a board (``generic``; ``cortex-m0plus`` when the model does
      not fit its stand-in board) ``board: None``, ``compiled_only``,
      ``why``, ``flash_bytes`` and ``static_ram_bytes`` (of the firmware
      linked for its sizes; ``generic``: of the host's objects),
      ``library``, and for ``generic`` (built and run by the host compiler)
      ``bit_exact``.

    Raises:
      export.mcu.lower.UnsupportedModelError: an op without a kernel.
      export.mcu.firmware.DoesNotFitError: the model does not fit a board
        (checked before anything is built).
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
    _check_boards(program, config)
    inputs = quantize_inputs(parsed, images)
    n_host = len(inputs) if config.host_images is None else min(len(inputs), config.host_images)
    n_qemu = min(len(inputs), config.num_images)
    ref, arena_tflm = tflm_outputs(flatbuffer, inputs[:max(n_host, n_qemu)], model=parsed)
    if program.tensors[program.output].dtype == "float32" and ref.dtype != np.float32:
        ref = ref.view(np.float32)
    spike_layers = program.spike_layers
    name = (config.model_name or getattr(getattr(conversion, "model", None), "name", None)
            or getattr(conversion, "name", None) or "model")
    report = {"model": name, "tflite_bytes": len(flatbuffer), "tflm_arena_bytes": arena_tflm,
              "layers": len(program.layers), "spike_tensors": len(codes),
              "spike_layers": [l.name for l in spike_layers],
              "op_counts": program.op_counts, "host": {}, "cores": {}}
    if callable(getattr(conversion, "source", None)):
        report["source"] = conversion.source()
        report["export_checks"] = {"passed": conversion.checks_passed, "failed": conversion.checks_failed}
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
        # the cores with a board first: a target without one may take a measured core's layouts
        for core in sorted(config.cores, key=lambda c: not _runs(run, c)):
            entry = _run_core(run, core) if _runs(run, core) else _compile_core(run, core, report["cores"])
            entry["tflite_bytes"] = len(flatbuffer)
            entry["tflm_arena_bytes"] = arena_tflm
            report["cores"][core] = entry
            if config.verbose:
                print(_core_line(core, entry, report.get("export_checks")), flush=True)
        report["cores"] = {core: report["cores"][core] for core in config.cores}
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["seconds"] = time.perf_counter() - t_start
    return report


def _check_boards(program, config: McuConfig) -> None:
    """Refuses, before anything is built or run, a model that does not fit
    a board of ``config.cores`` (the dense plan's constants and activation
    buffer: :func:`export.mcu.firmware.check_fits`); a stand-in board (the
    Cortex-M0+'s) does not refuse."""
    from export.mcu.firmware import check_fits
    from export.mcu.generate import generate

    for core in config.cores:
        if core in BOARDS and not BOARDS[core].stand_in:
            check_fits(generate(program, DENSE, target=core), core)


def _runs(run: _Run, core: str) -> bool:
    """``core``'s firmware runs on its board: it has one, and the model fits
    it in every candidate layout (a stand-in board's question)."""
    from export.mcu.firmware import fits

    b = BOARDS.get(core)
    if b is None:
        return False
    return not b.stand_in or all(fits(run.generate(lay, core), core) for lay in run.candidates)


def _write_libraries(run: _Run, code, core: str) -> Dict[str, str]:
    """The drop-in folders of ``code`` (:mod:`export.mcu.library`), relative to the run's root."""
    from export.mcu.library import LIBRARY, write_arduino, write_library

    folders = {"cmake": os.path.join(core, "library"), "arduino": os.path.join(core, "arduino", LIBRARY)}
    write_library(code, os.path.join(run.root, folders["cmake"]), run.model_name)
    write_arduino(code, os.path.join(run.root, folders["arduino"]), run.model_name)
    return folders


def _compile_core(run: _Run, core: str, measured: Dict) -> Dict:
    """A target that does not run here: generated (spike-driven layers as a
    measured core of the same kernel path chose them, else ``spike_list``,
    the fastest layout on every board measured so far); a Cortex-M linked
    with the firmware harness for its flash and RAM (not run: a model
    larger than the Cortex-M0+'s stand-in board); ``generic`` compiled by
    the host compiler, run there and byte-compared with TFLM."""
    from export.mcu.build import build_host, compile_target, run_host
    from export.mcu.firmware import build_firmware, sizing_board
    from export.mcu.targets import TARGETS

    layouts, source = run.config.layouts, "--layouts"
    if layouts == "auto":
        path = TARGETS[core].kernel_path
        same = [c for c, e in measured.items() if e.get("instructions") and TARGETS[c].kernel_path == path]
        if same:
            layouts, source = dict(measured[same[0]]["layouts"]), f"as measured on {same[0]} (same kernel path)"
        else:
            layouts, source = "spike_list", "spike_list (no board to measure on)"
    code = run.generate(layouts, core)
    program = run.program
    entry = {"board": None, "core": core, "compiled_only": True, "layouts_from": source,
             "layouts": {program.layers[i].name: lay for i, lay in code.layouts.items()
                         if program.layers[i].spike_capable},
             "arena_bytes": int(code.arena_bytes), "constant_bytes": int(code.const_bytes)}
    if TARGETS[core].cortex_m:
        b = BOARDS.get(core)
        fw = build_firmware(code, core, os.path.join(run.root, core, "chosen"), board_=sizing_board(core))
        entry.update(flash_bytes=int(fw.flash_bytes), static_ram_bytes=int(fw.static_ram_bytes),
                     stack_reserved=int(fw.stack_reserved), sections=_sections(fw), breakdown=fw.breakdown,
                     command=" ".join(fw.command),
                     why=(f"does not fit its stand-in board {b.machine} ({b.ram_limit // 1024} KiB RAM): "
                          "linked with the firmware harness for its sizes") if b else "no board: linked for its sizes")
    else:
        objects = compile_target(code, os.path.join(run.root, core, "chosen"))
        width = 4 if run.output_dtype == np.float32 else 1
        exe = build_host(code, os.path.join(run.root, core, "host"))
        got = run_host(exe, run.inputs[:run.n_host], (run.output.nbytes // width,), output_dtype=run.output_dtype)
        equal = run.equal(got["outputs"])
        entry.update(flash_bytes=objects.flash_bytes, static_ram_bytes=objects.static_ram_bytes,
                     command=" ".join(objects.command),
                     why="portable C: compiled and run by the host compiler, sizes of its objects",
                     bit_exact={"images": int(len(equal)), "equal": int(equal.sum()),
                                "fraction": float(equal.mean())})
    entry["library"] = _write_libraries(run, code, core)
    return entry


def _sections(fw) -> Dict[str, int]:
    return {k: v for k, v in fw.sections.items() if v and not k.startswith((".debug", ".comment"))}


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
        "board": b.machine, "core": core, **({"board_stands_in": b.stand_in} if b.stand_in else {}),
        "layouts": {program.layers[i].name: lay for i, lay in layout_names.items() if program.layers[i].spike_capable},
        "bit_exact": {"images": int(len(equal)), "equal": int(equal.sum()), "fraction": float(equal.mean())},
        "dense_bit_exact": {"images": int(len(dense_equal)), "equal": int(dense_equal.sum())},
        "instructions": stats(final.instructions),
        "instructions_dense": stats(dense_run.instructions),
        "measured_layouts": {lay: stats(r.instructions) for lay, r in runs.items()},
        "per_layer": _layer_table(program, by_layout, layout_names,
                                  {**{lay: c.layouts for lay, c in codes.items()}, "chosen": layout_names}),
        "fit": _fit(program, final, layout_names),
        "flash_bytes": int(fw.flash_bytes), "static_ram_bytes": int(fw.static_ram_bytes),
        "stack_bytes": int(final.stack_used), "ram_bytes": int(fw.static_ram_bytes + final.stack_used),
        "arena_bytes": int(code.arena_bytes), "constant_bytes": int(code.const_bytes),
        "sections": _sections(fw),
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
        "library": _write_libraries(run, code, core),
    }
    entry["spike_vs_dense"] = entry["instructions"]["mean"] / entry["instructions_dense"]["mean"]
    return entry


def _core_line(core, e, export_checks=None):
    exact = e.get("bit_exact")
    same = f"; {exact['equal']}/{exact['images']} images byte-identical with TFLM" if exact else ""
    if (export_checks or {}).get("passed") is False:
        same += " (of a model that FAILED its export checks)"
    if e.get("compiled_only"):
        return (f"  {core} (not run on a board: {e['why']}): flash {e['flash_bytes']} B, static RAM "
                f"{e['static_ram_bytes']} B{same}")
    return (f"  {core} ({e['board']}): {e['instructions']['mean'] / 1e6:.3f} M instructions per inference "
            f"({e['instructions_dense']['mean'] / 1e6:.3f} M dense, x{e['spike_vs_dense']:.2f}); flash "
            f"{e['flash_bytes']} B, RAM {e['ram_bytes']} B (stack {e['stack_bytes']} B){same}")


def mismatches(report: Dict) -> list:
    """What is not byte-identical with TFLite Micro in a :func:`run_mcu`
    report: ``["host dense", "cortex-m4", ...]`` (empty: everything is)."""
    bad = [f"host {k}" for k, v in report["host"].items() if v["equal"] < v["images"]]
    for core, e in report["cores"].items():
        dense = e.get("dense_bit_exact", {"equal": 0, "images": 0})
        exact = e.get("bit_exact", {"equal": 0, "images": 0})
        if exact["equal"] < exact["images"] or dense["equal"] < dense["images"]:
            bad.append(core)
    return bad


def _export_lines(report: Dict, indent: str) -> list:
    checks = report.get("export_checks") or {}
    if checks.get("passed") is False:
        return [f"{indent}  THE MODEL FAILED ITS EXPORT CHECKS ({checks.get('failed')}): the C below computes what "
                "TFLite Micro computes on that int8 model (bit-exact), but the model is not a verified export"]
    return []


def _table_lines(report: Dict, indent: str) -> list:
    failed = (report.get("export_checks") or {}).get("passed") is False
    verdict = "model FAILED export checks" if failed else ""
    lines = [f"{indent}  core           instructions  dense       ratio  flash[B]  RAM[B]  buffer[B]  stack[B]  "
             "bit-exact  deterministic"]
    for core, e in report["cores"].items():
        exact = e.get("bit_exact")
        same = f"{exact['equal']:>4}/{exact['images']:<4}" if exact else f"{'-':>4} {'':<4}"
        if e.get("compiled_only"):
            lines.append(f"{indent}  {core:<13} {'not run (compiled)':>26} {'':>5}  {e['flash_bytes']:>8}  "
                         f"{e['static_ram_bytes']:>6}  {e['arena_bytes']:>9}  {'-':>8}  {same}  {'-':<13}  "
                         f"{verdict}".rstrip())
            continue
        lines.append(f"{indent}  {core:<13} {e['instructions']['mean']:>13,.0f} "
                     f"{e['instructions_dense']['mean']:>12,.0f}"
                     f"  {e['spike_vs_dense']:>5.2f}  {e['flash_bytes']:>8}  {e['ram_bytes']:>6}  "
                     f"{e['arena_bytes']:>9}  {e['stack_bytes']:>8}  {same}  "
                     f"{'yes' if e['deterministic'] else 'NO':<13}  {verdict}".rstrip())
    return lines


def _layer_lines(report: Dict, indent: str) -> list:
    cores = [c for c, e in report["cores"].items() if not e.get("compiled_only")]
    if not cores:
        return []
    lines = [f"{indent}  per layer (instructions per inference, mean; buffer[B]: the liveness-planned "
             "activation buffer; rate: input firing rate of a spike-driven layer)",
             f"{indent}  {'layer':<28} {'op':<18} " + " ".join(f"{c + ' layout':>22} {c:>12}" for c in cores)
             + "    rate"]
    rows = {core: {r["index"]: r for r in report["cores"][core]["per_layer"]} for core in cores}
    for r in report["cores"][cores[0]]["per_layer"]:
        cells = " ".join(f"{rows[c][r['index']]['layout']:>22} "
                         f"{rows[c][r['index']]['instructions']['chosen']:>12,.0f}" for c in cores)
        rate = r.get("input_firing_rate")
        lines.append(f"{indent}  {r['name'][:28]:<28} {r['op']:<18} {cells}"
                     + (f"  {rate:6.3f}" if rate is not None else ""))
    return lines


def format_summary(report: Dict, indent: str = "  ") -> str:
    """Printed summary of a :func:`run_mcu` report: whether the model passed
    its export's checks (when it comes from an export), host checks, per
    core the instructions (spike-driven and dense), flash, RAM, activation
    buffer, stack and bit-exactness (targets without a board: their
    compiled size), and each layer's instructions and layout on every core
    with a board."""
    lines = [f"{indent}microcontroller C (export.mcu): {report['layers']} layers, "
             f"{len(report['spike_layers'])} spike-driven candidates; .tflite {report['tflite_bytes']} B, "
             f"TFLM arena {report['tflm_arena_bytes']} B"]
    lines += _export_lines(report, indent)
    for lay, h in report["host"].items():
        lines.append(f"{indent}  host {lay}: {h['equal']}/{h['images']} images byte-identical with TFLM")
    if report["cores"]:
        lines += _table_lines(report, indent) + _layer_lines(report, indent)
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
    if missing_tools(config.cores):
        from export.mcu.build import ToolError

        raise ToolError(f"--mcu needs {', '.join(missing_tools(config.cores))}; on Debian: apt-get install "
                        "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")

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
            if "bit_exact" in e:
                results.append(check(f"{core}.bit_exact", e["bit_exact"]["equal"] == e["bit_exact"]["images"],
                                     f"{core} build byte-identical with TFLite Micro on every image"))
            if "deterministic" in e:
                results.append(check(f"{core}.deterministic", e["deterministic"],
                                     "the same instruction counts on a second run"))
        return results

    return FormatReporter(name="mcu", formats=tuple(formats), run=run, summary=summary, checks=checks,
                          writes_files=True)
