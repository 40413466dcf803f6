"""export.tflite.quiet.retracing_warnings_silenced: drops only TF's retracing warning."""

import logging

from export.tflite.quiet import retracing_warnings_silenced


def test_drops_only_the_retracing_warning_and_only_inside(caplog):
    logger = logging.getLogger("tensorflow")
    retrace = ("5 out of the last 84 calls to <function f> triggered tf.function retracing. "
               "Tracing is expensive ...")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        with retracing_warnings_silenced():
            logger.warning(retrace)
            logger.warning("something else went wrong")
        logger.warning(retrace)
    messages = [r.getMessage() for r in caplog.records if r.name == "tensorflow"]
    assert messages == ["something else went wrong", retrace]
    assert not logger.filters


# --------------------------------------------------------------------------
# The C-level stderr (fd 2): what the CLIs and the converter filter
# --------------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from export.tflite.quiet import CHATTER, filtered_stderr, quiet_conversion, quiet_loggers, silenced_stderr  # noqa: E402

_C_WRITER = r"""
import os, sys
sys.path.insert(0, {repo!r})
from export.tflite.quiet import filtered_stderr, silenced_stderr
def c_level(text):  # what C++ code does: write(2, ...), past Python's sys.stderr
    os.write(2, text.encode())
with filtered_stderr(keep={keep}) as kept:
    c_level("I0000 00:00:17 port.cc:153] oneDNN custom operations are on.\n")
    c_level("fully_quantize: 0, inference_type: 6\n")
    c_level("E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
    c_level("W0000 something the user should see\n")
    print("python warning", file=sys.stderr)
with silenced_stderr():
    c_level("TFLM: arena too small\n")
print("kept:", len(kept))
"""

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("keep", [True, False])
def test_filtered_stderr_drops_only_chatter_and_silenced_stderr_drops_all(keep):
    proc = subprocess.run([sys.executable, "-c", _C_WRITER.format(repo=REPO, keep=keep)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "kept: 2"  # the warning and the Python line, in order
    expected = "W0000 something the user should see\npython warning\n" if keep else ""
    assert proc.stderr == expected


def test_chatter_patterns_are_information_lines_only():
    assert any(p.search("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") for p in CHATTER)
    for line in ("W0000 00:00 delegate.cc] something failed", "ERROR: tensor too large", "Traceback (most recent"):
        assert not any(p.search(line) for p in CHATTER), line


def test_quiet_loggers_filter_below_warning_even_when_the_level_is_reset(caplog):
    logger = logging.getLogger("absl")
    with caplog.at_level(logging.DEBUG, logger="absl"):
        with quiet_loggers("absl"):
            logger.setLevel(logging.DEBUG)  # what absl does to its logger mid-conversion
            logger.info("Function `serving_default` contains input name(s)")
            logger.warning("a warning")
        logger.info("after")
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["a warning", "after"]
    assert not logger.filters


def test_quiet_conversion_swallows_stdout_and_the_statistics_warning(capsys):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_conversion():
            print("Saved artifact at '/tmp/x'")
            warnings.warn("Statistics for quantized inputs were expected, but not specified")
            warnings.warn("another warning")
    assert capsys.readouterr().out == ""
    assert [str(w.message) for w in seen] == ["another warning"]
