"""Interpreter-free C for Cortex-M microcontrollers from the verified int8 export.

The int8 flatbuffer becomes one ``model.c`` / ``model.h`` (weights as
``const`` arrays, one statically planned activation buffer, one function
per model) on the project's own int8 kernels (``export/mcu/c``), TFLite's
integer arithmetic exactly; built for the host (``gcc``, the fast tests) and
as firmware for QEMU's Cortex-M3, M4, M7, M33 and M55 boards (``mps2-an385``,
``mps2-an386``, ``mps2-an500``, ``mps2-an505``, ``mps3-an547``), run there,
byte-compared with the ``tflite-micro`` interpreter and measured in retired
instructions; compiled for the Cortex-M0+ and as portable C99
(``generic``); written as a drop-in CMake and Arduino library. The source
is the exact verified ``model_int8.tflite`` of an export
(:mod:`~export.mcu.artefact`). Convolutions, depthwise convs and Dense
layers that read a spike tensor get spike-driven kernels whose work is the
inputs that fired. See docs/MCU.md.

Modules (TFLite's integer arithmetic is :mod:`export.quant`):
:mod:`~export.mcu.lower` (flatbuffer -> integer program, one lowering per
op), :mod:`~export.mcu.spike_out` (spike outputs as per-channel integer
thresholds on the accumulator, no requantization), :mod:`~export.mcu.plan` (activation buffer), :mod:`~export.mcu.generate`
(the C, one emitter per kernel family), :mod:`~export.mcu.targets` (every
Cortex-M, ``generic`` and the host: flags, code paths, the sources' target
guard), :mod:`~export.mcu.build` (host build, compile-only targets),
:mod:`~export.mcu.firmware` (boards, fitting, firmware, QEMU),
:mod:`~export.mcu.library` (CMake and Arduino folders),
:mod:`~export.mcu.artefact` (the verified ``.tflite`` and its spike
tensors), :mod:`~export.mcu.config` (:class:`McuConfig`),
:mod:`~export.mcu.run` (the whole path and the report). CLI: ``python -m export.mcu``
(:mod:`export.cli.mcu`). Importing this package is cheap: each name below
loads its module on first use.

Example::

    from export import ExportConfig, export_run, mcu
    from export.tflite.convert import convert

    conv = convert(model, "int8", representative_data)
    report = mcu.run_mcu(conv, test_images, mcu.McuConfig(cores=("cortex-m4", "cortex-m55"), num_images=100))
    report["cores"]["cortex-m55"]["instructions"]["mean"]
    mcu.spike_codes(conv)              # {tensor index: (off code, on code)} of its spike tensors
    export_run(model, ExportConfig(out_dir, x, y, reporters=(mcu.reporter(x, mcu.McuConfig(num_images=100)),)))
"""

from export.lazy import lazy_attributes

__all__ = ["run_mcu", "reporter", "spike_codes", "format_summary", "McuConfig", "McuConfigError", "CORES",
           "TARGETS", "MCU_TARGETS", "load_verified"]

_LAZY = {
    "run_mcu": "export.mcu.run",
    "reporter": "export.mcu.run",
    "spike_codes": "export.mcu.run",
    "format_summary": "export.mcu.run",
    "McuConfig": "export.mcu.config",
    "McuConfigError": "export.mcu.config",
    "CORES": "export.mcu.targets",
    "TARGETS": "export.mcu.targets",
    "MCU_TARGETS": "export.mcu.targets",
    "load_verified": "export.mcu.artefact",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
