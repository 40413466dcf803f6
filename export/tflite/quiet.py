"""The export's one output silencer: keeps TensorFlow's, the converter's
and the runtimes' chatter off the console, never a warning or an error.

Where the chatter comes from, and what takes it away:

* TF 2.21 prints start-up lines ("oneDNN custom operations are on",
  "Could not find cuda drivers", "failed call to cuInit") on the C-level
  stderr before absl logging is initialised, whatever
  ``TF_CPP_MIN_LOG_LEVEL`` says: :func:`import_tensorflow_quietly` imports
  Keras and TensorFlow with fd 2 silenced (:func:`silenced_stderr`).
* The converter's C++ ``fully_quantize: ...`` line and LiteRT's ``INFO:
  Created TensorFlow Lite XNNPACK delegate`` go to the C-level stderr:
  :func:`filtered_stderr` captures fd 2 and writes back every line except
  those (:data:`CHATTER`).
* TensorFlow's SavedModel export inside ``TFLiteConverter.convert()`` logs
  INFO records (``signature_serialization.py``, ``functional_saver.py``,
  ...) through the ``tensorflow`` / ``absl`` loggers; absl re-applies its
  ``--verbosity`` flag to the ``absl`` logger's *level* whenever its flags
  are touched (the SavedModel code does, mid-conversion), so
  :func:`quiet_loggers` drops records below WARNING with a logger *filter*.
  :func:`quiet_conversion` puts these together (plus the Keras exporter's
  stdout and the converter's "Statistics for quantized inputs" warning).
* The rate counters' one-off traces trigger TF's "expensive retracing"
  warning: :func:`retracing_warnings_silenced`.

Example::

    from export.tflite.quiet import import_tensorflow_quietly, quiet_conversion
    import_tensorflow_quietly()   # keras and tensorflow are now imported
    with quiet_conversion():
        flat = converter.convert()
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings

__all__ = ["CHATTER", "import_tensorflow_quietly", "silenced_stderr", "filtered_stderr", "quiet_loggers",
           "quiet_conversion", "retracing_warnings_silenced"]

#: C-level stderr lines of TensorFlow, the converter and LiteRT that are
#: information, not warnings: dropped by :func:`filtered_stderr`.
CHATTER = (re.compile(r"^fully_quantize: "), re.compile(r"^INFO: "), re.compile(r"^I\d{4} "),
           re.compile(r"^WARNING: All log messages before absl::InitializeLog"),
           # a CPU-only host, said at device start-up (an E-level line, not an error of the export)
           re.compile(r"failed call to cuInit"), re.compile(r"Could not find cuda drivers"),
           re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"))

_RETRACING = "triggered tf.function retracing"


@contextlib.contextmanager
def _fd2_redirected(target_fd):
    """fd 2 points at ``target_fd`` inside the block (Python's ``sys.stderr``
    writes there too: it is a file object over fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(target_fd, 2)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def silenced_stderr():
    """Discards everything written to the C-level stderr (fd 2) inside the
    block: TFLite Micro prints allocation failures there while the arena is
    bisected, TensorFlow its device start-up lines."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with _fd2_redirected(null):
            yield
    finally:
        os.close(null)


@contextlib.contextmanager
def filtered_stderr(drop=CHATTER, keep: bool = True):
    """Captures the C-level stderr (fd 2) inside the block and, after it,
    writes back every line that matches none of ``drop`` -- warnings and
    errors still show, in order, once the block ends. ``keep=False``
    writes nothing back (the caller reports failure in its own words).

    The captured text is also available as the value of the ``with``
    statement (a list that receives the kept lines at exit)."""
    kept = []
    with tempfile.TemporaryFile() as tmp:
        try:
            with _fd2_redirected(tmp.fileno()):
                yield kept
        finally:
            tmp.seek(0)
            kept.extend(line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not any(p.search(line) for p in drop))
            if keep and kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _BelowWarning(logging.Filter):
    def filter(self, record):
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet_loggers(*names):
    """Drops records below WARNING from the named loggers inside the block.
    A filter, not a level: absl re-applies its ``--verbosity`` flag to the
    ``absl`` logger's level whenever its flags are touched, which undoes
    ``setLevel``."""
    loggers = [logging.getLogger(name) for name in names]
    quiet = _BelowWarning()
    try:
        for logger in loggers:
            logger.addFilter(quiet)
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@contextlib.contextmanager
def quiet_conversion():
    """Keeps a conversion's chatter off the console: the Keras exporter
    prints "Saved artifact at ..." and the signature to stdout, TensorFlow's
    SavedModel code logs INFO lines through the ``tensorflow``/``absl``
    loggers, the converter warns "Statistics for quantized inputs were
    expected", and its C++ code writes "fully_quantize: ..." to stderr.
    Warnings and errors (of the loggers and on stderr) still show."""
    with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("tensorflow", "absl"), \
            warnings.catch_warnings(), filtered_stderr():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        yield


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

    Python exceptions still propagate (raised after stderr is restored);
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
    with silenced_stderr() if level >= 1 else contextlib.nullcontext():
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except ImportError as err:
            if "tensorflow" in str(err):
                raise ImportError("this needs TensorFlow: pip install 's2nn_keras[tf]'") from None
            raise
