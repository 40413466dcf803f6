"""The dependency arrows of the project, checked on the source (AST), not at
run time:

* the library ``s2nn_keras`` imports neither ``trainers`` nor ``export``;
* ``export`` never imports ``trainers``;
* ``benchmarks`` may import anything, but no private name (``_x``) of ``export``;

and that ``s2nn_keras`` imports and runs (a model, firing rates, the energy
report) with TensorFlow blocked, on the JAX backend.
"""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("s2nn_keras", "export", "trainers", "benchmarks")
FORBIDDEN = {"s2nn_keras": ("trainers", "export"), "export": ("trainers",), "trainers": (), "benchmarks": ()}


def _sources(package):
    root = os.path.join(REPO, package)
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _module_of(path):
    rel = os.path.relpath(path, REPO)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return rel


def imports(path):
    """``[(line, imported module, [names])]`` of every import statement in a
    file (function-level and conditional ones included); relative imports
    resolved against the file's package."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    parts = _module_of(path)
    package = parts if path.endswith("__init__.py") else parts[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value, []))
    return found


def _top(module):
    return module.split(".")[0]


def violations(packages=PACKAGES):
    bad = []
    for package in packages:
        for path in _sources(package):
            rel = os.path.relpath(path, REPO)
            for line, module, names in imports(path):
                if _top(module) in FORBIDDEN[package]:
                    bad.append(f"{rel}:{line}: {package} imports {module}")
                if package == "benchmarks" and _top(module) == "export":
                    private = [p for p in module.split(".")[1:] if p.startswith("_")]
                    private += [n for n in names if n.startswith("_")]
                    if private:
                        bad.append(f"{rel}:{line}: benchmarks import private {module}: {', '.join(private)}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_arrows(package):
    assert violations([package]) == []


def test_the_checker_sees_wrong_arrows(tmp_path):
    """The AST walk finds plain, relative, function-level and importlib imports."""
    pkg = tmp_path / "export"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = pkg / "m.py"
    src.write_text(textwrap.dedent("""
        import os
        from . import sibling
        def f():
            from trainers.flags import x
            import importlib
            importlib.import_module("trainers.data")
        from export.tflite.convert import _with_neurons
    """))
    global REPO
    saved = REPO
    try:
        REPO = str(tmp_path)
        got = imports(str(src))
    finally:
        REPO = saved
    modules = [m for _, m, _ in got]
    assert "os" in modules and "export" in modules and "trainers.flags" in modules and "trainers.data" in modules
    assert ("export.tflite.convert", ["_with_neurons"]) in [(m, n) for _, m, n in got]


BLOCKED_TF_SCRIPT = r"""
import importlib, os, sys
class _BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow.") or name.startswith("tensorflow_"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _BlockTensorFlow())
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import keras
import s2nn_keras
for name in ("surrogates", "layers", "models", "regularizers", "firing", "graph", "flops", "energy", "datasets"):
    importlib.import_module("s2nn_keras." + name)
assert "tensorflow" not in sys.modules, "tensorflow was imported"
from s2nn_keras.models import PreActResNet
from s2nn_keras.energy import energy_report
keras.utils.set_random_seed(0)
model = PreActResNet([1], (8, 8, 1), 3, width=4)
x = np.random.default_rng(0).random((8, 8, 8, 1), dtype=np.float32)
rates = s2nn_keras.firing_rates(model, x)
rep = energy_report(model, x)
assert rates and rep["efficiency"] > 1.0, (rates, rep["efficiency"])
from s2nn_keras import datasets
try:
    datasets.load_arrays("cifar10", "test")
except datasets.DatasetNotFoundError as err:
    assert "s2nn_keras[tf]" in str(err), err
else:
    raise AssertionError("cifar10 loaded without tensorflow-datasets")
assert "tensorflow" not in sys.modules, "tensorflow was imported"
print("OK", keras.backend.backend(), len(rates), round(rep["efficiency"], 3))
"""


def test_library_imports_and_runs_without_tensorflow():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", BLOCKED_TF_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0 and "OK jax" in proc.stdout, proc.stderr[-3000:]
