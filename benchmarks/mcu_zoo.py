"""Every model a TinyML user builds, on every Cortex-M: the MLPerf Tiny zoo,
its hand-written layer patterns and the user models, through the default
int8 export and export.mcu's C on every core.

Models: ``tests.zoo.ZOO`` (the S2NN ResNet-8, DS-CNN, MobileNetV1 0.25 and
FC autoencoder of MLPerf Tiny, and five layer patterns) and
``tests.user_models.MODELS`` (ten models a new user builds), each trained
briefly by the zoo's own recipe (``tests.zoo.trained``: Adam 3e-3, batch 64,
``--epochs`` epochs on the first ``--train_examples`` Fashion-MNIST images in
the model's input shape, ``tests.zoo.data``). Per model:

1. the default export, int8 only (``export.pipeline.export_run``: BN folded
   into thresholds, the default neuron formulation and graph rewrites,
   calibration on the last ``--calibration`` training images, verified on
   the first ``--test_examples`` test images), read back as the verified
   ``model_int8.tflite`` with its spike tensors
   (``export.mcu.artefact.load_verified``) -- what ``python -m export.mcu
   --model`` generates C from. An export whose own checks fail is still
   measured, and the table says so;
2. accuracy: the Keras model's and the int8 LiteRT model's on those test
   images and their agreement (``export.metrics``: same top-1; for a
   regression model, the per-example RMS within 1 % of the output range),
   and for a regression model the reconstruction MSE of both;
3. ``export.mcu.run.run_mcu`` on every target of ``--cores``: the host build
   of every layout against the tflite-micro interpreter on
   ``--host_images`` images; per core with a QEMU board (Cortex-M3, M4, M7,
   M33, M55; the Cortex-M0+ on its 16 KiB stand-in when the model fits,
   else linked for its sizes) the layouts measured on ``--measure_images``
   images, the chosen (spike-driven) build and the all-dense build run on
   ``--images`` images under ``qemu-system-arm -icount shift=0``: retired
   instructions per inference, flash, RAM (static + measured stack) and the
   images byte-identical with TFLM; ``generic`` compiled and run by the
   host compiler.

The four MLPerf Tiny networks are also measured as their ReLU twins
(``tests.zoo.trained(name, "relu")``, the same default export: the
BatchNorms no conv absorbs as 1x1 depthwise convs, as benchmarks/mcu.py's
``relu_bnfolded``) on ``--relu_cores``. A model the export or the generator
refuses, or that does not fit a board, is a row with its one-line reason.

Retired instructions are not cycles: QEMU models no pipeline, memory wait
states or Helium beat timing, and the scattered loads and branches of the
spike-driven kernels may cost more per instruction on silicon. Instruction
counts, sizes and accuracies do not depend on the machine's load; the
seconds in the JSON do.

Exit status: 0 when every output checked is byte-identical with TFLite
Micro and nothing failed unexpectedly (a refusal is not a failure), 1
otherwise, 2 for a bad flag.

    python -m benchmarks.mcu_zoo [--models resnet8,mlp] [--cores cortex-m4,cortex-m55] [--images 4]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402
from export.mcu.targets import CORES, MCU_TARGETS  # noqa: E402

PROG = "python -m benchmarks.mcu_zoo"
#: the cores of the ReLU twins (those of the published quickstart figures)
RELU_CORES = ("cortex-m4", "cortex-m55")
#: column heads of the printed tables
SHORT = {"cortex-m0plus": "M0+", "cortex-m3": "M3", "cortex-m4": "M4", "cortex-m7": "M7", "cortex-m33": "M33",
         "cortex-m55": "M55", "generic": "generic"}
RELU_SUFFIX = "_relu"


def model_names() -> List[str]:
    """Every model: the zoo's, then the user models (their order in the modules)."""
    from tests import user_models, zoo

    return list(zoo.ZOO) + [n for n in user_models.MODELS if n not in zoo.ZOO]


def relu_names(models: Sequence[str]) -> List[str]:
    """The MLPerf Tiny networks among ``models``: those measured as ReLU twins too."""
    from tests import zoo

    return [n for n in models if n in zoo.MLPERF_TINY]


def _core_list(text: str) -> List[str]:
    """``--relu_cores``: cores with a QEMU board, or ``none``."""
    import argparse

    if text.strip().lower() == "none":
        return []
    try:
        return C.csv_list(str, CORES, "core")(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected cores among {', '.join(CORES)}, or none; got {text!r}") from None


def parse_args(argv=None):
    p = C.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=C.csv_list(str, tuple(model_names()), "model"), default=model_names())
    p.add_argument("--cores", type=C.csv_list(str, MCU_TARGETS, "core"), default=list(MCU_TARGETS),
                   help="targets (default all: the cores with a QEMU board, and generic on the host)")
    p.add_argument("--relu_cores", type=_core_list, default=list(RELU_CORES),
                   help="cores of the MLPerf Tiny ReLU twins, or none")
    p.add_argument("--epochs", type=C.positive_int, default=1, help="training epochs (tests.zoo.trained)")
    p.add_argument("--train_examples", type=C.positive_int, default=2000)
    p.add_argument("--test_examples", type=C.positive_int, default=300, help="accuracy and export verification")
    p.add_argument("--calibration", type=C.positive_int, default=200, help="last training images, int8 calibration")
    p.add_argument("--max_tflm_examples", type=C.positive_int, default=10,
                   help="images the export runs in the TFLM interpreter")
    p.add_argument("--images", type=C.positive_int, default=4, help="test images per QEMU run")
    p.add_argument("--measure_images", type=C.positive_int, default=2, help="images of the layout choice")
    p.add_argument("--host_images", type=C.positive_int, default=100, help="images of the host and generic check")
    p.add_argument("--work_dir", default=None, help="keep the exports, C and firmware there (default: temporary)")
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "mcu_zoo.json"))
    p.add_argument("--text", default=os.path.join(C.RESULTS_DIR, "mcu_zoo.txt"), help="copy of what it prints")
    args = p.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))
    args.cores = list(dict.fromkeys(args.cores))
    args.relu_cores = list(dict.fromkeys(args.relu_cores))
    if args.calibration > args.train_examples:
        C.fail(PROG, f"--calibration {args.calibration} exceeds --train_examples {args.train_examples}")
    for flag in ("images", "host_images", "max_tflm_examples"):
        if getattr(args, flag) > args.test_examples:
            C.fail(PROG, f"--{flag} {getattr(args, flag)} exceeds --test_examples {args.test_examples}")
    if args.measure_images > args.images:
        C.fail(PROG, f"--measure_images {args.measure_images} exceeds --images {args.images}")
    return args


# --------------------------------------------------------------------------
# Pure helpers: reasons, figures, cells, tables
# --------------------------------------------------------------------------


def one_line(err: BaseException, limit: int = 400) -> str:
    """An exception as one line: its message's lines joined, whitespace
    collapsed, at most ``limit`` characters; the type when it has no message."""
    text = " ".join(str(err).split())
    if not text:
        text = type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def classify(err: BaseException) -> str:
    """``"refused"``: the export or the generator says no on purpose (an
    :class:`export.errors.InputError`: a layer pattern, an op without a
    kernel, a model that does not fit); ``"error"``: anything else, or a
    tool that failed (a bug to report)."""
    from export.errors import InputError
    from export.mcu.build import ToolError

    return "refused" if isinstance(err, InputError) and not isinstance(err, ToolError) else "error"


def compact(n: Optional[float]) -> str:
    """An instruction count in a table cell: ``12.3M``, ``456k``, ``789``."""
    if n is None:
        return "-"
    n = float(n)
    if n >= 9.995e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}k"
    return f"{n:.0f}"


def kib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def core_summary(e: Dict) -> Dict:
    """The figures of one core of a :func:`export.mcu.run.run_mcu` report
    that this benchmark keeps (the per-layer table without its commands)."""
    keep = ("board", "board_stands_in", "compiled_only", "why", "layouts_from", "layouts", "bit_exact",
            "dense_bit_exact", "instructions", "instructions_dense", "measured_layouts", "spike_vs_dense",
            "flash_bytes", "static_ram_bytes", "stack_bytes", "ram_bytes", "arena_bytes", "constant_bytes",
            "dense", "deterministic", "mve_self_test", "fit")
    out = {k: e[k] for k in keep if k in e}
    if "per_layer" in e:
        out["per_layer"] = [{k: r[k] for k in ("name", "op", "layout", "macs", "instructions", "input_firing_rate")
                             if k in r} for r in e["per_layer"]]
    return out


def core_mismatches(cores: Dict[str, Dict], host: Dict[str, Dict]) -> List[str]:
    """What is not byte-identical with TFLM: ``["host spike_list",
    "cortex-m4", "cortex-m4 dense", "generic"]`` (empty: everything is)."""
    bad = [f"host {k}" for k, v in host.items() if v["equal"] < v["images"]]
    for core, e in cores.items():
        for key, label in (("bit_exact", core), ("dense_bit_exact", f"{core} dense")):
            v = e.get(key)
            if v is not None and v["equal"] < v["images"]:
                bad.append(label)
    return bad


def stack_overruns(cores: Dict[str, Dict]) -> List[str]:
    """The cores whose measured stack is the whole reserved stack: the
    paint was overwritten down to its bottom word, by a stack overflow or a
    write past the end of the static data below it."""
    from export.mcu.firmware import BOARDS

    return [c for c, e in cores.items() if e.get("stack_bytes") is not None and c in BOARDS
            and e["stack_bytes"] >= BOARDS[c].stack_bytes]


def instruction_cell(e: Optional[Dict]) -> str:
    """Cell of the instructions table: chosen / all-dense per inference;
    ``linked only`` for a target not run; the refusal when it did not fit."""
    if e is None:
        return ""
    if "refused" in e:
        return "does not fit"
    if e.get("compiled_only"):
        return "host run" if "bit_exact" in e else "linked only"
    return f"{compact(e['instructions']['mean'])} / {compact(e['instructions_dense']['mean'])}"


def memory_cell(e: Optional[Dict]) -> str:
    """Cell of the memory table: flash / RAM in KiB (``+stack``: static RAM
    of a target not run) and the images byte-identical with TFLM."""
    if e is None:
        return ""
    if "refused" in e:
        return "does not fit"
    exact = e.get("bit_exact")
    same = f" {exact['equal']}/{exact['images']}" if exact else ""
    dense = e.get("dense_bit_exact")
    if dense and dense["equal"] < dense["images"]:
        same += f" (dense {dense['equal']}/{dense['images']})"
    if e.get("compiled_only"):
        return f"{kib(e['flash_bytes'])} / {kib(e['static_ram_bytes'])}+stack{same}"
    return f"{kib(e['flash_bytes'])} / {kib(e['ram_bytes'])}{same}"


def accuracy_cells(r: Dict) -> List[str]:
    """Keras, int8 LiteRT, their agreement (classification: accuracy; a
    regression model: reconstruction MSE)."""
    a = r.get("accuracy")
    if not a:
        return ["-", "-", "-"]
    agree = f"{100 * a['int8_agreement']:.1f} %" if a.get("int8_agreement") is not None else "-"
    if a.get("task") == "regression":
        return [f"MSE {a['keras_mse']:.4f}", f"MSE {a['int8_mse']:.4f}", agree]
    return [f"{100 * a['keras_accuracy']:.1f} %", f"{100 * a['int8_accuracy']:.1f} %", agree]


def row_label(r: Dict) -> str:
    return f"{r['model']} (ReLU twin)" if r.get("activation") == "relu" else r["model"]


def status_cell(r: Dict) -> str:
    """What happened to the model: ``ok``, the refusal or the error, a
    failed export check, the mismatches."""
    parts = []
    if r["status"] == "refused":
        parts.append(f"refused ({r['stage']}): {r['reason']}")
    elif r["status"] == "error":
        parts.append(f"ERROR ({r['stage']}): {r['reason']}")
    checks = r.get("export_checks")
    if checks and not checks["passed"]:
        parts.append(f"export checks FAILED: {', '.join(checks['failed'])}")
    for core, e in (r.get("cores") or {}).items():
        if "refused" in e:
            parts.append(f"{SHORT.get(core, core)}: {e['refused']}")
    if r.get("mismatches"):
        parts.append(f"NOT byte-identical: {', '.join(r['mismatches'])}")
    if r.get("nondeterministic"):
        parts.append(f"counts differ between runs: {', '.join(r['nondeterministic'])}")
    if r.get("stack_overrun"):
        parts.append(f"stack paint overwritten to its bottom (an out-of-bounds write or a stack overflow): "
                     f"{', '.join(r['stack_overrun'])}")
    return "; ".join(parts) if parts else "ok"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> List[str]:
    """A Markdown table, columns padded for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return [line(head), rule] + [line(r) for r in rows]


def format_tables(results: Sequence[Dict], cores: Sequence[str]) -> List[str]:
    """The printed tables: models (accuracy, export, status), instructions
    per core, flash / RAM / bit-exactness per core."""
    lines = ["models: accuracy on the test images (Keras, int8 LiteRT, their agreement), spike-driven layers, "
             "what happened"]
    rows = []
    for r in results:
        exp = r.get("export") or {}
        rows.append([row_label(r), f"{r['parameters']:,}" if r.get("parameters") else "-", *accuracy_cells(r),
                     str(exp.get("spike_layers", "-")), f"{exp['tflite_bytes']:,}" if exp.get("tflite_bytes") else "-",
                     status_cell(r)])
    lines += _table(["model", "params", "Keras", "int8", "agree", "spike layers", ".tflite B", "status"], rows,
                    [False, True, True, True, True, True, True, False])
    columns = [c for c in cores]
    lines += ["", "retired instructions per inference: chosen (spike-driven) layouts / all dense (mean over the QEMU "
              "images; not cycles)"]
    rows = [[row_label(r)] + [instruction_cell((r.get("cores") or {}).get(c)) if r.get("cores") is not None else ""
                              for c in columns] for r in results]
    lines += _table(["model"] + [SHORT.get(c, c) for c in columns], rows, [False] + [True] * len(columns))
    lines += ["", "flash / RAM [KiB] (RAM: static + measured stack; +stack: static only, not run) and images "
              "byte-identical with TFLite Micro"]
    rows = [[row_label(r)] + [memory_cell((r.get("cores") or {}).get(c)) if r.get("cores") is not None else ""
                              for c in columns] for r in results]
    lines += _table(["model"] + [SHORT.get(c, c) for c in columns], rows, [False] + [True] * len(columns))
    return lines


def exit_status(results: Sequence[Dict]) -> int:
    """1 when an output was not byte-identical with TFLM, a count was not
    deterministic, a firmware wrote to the bottom of its reserved stack, or
    a model failed unexpectedly; else 0."""
    return int(any(r.get("mismatches") or r.get("nondeterministic") or r.get("stack_overrun") or r["status"] == "error"
                   for r in results))


# --------------------------------------------------------------------------
# Measuring one model
# --------------------------------------------------------------------------


def _fit_refusals(source, cores) -> Dict[str, str]:
    """``{core: one line}`` for each core of ``cores`` with a (not stand-in)
    board that the model does not fit (``export.mcu.firmware.check_fits``
    on the dense plan, what ``run_mcu`` refuses with). Raises the
    generator's :class:`export.mcu.lower.UnsupportedModelError`."""
    from export.mcu.firmware import BOARDS, DoesNotFitError, check_fits
    from export.mcu.generate import generate
    from export.mcu.lower import DENSE, lower, parsed_model
    from export.mcu.run import spike_codes

    parsed = parsed_model(source.flatbuffer)
    program = lower(parsed, spike_codes(source, parsed))
    out = {}
    for core in cores:
        b = BOARDS.get(core)
        if b is None or b.stand_in:
            continue
        try:
            check_fits(generate(program, DENSE, target=core), core)
        except DoesNotFitError as err:
            out[core] = one_line(err)
    return out


def _accuracy(model, result, x, y, task) -> Dict:
    """Keras and int8 LiteRT figures on ``x`` (the export's, and for a
    regression model the reconstruction MSE of both)."""
    import numpy as np

    report = result.report
    lite = report["formats"]["int8"]["litert"]
    out = {"task": task, "images": int(len(x)), "keras_accuracy": report["keras"]["accuracy"],
           "int8_accuracy": lite.get("accuracy"), "int8_agreement": lite.get("agreement_with_keras"),
           "int8_correlation": lite.get("correlation_with_keras"),
           "int8_relative_error": lite.get("relative_error_vs_keras"),
           "tflm_agreement_with_litert": report["formats"]["int8"].get("tflm", {}).get("agreement_with_litert")}
    if task == "regression":
        from export.metrics import agreement_report, model_logits
        from export.tflite.runtimes import run_litert
        from export.transform.inputs import model_inputs

        inputs = model_inputs(x, model)
        keras_out = model_logits(model, inputs)
        int8_out = run_litert(result.conversions["int8"].flatbuffer, inputs)["outputs"]
        target = np.asarray(y, np.float32).reshape(keras_out.shape)
        out["keras_mse"] = float(np.mean((keras_out - target) ** 2))
        out["int8_mse"] = float(np.mean((int8_out - target) ** 2))
        out["int8_agreement_report"] = agreement_report(keras_out, int8_out, task)
    return out


def measure(name: str, activation: str, cores: Sequence[str], args, work: str, say) -> Dict:
    """One model (``activation``: ``"s2nn"`` or ``"relu"``, its twin):
    trained, exported, accuracy, and export.mcu on ``cores``; a refusal or
    an error at any stage is the row's ``status`` with its one-line
    ``reason``."""
    from tests import zoo

    e = zoo.entry(name)
    label = name + (RELU_SUFFIX if activation == "relu" else "")
    r = {"model": name, "activation": activation, "pattern": e.pattern, "task": e.task, "status": "ok",
         "stage": None, "reason": None, "seconds": {}}
    stage = "train"
    folder = os.path.join(work, label)
    try:
        t0 = time.perf_counter()
        model = zoo.trained(name, activation, args.epochs, args.train_examples)
        x_train, y_train, x_test, y_test = zoo.data(name, args.train_examples, args.test_examples)
        r["parameters"] = int(model.count_params())
        r["seconds"]["train"] = round(time.perf_counter() - t0, 1)

        stage = "export"
        t0 = time.perf_counter()
        from export.config import ExportConfig
        from export.mcu.artefact import load_verified
        from export.pipeline import export_run

        out_dir = os.path.join(folder, "export")
        result = export_run(model, ExportConfig(
            out_dir, x_test, y_test if e.task == "classification" else None, formats=("int8",),
            calibration_images=x_train[-args.calibration:], num_calibration=args.calibration,
            max_tflm_examples=args.max_tflm_examples, c_array=False, verbose=False, task=e.task,
            allow_failed_checks=True))
        checks = result.report["checks"]
        r["export_checks"] = {"passed": bool(checks["passed"]), "failed": list(checks["failed"])}
        source = load_verified(out_dir)
        fmt = result.report["formats"]["int8"]
        r["export"] = {"tflite_bytes": len(source.flatbuffer), "sha256": source.sha256, "ops": fmt["ops"], "spike_tensors": len(source.codes),
                       "edge_only": fmt.get("edge_only")}
        r["accuracy"] = _accuracy(model, result, x_test, y_test, e.task)
        r["seconds"]["export"] = round(time.perf_counter() - t0, 1)

        stage = "mcu"
        t0 = time.perf_counter()
        from export.mcu.config import McuConfig
        from export.mcu.run import run_mcu

        refused = _fit_refusals(source, cores)
        run_cores = tuple(c for c in cores if c not in refused)
        report = run_mcu(source, x_test, McuConfig(
            cores=run_cores, num_images=args.images, measure_images=args.measure_images,
            host_images=args.host_images, output_dir=os.path.join(folder, "mcu"), model_name=label))
        r["export"]["spike_layers"] = len(report["spike_layers"])
        r["mcu"] = {k: report[k] for k in ("layers", "spike_tensors", "spike_layers", "op_counts", "tflm_arena_bytes",
                                           "host", "export_checks") if k in report}
        r["cores"] = {}
        for core in cores:
            if core in refused:
                r["cores"][core] = {"refused": refused[core]}
            else:
                r["cores"][core] = core_summary(report["cores"][core])
        r["mismatches"] = core_mismatches(r["cores"], report["host"])
        r["nondeterministic"] = [c for c, v in r["cores"].items() if v.get("deterministic") is False]
        r["stack_overrun"] = stack_overruns(r["cores"])
        r["seconds"]["mcu"] = round(time.perf_counter() - t0, 1)
    except Exception as err:  # noqa: BLE001 - every failure is a row with its reason
        r.update(status=classify(err), stage=stage, reason=one_line(err), exception=type(err).__name__)
        if r["status"] == "error":
            import traceback

            r["traceback"] = traceback.format_exc().splitlines()[-12:]
    finally:
        if args.work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    say(_progress(label, r, cores))
    return r


def _progress(label: str, r: Dict, cores: Sequence[str]) -> str:
    s = r["seconds"]
    took = ", ".join(f"{k} {v:.0f} s" for k, v in s.items())
    if r["status"] != "ok":
        return f"{label}: {r['status']} at {r['stage']} ({took}): {r['reason']}"
    cells = []
    for c in cores:
        e = r["cores"][c]
        if "refused" in e or e.get("compiled_only"):
            ex = e.get("bit_exact")
            cells.append(f"{SHORT[c]} " + ("no fit" if "refused" in e else "compiled")
                         + (f" {ex['equal']}/{ex['images']}" if ex else ""))
        else:
            cells.append(f"{SHORT[c]} {compact(e['instructions']['mean'])} "
                         f"{e['bit_exact']['equal']}/{e['bit_exact']['images']}")
    return f"{label}: {took}; {status_cell(r)}; " + ", ".join(cells)


def tree_changes() -> List[str]:
    """Tracked files of the working tree that differ from the commit
    (``git status --porcelain``): the figures are of those edits too."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def _tool_versions() -> Dict[str, Optional[str]]:
    import subprocess

    out = {}
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "gcc"):
        try:
            out[tool] = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            out[tool] = None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from export.mcu.firmware import missing_tools

    needed = sorted(set(args.cores) | set(args.relu_cores if relu_names(args.models) else ()))
    if missing_tools(needed):
        C.fail(PROG, f"{', '.join(missing_tools(needed))} not found (Debian: apt-get install gcc-arm-none-eabi "
                     "libnewlib-arm-none-eabi qemu-system-arm)")
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    t_start = time.time()
    machine = C.machine_info()
    printed: List[str] = []

    def say(line=""):
        print(line, flush=True)
        printed.append(line)

    tmp = None
    work = args.work_dir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="s2mcu_zoo_")
        work = tmp.name
    os.makedirs(work, exist_ok=True)
    say(f"$ {C.command_line()}")
    changed = tree_changes()
    say(f"commit {machine.get('git_commit')}" + (f", working tree with edits to {', '.join(changed)}" if changed
                                                 else ", clean working tree"))
    say(f"{len(args.models)} models on {', '.join(args.cores)}; ReLU twins of "
        f"{', '.join(relu_names(args.models)) or 'none'} on {', '.join(args.relu_cores) or 'no core'}; "
        f"training {args.epochs} epoch(s) on {args.train_examples} images, accuracy on {args.test_examples} test "
        f"images, {args.images} images per QEMU run ({args.measure_images} for the layout choice), "
        f"{args.host_images} on the host")
    results = []
    try:
        for name in args.models:
            results.append(measure(name, "s2nn", args.cores, args, work, say))
        if args.relu_cores:
            for name in relu_names(args.models):
                results.append(measure(name, "relu", args.relu_cores, args, work, say))
    finally:
        if tmp is not None:
            tmp.cleanup()
    say()
    for line in format_tables(results, args.cores):
        say(line)
    status = exit_status(results)
    refused = [row_label(r) for r in results if r["status"] == "refused"]
    say()
    say(f"{len(results)} rows: {sum(r['status'] == 'ok' for r in results)} on the MCU, {len(refused)} refused"
        + (f" ({', '.join(refused)})" if refused else "")
        + f", {sum(r['status'] == 'error' for r in results)} failed unexpectedly; "
        + ("every output checked byte-identical with TFLite Micro" if not any(r.get("mismatches") for r in results)
           else "SOME OUTPUTS DIFFER FROM TFLite Micro"))
    say("retired instructions (QEMU 7.2 -icount shift=0), not cycles: QEMU models no pipeline, memory wait states or "
        "Helium beat timing; the scattered loads and branches of the spike-driven kernels may cost more per "
        "instruction on silicon")
    say(f"total {time.time() - t_start:.0f} s")
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "text", "work_dir")}
    settings["training"] = ("tests.zoo.trained: Adam 3e-3, batch 64, cross-entropy on logits (MSE for regression), "
                            "Fashion-MNIST resized to each model's input (tests.zoo.images_for), seed 0")
    settings["export"] = ("export.pipeline.export_run, formats ('int8',), default neuron and rewrites, "
                          "allow_failed_checks=True; C from export.mcu.artefact.load_verified")
    payload = {"benchmark": "mcu_zoo", "command": C.command_line(), "settings": settings,
               "tools": _tool_versions(), "tree_changes_at_start": changed,
               "tree_changes_at_end": tree_changes(), "exit_status": status, "total_wall_s": round(time.time() - t_start, 1),
               "models": results, "machine": machine}
    C.write_json(args.output, payload)
    os.makedirs(os.path.dirname(os.path.abspath(args.text)), exist_ok=True)
    with open(args.text, "w") as f:
        f.write("\n".join(printed) + "\n")
    print(f"wrote {args.text}")
    return status


if __name__ == "__main__":
    sys.exit(main())
