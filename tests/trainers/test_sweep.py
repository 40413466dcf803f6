"""Grid parsing and validation of the sweep (fast; the real runs are in test_resilience)."""

import pytest

from trainers import flags as tf_flags
from trainers import sweep


def test_default_grid_is_appendix_a():
    points = sweep.grid_points(sweep.parse_grid([]))
    assert len(points) == 2 * 5 * 3
    assert {p["optimizer"] for p in points} == {"sgd", "adam"}
    assert {float(p["learning_rate"]) for p in points} == {0.0005, 0.001, 0.005, 0.01, 0.05}
    assert {float(p["weight_decay"]) for p in points} == {0.0005, 0.001, 0.005}


def test_user_grid_and_point_args(tmp_path):
    grid = sweep.parse_grid(["width=8,16", "--activation=s2nn,relu"])
    points = sweep.grid_points(grid)
    assert points[1] == {"width": "8", "activation": "relu"}
    args = sweep.point_args(["--epochs=1"], points[1], "/x")
    assert args == ["--epochs=1", "--width=8", "--activation=relu", "--output_dir=/x"]
    sweep.validate_points(["--model=custom", "--blocks=1"], points, str(tmp_path))


@pytest.mark.parametrize("spec, message", [
    ("width", "NAME=V1,V2"), ("nonsense=1,2", "not a trainer flag"), ("output_dir=a,b", "not a trainer flag"),
])
def test_bad_grid(spec, message):
    with pytest.raises(tf_flags.UsageError, match=message):
        sweep.parse_grid([spec])


def test_bad_point_is_reported_before_running(tmp_path):
    grid = sweep.parse_grid(["learning_rate=0.1,-1"])
    with pytest.raises(tf_flags.UsageError, match="learning_rate=-1.*must be > 0"):
        sweep.validate_points([], sweep.grid_points(grid), str(tmp_path))


def test_sweep_cli_bad_point_is_one_line(tmp_path):
    from tests.trainers.helpers import run_trainer

    out = tmp_path / "sweep"
    proc = run_trainer(f"--output_dir={out}", "--grid=learning_rate=0.1,-1", "--", "--dataset=fashion_mnist",
                       module="trainers.sweep", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: point learning_rate=-1: --learning_rate must be > 0, got -1.0"
    assert not out.exists()
