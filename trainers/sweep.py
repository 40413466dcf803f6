"""``python -m trainers.sweep`` -- grid search over trainer flags.

Default grid: paper Appendix A (ResNet18),

    optimizer     in {sgd, adam}
    learning_rate in {0.0005, 0.001, 0.005, 0.01, 0.05}
    weight_decay  in {0.0005, 0.001, 0.005}

i.e. 30 runs. ``--grid name=v1,v2,...`` (repeatable) replaces it with a
user grid over any trainer flags. The trainer flags shared by every point
follow ``--``::

    python -m trainers.sweep --output_dir runs/sweep -- \\
        --flagfile trainers/configs/table2_resnet18_s2nn.cfg --epochs 20

Each point runs ``python -m trainers.cifar`` in a subprocess with its own
``--output_dir`` (``<output_dir>/<name>=<value>_...``). A point whose
``metrics.json`` exists is skipped (its numbers are read back), and a point
that was interrupted resumes from its last epoch, so re-running the same
command continues the sweep. After every point ``results.csv`` is rewritten
(atomically) and at the end the best configuration is printed.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from typing import Dict, List, Tuple

from absl import app
from absl import flags

from trainers import flags as trainer_flags

APPENDIX_A_GRID = [
    ("optimizer", ["sgd", "adam"]),
    ("learning_rate", ["0.0005", "0.001", "0.005", "0.01", "0.05"]),
    ("weight_decay", ["0.0005", "0.001", "0.005"]),
]
#: Metrics a sweep can select on: validation figures (held out of the
#: training set) by default; selecting on a test figure makes the test set
#: part of model selection.
METRICS = ("validation_accuracy_best", "validation_accuracy_final", "test_accuracy_final", "test_accuracy_best",
           "tta_accuracy_final")

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS):
    flags.DEFINE_string("output_dir", None, "Sweep folder: one run folder per point and results.csv.",
                        flag_values=fv)
    flags.DEFINE_multi_string("grid", [], "Grid axis NAME=V1,V2,... over a trainer flag (repeatable); "
                              "default: the Appendix A grid.", flag_values=fv)
    flags.DEFINE_string("select", "validation_accuracy_best", "Metric that picks the best point: "
                        + ", ".join(METRICS) + " (a test figure makes the test set part of the selection).",
                        flag_values=fv)
    return fv


def parse_grid(specs: List[str]) -> List[Tuple[str, List[str]]]:
    """``["optimizer=sgd,adam", ...]`` -> ``[("optimizer", ["sgd", "adam"]), ...]``."""
    if not specs:
        return [(k, list(v)) for k, v in APPENDIX_A_GRID]
    grid, seen = [], set()
    known = set(iter(trainer_flags.new_flag_values()))
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not items:
            raise trainer_flags.UsageError(f"--grid must look like NAME=V1,V2,..., got {spec!r}")
        if name not in known or name == "output_dir":
            raise trainer_flags.UsageError(f"--grid {name!r} is not a trainer flag")
        if name in seen:
            raise trainer_flags.UsageError(f"--grid names {name!r} twice")
        seen.add(name)
        grid.append((name, items))
    return grid


def grid_points(grid) -> List[Dict[str, str]]:
    """The Cartesian product of the grid axes, in order."""
    names = [name for name, _ in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*[values for _, values in grid])]


def point_name(point: Dict[str, str]) -> str:
    return "_".join(f"{k}={v}" for k, v in point.items())


def point_args(base_args: List[str], point: Dict[str, str], run_dir: str) -> List[str]:
    """Trainer arguments of one point: the shared ones, then the point's
    values and its output folder (later flags win in absl)."""
    return list(base_args) + [f"--{k}={v}" for k, v in point.items()] + [f"--output_dir={run_dir}"]


def validate_points(base_args, points, output_dir):
    """Parses and validates every point's trainer flags up front."""
    for point in points:
        fv = trainer_flags.new_flag_values()
        args = point_args(base_args, point, os.path.join(output_dir, point_name(point)))
        try:
            trainer_flags.parse_argv(["trainers.cifar"] + args, fv)
            trainer_flags.validate(fv)
        except trainer_flags.UsageError as err:
            raise trainer_flags.UsageError(f"point {point_name(point)}: {err}") from None


def _read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_results(path: str, rows: List[Dict], axis_names: List[str]) -> None:
    fields = axis_names + ["status"] + list(METRICS) + ["epochs_completed", "wall_time_s", "run_dir"]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fields})
    os.replace(tmp, path)


def run_sweep(output_dir: str, grid, base_args: List[str], select: str = "validation_accuracy_best",
              python: str = sys.executable) -> Tuple[List[Dict], Dict]:
    """Runs every unfinished point; returns ``(rows, best_row)``."""
    points = grid_points(grid)
    axis_names = [name for name, _ in grid]
    os.makedirs(output_dir, exist_ok=True)
    results_path = os.path.join(output_dir, "results.csv")
    rows = []
    for i, point in enumerate(points):
        run_dir = os.path.join(output_dir, point_name(point))
        row = dict(point, run_dir=run_dir)
        metrics = _read_metrics(run_dir)
        if metrics is not None:
            print(f"[{i + 1}/{len(points)}] {point_name(point)}: done, skipped", flush=True)
            row["status"] = "skipped (done)"
        else:
            print(f"[{i + 1}/{len(points)}] {point_name(point)}: training", flush=True)
            cmd = [python, "-m", "trainers.cifar"] + point_args(base_args, point, run_dir)
            rc = subprocess.call(cmd)
            metrics = _read_metrics(run_dir)
            row["status"] = "ok" if rc == 0 and metrics is not None else f"failed (exit {rc})"
        if metrics is not None:
            for key in METRICS + ("epochs_completed", "wall_time_s"):
                row[key] = metrics.get(key)
        rows.append(row)
        write_results(results_path, rows, axis_names)
    scored = [r for r in rows if isinstance(r.get(select), (int, float))]
    best = max(scored, key=lambda r: r[select]) if scored else None
    return rows, best


def _check(argv):
    """Validates the sweep flags and every point; returns (grid, base_args)."""
    fv = FLAGS
    base_args = argv[1:]
    if not fv.output_dir:
        raise trainer_flags.UsageError("--output_dir is required")
    if fv.select not in METRICS:
        raise trainer_flags.UsageError(f"--select must be one of {', '.join(METRICS)}, got {fv.select!r}")
    if any(a.startswith("--output_dir") for a in base_args):
        raise trainer_flags.UsageError("give --output_dir before '--' (each point gets its own folder)")
    grid = parse_grid(fv.grid)
    validate_points(base_args, grid_points(grid), fv.output_dir)
    return grid, base_args


def _main(checked):
    fv = FLAGS
    grid, base_args = checked
    rows, best = run_sweep(fv.output_dir, grid, base_args, fv.select)
    print(f"results: {os.path.join(fv.output_dir, 'results.csv')}")
    if best is None:
        print("no point finished", file=sys.stderr)
        raise SystemExit(1)
    axes = " ".join(f"--{name}={best[name]}" for name, _ in grid)
    print(f"best ({fv.select} {best[fv.select]:.4f}): {axes}")
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"{len(failed)} point(s) failed", file=sys.stderr)
        raise SystemExit(1)


def _parse(argv):
    """absl flags parser: parse and validate everything, or one error line and exit 2."""
    try:
        return _check(trainer_flags.parse_argv_keep_rest(argv, FLAGS))
    except trainer_flags.UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None):
    # TF's C++ start-up INFO lines are noise for a CLI (and would precede a
    # flag error); set TF_CPP_MIN_LOG_LEVEL=0 to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    trainer_flags.import_tensorflow_quietly()
    define_flags(FLAGS)
    app.run(_main, argv=argv, flags_parser=_parse)


if __name__ == "__main__":
    main()
