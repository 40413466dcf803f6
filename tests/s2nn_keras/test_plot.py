import os
import subprocess
import sys

import pytest

from s2nn_keras.plot import main, plot_surrogates

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plot_writes_png(tmp_path):
    out = tmp_path / "s.png"
    plot_surrogates(str(out), ["s2nn", "ste_b"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_unknown_surrogate_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "s2nn_keras.plot", "--surrogates", "nope", "--output", str(tmp_path / "x.png")],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert result.returncode == 2
    last = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert last == ["error: unknown surrogate 'nope'; valid names: " + last[0].split("valid names: ")[1]]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_rejects_empty_range():
    with pytest.raises(SystemExit) as info:
        main(["--u_min", "3", "--u_max", "1"])
    assert info.value.code == 2
