"""Module attributes loaded on first use (PEP 562).

``export`` and ``export.energy`` name their public API in a table
``{attribute: defining module}`` and import the defining module only when
the attribute is first read, so that ``import export`` stays cheap and the
command lines can silence TensorFlow's start-up before it is imported.

Example::

    __getattr__, __dir__ = lazy_attributes(__name__, {"fold_batchnorm": "export.transform.fold"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, List, Mapping, Tuple


def lazy_attributes(module_name: str, where: Mapping[str, str]) -> Tuple[Callable, Callable[[], List[str]]]:
    """Returns the ``__getattr__`` and ``__dir__`` for module ``module_name``
    that resolve each name of ``where`` from its defining module."""

    def __getattr__(name):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[module_name])) | set(where))

    return __getattr__, __dir__
