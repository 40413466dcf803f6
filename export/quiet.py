"""Quiet TensorFlow start-up for the export command-line tools.

TF 2.21 prints start-up INFO lines ("oneDNN custom operations are on",
"Could not find cuda drivers") on the C-level stderr before absl logging
is initialised, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; a CLI whose bad
input must end with exactly one stderr line imports TensorFlow through
:func:`import_tensorflow_quietly`.

    from export.quiet import import_tensorflow_quietly
    import_tensorflow_quietly()   # keras and tensorflow are now imported
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

__all__ = ["import_tensorflow_quietly", "retracing_warnings_silenced"]

_RETRACING = "triggered tf.function retracing"


class _DropRetracing(logging.Filter):
    def filter(self, record):
        return _RETRACING not in record.getMessage()


@contextlib.contextmanager
def retracing_warnings_silenced():
    """Drops TensorFlow's "N out of the last M calls ... triggered
    tf.function retracing" warning inside the block (logger ``tensorflow``;
    other records pass).

    The rate counters build one probe model per network measured (trained,
    folded) and Keras traces one predict function per probe and input shape
    (the last, partial batch included): intended one-off traces, which TF's
    heuristic reports as "expensive retracing" in four stderr lines.
    """
    logger = logging.getLogger("tensorflow")
    drop = _DropRetracing()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def import_tensorflow_quietly() -> None:
    """Imports Keras and TensorFlow with fd 2 silenced when
    ``TF_CPP_MIN_LOG_LEVEL`` >= 1 (defaulted to 2 here). Call it before
    anything imports Keras (with the TensorFlow backend, ``import keras``
    imports TensorFlow).

    Python exceptions still propagate (printed after stderr is restored);
    without TensorFlow installed this raises ``ImportError`` naming the
    ``tf`` extra.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    saved = devnull = None
    if level >= 1:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as err:
        if "tensorflow" in str(err):
            raise ImportError("this needs TensorFlow: pip install 's2nn_keras[tf]'") from None
        raise
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
