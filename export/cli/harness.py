"""What the export's command lines share: how a run ends.

``python -m export`` and ``python -m export.energy`` run their work through
:func:`run`, so that every run on any input ends in exactly one of:

* the work done: exit status 0, its output on stdout (warnings that
  TensorFlow or a runtime printed on stderr are passed on; their INFO
  chatter is not, :data:`export.tflite.quiet.CHATTER`);
* one line ``<prog>: error: <what is wrong>`` on stderr, nothing else, and

  - exit status 2 for bad input (:class:`export.errors.InputError`, a
    missing data set, an ``OSError``): a flag, a missing or unreadable
    model or data file, data that does not fit the model, a model the
    export cannot write exactly (the line names the layer and the flag
    that works);
  - exit status 3 when the export was made but its own checks failed
    (:class:`export.errors.ChecksFailedError`, :mod:`export.checks`; the
    line names each failed check);
  - exit status 1 for anything unexpected (a bug: the line names the
    exception; ``--debug`` shows the traceback);
  - 130 when interrupted.

While the work runs, the C-level and Python stderr is captured
(:func:`export.tflite.quiet.filtered_stderr`): on success the captured warnings
are written back, on failure they are dropped so the error line stands
alone (``--debug`` writes them, and the traceback, before it). Messages
are never cut: a multi-line message becomes one line, whole.

Example::

    from export.cli import harness as cli

    def body(args):
        ...                      # raise cli.CLIError("--x must be ...") on bad input
        return 0

    sys.exit(cli.run("python -m mytool", cli.Parser(prog="python -m mytool"), body))
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from typing import Callable, Optional, Sequence

from export.errors import ChecksFailedError, InputError

__all__ = ["CLIError", "Parser", "run", "one_line", "add_debug_flag", "exit_status", "EXIT_USAGE", "EXIT_CHECKS",
           "EXIT_INTERNAL"]

EXIT_INTERNAL, EXIT_USAGE, EXIT_CHECKS, EXIT_INTERRUPTED = 1, 2, 3, 130

#: Errors that are not the export's own (:mod:`export.errors`) but still
#: the input's fault (exit status 2): a data set that is not there
#: (``s2nn_keras.datasets.DatasetNotFoundError``, looked up in
#: ``sys.modules`` -- raised, it was imported) and the machine's ``OSError``
#: (a folder that cannot be written, a full disk).
_FOREIGN_INPUT_ERRORS = (("s2nn_keras.datasets", "DatasetNotFoundError"),)

#: Python-API advice in library messages, as the flag that does the same.
_AS_FLAGS = ((re.compile(r"""\bneuron\s*=\s*['"]compare['"]"""), "--neuron compare"),
             (re.compile(r"""\bneuron\s*=\s*['"]saturate['"]"""), "--neuron saturate"),
             (re.compile(r"\bthreshold_in_bias\s*=\s*False\b"), "--no_threshold_in_bias"),
             (re.compile(r"\bmerge_shortcuts\s*=\s*True\b"), "--merge_shortcuts"),
             (re.compile(r"\bspike_checks\s*=\s*False\b"), "--no_spike_checks"),
             (re.compile(r"\ballow_failed_checks\s*=\s*True\b"), "--allow_failed_checks"),
             (re.compile(r"\bqat\s*=\s*QATConfig\(\s*epochs\s*=\s*([0-9.]+)\s*\)"), r"--qat_epochs \1"))


class CLIError(InputError):
    """Bad command-line input; the message is the whole error line."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`CLIError`
    (one line, exit status 2) instead of printing the usage block."""

    def error(self, message):
        raise CLIError(message)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on failure, also print the captured stderr and the Python traceback")


def _is_input_error(err: BaseException) -> bool:
    if isinstance(err, (InputError, OSError)):
        return True
    for module, name in _FOREIGN_INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def exit_status(err: BaseException) -> int:
    """The exit status of a run that raised ``err``: :data:`EXIT_USAGE` (2)
    for bad input (:class:`export.errors.InputError`, a missing data set,
    an ``OSError``), :data:`EXIT_CHECKS` (3) when the export's own checks
    failed (:class:`export.errors.ChecksFailedError`), else
    :data:`EXIT_INTERNAL` (1, a bug).

    Example::

        exit_status(CLIError("--x must be > 0"))   # 2
    """
    if _is_input_error(err):
        return EXIT_USAGE
    if isinstance(err, ChecksFailedError):
        return EXIT_CHECKS
    return EXIT_INTERNAL


def one_line(err: BaseException, flags: bool = True) -> str:
    """``err``'s message as one whole line (lines joined, whitespace
    collapsed; the type name when it has none), with Python-API advice
    written as the command-line flag (``flags``)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    text = re.sub(r"\s+", " ", text).strip() or type(err).__name__
    if flags:
        for pattern, flag in _AS_FLAGS:
            text = pattern.sub(flag, text)
    return text


def _unexpected_line(err):
    from export.loader import first_line

    return (f"unexpected {type(err).__name__}: {first_line(err)} (a bug in the export, please report it; "
            "--debug shows the traceback)")


def run(prog: str, parser: Callable[[], argparse.ArgumentParser], body: Callable[[argparse.Namespace], int],
        argv: Optional[Sequence[str]] = None) -> int:
    """Builds the parser (``parser()``), parses ``argv`` and runs
    ``body(args)`` under the rules of the module docstring; returns the exit
    status (``body`` returns 0 on success)."""
    from export.tflite.quiet import filtered_stderr

    try:
        args = parser().parse_args(argv)
    except (CLIError, ImportError) as err:  # ImportError: a missing extra (the message names it)
        sys.stderr.write(f"{prog}: error: {one_line(err, flags=False)}\n")
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    failure = None  # (exit status, line, traceback text)
    with filtered_stderr(keep=False) as captured:
        try:
            status = body(args)
        except KeyboardInterrupt:
            failure = (EXIT_INTERRUPTED, "interrupted", traceback.format_exc())
        except Exception as err:  # every way out is one line
            code = exit_status(err)
            line = _unexpected_line(err) if code == EXIT_INTERNAL else one_line(err)
            failure = (code, line, traceback.format_exc())
    sys.stdout.flush()
    if failure is None:
        if captured:
            sys.stderr.write("".join(captured))
        return int(status or 0)
    code, line, trace = failure
    if debug:
        sys.stderr.write("".join(captured) + trace)
    sys.stderr.write(f"{prog}: error: {line}\n")
    sys.stderr.flush()
    return code
