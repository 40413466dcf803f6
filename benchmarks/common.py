"""Shared helpers for the benchmark scripts: machine description, JSON output,
flag parsing that fails with one line, robust statistics, and the
:class:`Runner` that times one flatbuffer in LiteRT or TFLite Micro."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a single ``error:`` line, exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def fail(prog, message):
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def csv_list(kind=str, allowed=None, name="value"):
    """argparse ``type=`` for comma-separated lists, validated element-wise."""

    def parse(text):
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {name} list")
        out = []
        for item in items:
            try:
                value = kind(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad {name} {item!r}") from None
            if allowed is not None and value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {name} {item!r}; valid: {', '.join(map(str, allowed))}")
            out.append(value)
        return out

    return parse


def _number(convert, accept, expected):
    """An argparse ``type=`` that converts with ``convert`` and rejects values
    failing ``accept`` with "expected <expected>, got ..."."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")  # NaN fails v > 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - git is optional
        return None


def load():
    """The 1/5/15-minute load averages (``uptime``)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info():
    import tensorflow as tf
    import keras

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "git_commit": _git_commit(),
        "load_avg_start": load(),
    }
    return info


def command_line():
    return " ".join(["python -m", _module_name()] + [shlex.quote(a) for a in sys.argv[1:]])


def _module_name():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return os.path.splitext(os.path.relpath(sys.argv[0]))[0].replace(os.sep, ".")


def write_json(path, payload):
    payload.setdefault("machine", {})["load_avg_end"] = load()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def write_result(args, benchmark, machine, t_start, not_config=("output",), **fields):
    """Writes a benchmark's JSON to ``args.output`` (:func:`write_json`):
    ``benchmark``, the command line, ``config`` (the flags of ``args`` but
    ``not_config``), ``fields``, the total wall time since ``t_start``
    (``time.time()``) and ``machine``; returns 0, the exit status."""
    config = {k: v for k, v in vars(args).items() if k not in not_config}
    write_json(args.output, {"benchmark": benchmark, "command": command_line(), "config": config, **fields,
                             "total_wall_s": round(time.time() - t_start, 1), "machine": machine})
    return 0


def median(values):
    return statistics.median(values) if values else float("nan")


def iqr(values):
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


class Runner:
    """One flatbuffer in one runtime, timing ``invoke()`` per image (wall and CPU time).

    ``runtime``: ``"litert"`` (LiteRT with its default XNNPACK delegate),
    ``"litert_noxnn"`` (builtin kernels only) or ``"tflm"`` (TFLite Micro
    interpreter, reference kernels, with a tensor arena of ``arena`` bytes).
    Always one thread.
    """

    def __init__(self, name, model_bytes, runtime, arena=None):
        from export.tflite import runtimes as R

        names = {"litert": "litert", "litert_noxnn": "litert_builtin", "tflm": "tflm"}
        if runtime not in names:
            raise ValueError(f"unknown runtime {runtime!r}; valid: litert, litert_noxnn, tflm")
        self.name, self.runtime, self.R = name, runtime, R
        kwargs = {"arena_size": arena} if runtime == "tflm" else {"num_threads": 1}
        self.session = R.Session(model_bytes, names[runtime], **kwargs)

    def predict(self, image):
        """``(float32 output of one image, invoke wall seconds, invoke CPU seconds)``.

        CPU time is the process's (all threads, ``time.process_time``): on a
        shared, oversubscribed machine it leaves out the time the process
        waited for a core, which wall time cannot."""
        s = self.session
        s.set_input(s.quantize_input(image[None]))
        c0 = time.process_time()
        dt = s.invoke()
        dc = time.process_time() - c0
        out = self.R.dequantize(s.output(0), s.outputs[0])[0]
        return out, dt, dc
