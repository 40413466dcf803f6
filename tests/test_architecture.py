"""The dependency arrows of the project, checked on the source (AST), not at
run time:

* the library ``s2nn_keras`` imports neither ``trainers`` nor ``export``;
* ``export`` never imports ``trainers``;
* ``benchmarks`` may import anything, but no private name (``_x``) of ``export``;
* no import cycle anywhere in the project (function-level imports count),
  and no private name (``_x``, or a module ``_x``) imported from another file;
* inside ``export``, one arrow per floor: ``transform`` (Keras -> Keras)
  never imports ``tflite``; ``tflite`` never imports ``energy``, ``mcu`` or
  the pipeline; nothing but the command lines imports ``cli``; the top of
  ``export`` holds at most 12 modules;

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


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_graph(packages=PACKAGES):
    """``{module: {imported project modules}}``: ``from a import b`` is an
    arrow to ``a.b`` when that is a module, else to ``a``. A parent
    package's ``__init__`` that Python runs on the way is no arrow."""
    paths = {".".join(_module_of(p)): p for package in packages for p in _sources(package)}
    graph = {}
    for module, path in paths.items():
        targets = set()
        for _, imported, names in imports(path):
            submodules = [f"{imported}.{n}" for n in names if f"{imported}.{n}" in paths]
            targets.update(submodules)
            if imported in paths and (not names or len(submodules) < len(names)):
                targets.add(imported)
        graph[module] = targets - {module}
    return graph


def cycles(graph):
    """The import cycles of ``graph``: its strongly connected components of
    more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(packages=PACKAGES):
    """``file:line: module names`` of every import of a private project name
    (a ``_x`` module on the path, or a ``_x`` name) from another file."""
    bad = []
    for package in packages:
        for path in _sources(package):
            own = ".".join(_module_of(path))
            for line, imported, names in imports(path):
                if _top(imported) not in PACKAGES or imported == own:
                    continue
                private = [p for p in imported.split(".") if _is_private(p)] + [n for n in names if _is_private(n)]
                if private:
                    bad.append(f"{os.path.relpath(path, REPO)}:{line}: {imported}: {', '.join(private)}")
    return bad


#: Inside ``export``: a module under the first floor never imports one under
#: any of the others (``export.pipeline`` etc. are the top-level modules).
EXPORT_FLOORS = {
    "export.transform": ("export.tflite", "export.energy", "export.mcu", "export.pipeline"),
    "export.tflite": ("export.energy", "export.mcu", "export.pipeline"),
    "export.energy": ("export.mcu", "export.pipeline"),
    "export.mcu": ("export.energy", "export.pipeline"),
}
#: Who may import ``export.cli``: the command lines themselves and the
#: ``python -m`` shims.
CLI_IMPORTERS = ("export.cli", "export.__main__", "export.energy.__main__", "export.mcu.__main__")


def _under(module, package):
    return module == package or module.startswith(package + ".")


def floor_violations(graph):
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            for floor, forbidden in EXPORT_FLOORS.items():
                if _under(module, floor) and any(_under(target, f) for f in forbidden):
                    bad.append(f"{module} imports {target}")
            if _under(target, "export.cli") and not any(_under(module, c) for c in CLI_IMPORTERS):
                bad.append(f"{module} imports the command line {target}")
    return bad


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_no_private_name_imported_across_files():
    assert private_imports() == []


def test_export_floors():
    assert floor_violations(module_graph(("export",))) == []


def test_export_top_level_stays_small():
    top = sorted(n for n in os.listdir(os.path.join(REPO, "export")) if n.endswith(".py"))
    assert len(top) <= 12, top


def test_the_structure_checks_see_cycles_privates_and_floors(tmp_path):
    """Negative controls: a two-module cycle, a private import, a transform
    module importing tflite and a library module importing the CLI."""
    global REPO
    for rel, text in {
        "export/__init__.py": "",
        "export/a.py": "from export import b\n",
        "export/b.py": "def f():\n    from export.a import thing\n",
        "export/c.py": "from export.b import _helper\n",
        "export/transform/__init__.py": "",
        "export/transform/t.py": "from export.tflite import convert\n",
        "export/tflite/__init__.py": "",
        "export/tflite/convert.py": "from export.cli.flags import cores\n",
        "export/cli/__init__.py": "",
        "export/cli/flags.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    saved = REPO
    try:
        REPO = str(tmp_path)
        graph = module_graph(("export",))
        assert cycles(graph) == [["export.a", "export.b"]]
        assert private_imports(("export",)) == ["export/c.py:1: export.b: _helper"]
        assert floor_violations(graph) == ["export.tflite.convert imports the command line export.cli.flags",
                                           "export.transform.t imports export.tflite.convert"]
    finally:
        REPO = saved


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
