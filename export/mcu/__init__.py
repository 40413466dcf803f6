"""Interpreter-free C for Cortex-M microcontrollers from the verified int8 export.

The int8 flatbuffer becomes one ``model.c`` / ``model.h`` (weights as
``const`` arrays, one statically planned activation buffer, one function
per model) on the project's own int8 kernels (``export/mcu/c``), TFLite's
integer arithmetic exactly; built for the host (``gcc``, the fast tests) and
as firmware for QEMU's Cortex-M55 (``mps3-an547``, Helium) and Cortex-M4
(``mps2-an386``) boards, run there, byte-compared with the ``tflite-micro``
interpreter and measured in retired instructions. Convolutions, depthwise
convs and Dense layers that read a spike tensor get spike-driven kernels
whose work is the inputs that fired. See docs/MCU.md.

Modules (TFLite's integer arithmetic is :mod:`export.quant`):
:mod:`~export.mcu.lower` (flatbuffer -> integer program),
:mod:`~export.mcu.plan` (activation buffer), :mod:`~export.mcu.generate`
(the C), :mod:`~export.mcu.build` (host build), :mod:`~export.mcu.firmware`
(boards, firmware, QEMU), :mod:`~export.mcu.run` (the whole path and the
report). CLI: ``python -m export.mcu``.

Example::

    from export import mcu
    from export.tflite.convert import convert

    conv = convert(model, "int8", representative_data)
    report = mcu.run_mcu(conv.flatbuffer, test_images, ("cortex-m4", "cortex-m55"), mcu.spike_levels(conv))
    report["cores"]["cortex-m55"]["instructions"]["mean"]
    export_run(model, out_dir, x, y, reporters=[mcu.reporter(("cortex-m4", "cortex-m55"), images=x)])
"""

__all__ = ["run_mcu", "reporter", "spike_levels", "format_summary", "CORES"]

CORES = ("cortex-m4", "cortex-m55")


def run_mcu(*args, **kwargs):
    """:func:`export.mcu.run.run_mcu`."""
    from export.mcu.run import run_mcu as _run

    return _run(*args, **kwargs)


def reporter(*args, **kwargs):
    """:func:`export.mcu.run.reporter` (an ``export_run`` FormatReporter)."""
    from export.mcu.run import reporter as _reporter

    return _reporter(*args, **kwargs)


def spike_levels(conversion):
    """:func:`export.mcu.run.spike_levels`."""
    from export.mcu.run import spike_levels as _levels

    return _levels(conversion)


def format_summary(report, indent="  "):
    """:func:`export.mcu.run.format_summary`."""
    from export.mcu.run import format_summary as _summary

    return _summary(report, indent)
