"""The export's errors: one base class, and the split the command lines
make on it.

* :class:`ExportError` -- every error the export raises on purpose.
* :class:`InputError` -- the input's fault (a model file, a flag, a data
  file, a layer pattern the export does not support, a missing tool): the
  command lines print its one line and exit 2.
* :class:`ChecksFailedError` -- the export ran, but its own verification
  failed (:mod:`export.checks`): exit 3.

Each concrete error also keeps the built-in base it always had
(``FoldError`` is a ``ValueError``, ``ToolError`` a ``RuntimeError``), so
code that caught those still does. This module imports nothing heavy, so
the CLI harness tells the cases apart with ``isinstance`` before any
TensorFlow module is loaded.

Example::

    from export.errors import InputError

    class FoldError(InputError, ValueError):
        "A model that cannot be folded."
"""

from __future__ import annotations

__all__ = ["ExportError", "InputError", "ChecksFailedError"]


class ExportError(Exception):
    """Base of every error the export raises on purpose."""


class InputError(ExportError):
    """Bad input: the message is one line naming what was wrong and what is
    valid (exit status 2 on the command lines)."""


class ChecksFailedError(ExportError):
    """The export's own checks failed (exit status 3 on the command lines)."""
