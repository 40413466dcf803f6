"""The export's one model loader: a ``.keras`` file with any layer the
package writes, or one clear line saying what is wrong with the file.

:func:`load_model` registers every custom layer first -- ``S2Activation``
and the regularizer (:mod:`s2nn_keras`), the folded ``ThresholdNeuron``
(``model_folded.keras``), ``GridQuantize`` and the quantization-aware
layers (``model_qat.keras``) -- so every file ``python -m export`` writes
loads in every command line and in Python. A file that is not a loadable
Keras model raises :class:`ModelFileError` whose message is one complete
line naming the file and what is wrong (never a cut-off Keras message):

* a missing path or a directory;
* a name without ``.keras`` (``.h5`` / SavedModel: re-save with
  ``model.save("m.keras")``; ``.tflite`` goes to ``python -m export.energy``);
* not a zip archive (a text file named ``x.keras``), a truncated or damaged
  archive, an archive without ``config.json``;
* a layer class that is not registered (``Could not locate class ...``);
* anything else Keras raises, as its type and first line.

Example::

    from export.loader import load_model, ModelFileError

    model = load_model("run/export/model_qat.keras")
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import zipfile

from export.errors import InputError

__all__ = ["load_model", "check_model_file", "ModelFileError", "register_layers", "register_when_keras_loads",
           "first_line"]

_ZIP_MAGIC = b"PK\x03\x04"
_UNKNOWN_CLASS = re.compile(r"Could not locate (?:class|function) '([^']+)'")
_DUMP = re.compile(r"\s*(Full object config|config=|Received config|Exception encountered)\b.*$")


class ModelFileError(InputError, ValueError):
    """The file is not a Keras model this package can load (one-line message)."""


def first_line(err: BaseException) -> str:
    """A one-line, complete description of ``err``: its first non-empty line
    without the config dumps Keras appends (``Full object config: {...}``),
    or its type name when it has no message."""
    for line in str(err).splitlines():
        line = _DUMP.sub("", line).strip()
        if line:
            return line
    return type(err).__name__


def register_layers() -> None:
    """Registers every layer this package saves (S2Activation, the
    regularizer, ThresholdNeuron, GridQuantize, the QAT layers) with Keras:
    :mod:`export.transform.layers`, which does not import TensorFlow."""
    import export.transform.layers  # noqa: F401


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds ``keras`` with the other finders and registers the export's
    layers right after the module has run (once; then steps aside)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            register_layers()

        loader.exec_module = exec_module
        return spec


def register_when_keras_loads() -> None:
    """Makes ``import export`` enough for plain ``keras.saving.load_model``
    to load every file the export writes, without importing Keras (and
    TensorFlow) itself: the layers are registered now when Keras is already
    imported, else the moment it is (a finder on ``sys.meta_path`` that
    runs once). ``export/__init__.py`` calls it."""
    if "keras" in sys.modules:
        register_layers()
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())


def _causes(err):
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def check_model_file(path: str) -> None:
    """Raises :class:`ModelFileError` unless ``path`` is a readable
    ``.keras`` zip archive holding ``config.json`` (no TensorFlow needed)."""
    if not os.path.exists(path):
        raise ModelFileError(f"{path!r} does not exist")
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a .keras model file")
    if not path.endswith(".keras"):
        hint = ("; a .tflite file goes to python -m export.energy" if path.endswith(".tflite") else
                "; re-save an .h5 or SavedModel model with model.save('model.keras')")
        raise ModelFileError(f"expected a .keras model file, got {path!r}{hint}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        what = ("a truncated or damaged zip archive" if head == _ZIP_MAGIC
                else "not a zip archive" if head else "an empty file")
        raise ModelFileError(f"{path!r} is not a Keras model file ({what}; a .keras file is the zip archive "
                             "that model.save('model.keras') writes)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ModelFileError(f"{path!r} is not a Keras model file (a damaged zip archive: {first_line(err)})") \
            from None
    if damaged is not None:
        raise ModelFileError(f"{path!r} is not a Keras model file (a damaged zip archive: member "
                             f"{damaged!r} fails its CRC check)")
    if "config.json" not in names:
        raise ModelFileError(f"{path!r} is not a Keras model file (the zip archive holds no config.json)")


def load_model(path, compile: bool = False):
    """Loads the Keras model at ``path`` (a ``.keras`` file), every layer of
    this package registered (module docstring); ``compile`` as in
    ``keras.saving.load_model`` (default False: inference only).

    Raises:
      ModelFileError: the file is missing or not a loadable Keras model
        (one-line message naming the file).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ModelFileError(f"expected the path of a .keras model file, got an object of type {type(path).__name__}")
    path = os.fspath(path)
    check_model_file(path)
    register_layers()
    import keras

    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as err:  # Keras raises TypeError/ValueError/OSError/KeyError... with long messages
        for cause in _causes(err):
            m = _UNKNOWN_CLASS.search(str(cause))
            if m:
                raise ModelFileError(
                    f"cannot load {path!r}: it uses the layer or function {m.group(1)!r}, which is not "
                    "registered (not a Keras, s2nn_keras or export layer); load it in Python after importing "
                    "the module that defines it with @keras.saving.register_keras_serializable()") from None
        root = _causes(err)[-1]
        raise ModelFileError(f"cannot load {path!r}: {type(root).__name__}: {first_line(root)}") from None
