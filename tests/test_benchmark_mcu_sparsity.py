"""benchmarks.mcu_sparsity: what it reads from a trainer run, its ratios, the
choice of the cheapest regularizer strength, and its one-line refusals.
(The QEMU measurement itself is what benchmarks.mcu_ci checks in CI.)"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import mcu_sparsity as S
from benchmarks.mcu import TFLM_CMSIS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_dir(tmp_path, name, *, acc=0.91, rates=(0.1, 0.3), activation="s2nn", l1=0.05, seed=1, energy=True):
    d = tmp_path / name
    d.mkdir()
    metrics = {"flags": {"activation": activation, "rate_l1": l1, "seed": seed}, "test_accuracy_final": acc,
               "firing_rates": {f"act{i}": r for i, r in enumerate(rates)}}
    if energy:
        metrics["energy"] = {"efficiency": 22.4, "convention": "default"}
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "final.keras").write_bytes(b"")
    return str(d)


def test_run_summary_reads_the_trainer_metrics(tmp_path):
    s = S.run_summary(_run_dir(tmp_path, "a"))
    assert s["rate_l1"] == 0.05 and s["seed"] == 1 and s["test_accuracy"] == 0.91
    assert s["firing_rate"] == pytest.approx(0.2)
    assert s["e_full_over_e_method"] == 22.4


def test_run_summary_refuses_relu_and_unfinished_runs(tmp_path):
    with pytest.raises(ValueError, match="ReLU run"):
        S.run_summary(_run_dir(tmp_path, "relu", activation="relu"))
    with pytest.raises(ValueError, match="not a finished trainer run"):
        S.run_summary(_run_dir(tmp_path, "unfinished", energy=False))


def test_ratios_against_the_tflm_table():
    t = TFLM_CMSIS["cortex-m55"]
    r = S.ratios(t["s2nn"] * 0.3, t["s2nn"] * 0.6, "cortex-m55")
    assert r["vs_tflm"] == pytest.approx(0.3)
    assert r["dense_over_spike"] == pytest.approx(2.0)
    assert r["tflm_relu_over_spike"] == pytest.approx(t["relu_bnfolded"] / (t["s2nn"] * 0.3))


def _point(l1, seed, acc, m55):
    return {"rate_l1": l1, "seed": seed, "test_accuracy": acc, "cores": {"cortex-m55": {"instructions": m55}}}


def test_cheapest_ok_needs_every_seed_above_the_floor():
    points = [_point(0.0, 0, 0.911, 1.0e6), _point(0.0, 1, 0.909, 1.0e6),
              _point(0.05, 0, 0.906, 0.9e6), _point(0.05, 1, 0.904, 0.9e6),   # one seed below 90.5 %
              _point(0.1, 0, 0.905, 0.95e6)]
    assert S.cheapest_ok(points) == 0.1
    assert S.cheapest_ok(points, floor=0.95) is None
    assert S.cheapest_ok(points[:2]) == 0.0


def test_cli_bad_run_directory_is_one_line(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.mcu_sparsity", "--runs", str(tmp_path / "missing")],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "has no final.keras" in lines[0], out.stderr
    relu = _run_dir(tmp_path, "relu", activation="relu")
    out = subprocess.run([sys.executable, "-m", "benchmarks.mcu_sparsity", "--runs", relu],
                         cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "ReLU run" in out.stderr and "Traceback" not in out.stderr
