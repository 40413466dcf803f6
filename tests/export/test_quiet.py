"""export.quiet.retracing_warnings_silenced: drops only TF's retracing warning."""

import logging

from export.quiet import retracing_warnings_silenced


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
