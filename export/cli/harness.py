"""What the export's command lines share: how a run ends.

``python -m export`` and ``python -m export.energy`` run their work through
:func:`run`, so that every run on any input ends in exactly one of:

* the work done: exit status 0, its output on stdout (warnings that
  TensorFlow or a runtime printed on stderr are passed on; their INFO
  chatter is not, :data:`export.tflite.quiet.CHATTER`);
* one line ``<prog>: error: <what is wrong>`` on stderr, nothing else, and

  - exit status 2 for bad input: a flag, a missing or unreadable model or
    data file, data that does not fit the model, a model the export cannot
    write exactly (the line names the layer and the flag that works);
  - exit status 3 when the export was made but its own checks failed
    (:mod:`export.checks`; the line names each failed check);
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

__all__ = ["CLIError", "Parser", "run", "one_line", "add_debug_flag", "EXIT_USAGE", "EXIT_CHECKS",
           "EXIT_INTERNAL", "EXPECTED_ERRORS"]

EXIT_INTERNAL, EXIT_USAGE, EXIT_CHECKS, EXIT_INTERRUPTED = 1, 2, 3, 130

#: Exceptions that are the input's fault (exit status 2), by qualified
#: name: matched without importing their (TensorFlow-heavy) modules.
EXPECTED_ERRORS = frozenset({
    "export.cli.harness.CLIError", "export.loader.ModelFileError", "export.cli.data.DataFileError",
    "export.pipeline.ExportConfigError", "export.transform.fold.FoldError", "export.transform.edge.EdgeError",
    "export.transform.qat.QATError", "export.tflite.vela.VelaError", "s2nn_keras.datasets.DatasetNotFoundError",
    "export.mcu.build.ToolError", "export.mcu.lower.UnsupportedModelError",
    "builtins.OSError",  # the machine's: a folder that cannot be written, a full disk
})
_CHECK_ERROR = "export.checks.ExportCheckError"

#: Python-API advice in library messages, as the flag that does the same.
_AS_FLAGS = ((re.compile(r"""\bneuron\s*=\s*['"]compare['"]"""), "--neuron compare"),
             (re.compile(r"""\bneuron\s*=\s*['"]saturate['"]"""), "--neuron saturate"),
             (re.compile(r"\bthreshold_in_bias\s*=\s*False\b"), "--no_threshold_in_bias"),
             (re.compile(r"\bmerge_shortcuts\s*=\s*True\b"), "--merge_shortcuts"),
             (re.compile(r"\bspike_checks\s*=\s*False\b"), "--no_spike_checks"),
             (re.compile(r"\ballow_failed_checks\s*=\s*True\b"), "--allow_failed_checks"))


class CLIError(Exception):
    """Bad command-line input; the message is the whole error line."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`CLIError`
    (one line, exit status 2) instead of printing the usage block."""

    def error(self, message):
        raise CLIError(message)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on failure, also print the captured stderr and the Python traceback")


def _qualified_names(err):
    return {f"{k.__module__}.{k.__qualname__}" for k in type(err).__mro__}


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
            names = _qualified_names(err)
            if names & EXPECTED_ERRORS:
                failure = (EXIT_USAGE, one_line(err), traceback.format_exc())
            elif _CHECK_ERROR in names:
                failure = (EXIT_CHECKS, one_line(err), traceback.format_exc())
            else:
                failure = (EXIT_INTERNAL, _unexpected_line(err), traceback.format_exc())
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
