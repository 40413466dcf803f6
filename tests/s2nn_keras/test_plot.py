import os
import subprocess
import sys

import numpy as np
import pytest

from s2nn_keras.plot import main, plot_surrogates

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")  # the 'plot' extra
    out = tmp_path / "s.png"
    plot_surrogates(str(out), ["s2nn", "ste_b"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plotted_curves_are_the_forward_and_the_backward(tmp_path, monkeypatch):
    """The panel's orange curve is the gradient autodiff gives through spike()."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from tests.s2nn_keras.backend_utils import value_and_grad

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, *a, **k: drawn.append((np.asarray(x), np.asarray(y))) or original(self, x, y, *a, **k))
    plot_surrogates(str(tmp_path / "s.png"), ["s2nn"], -1.0, 3.0, points=41)
    (u, s), (_, g) = drawn
    from s2nn_keras import spike

    r = value_and_grad(lambda x: spike(x, "s2nn"), u)
    np.testing.assert_array_equal(s, r.value)
    np.testing.assert_allclose(g, r.grad, rtol=1e-6)


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


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path):
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from s2nn_keras.plot import main\n"
        f"sys.exit(main(['--output', {str(tmp_path / 'x.png')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert errors == ["error: s2nn_keras.plot needs matplotlib: pip install 's2nn_keras[plot]' (or pip install matplotlib)"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()
