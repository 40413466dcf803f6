"""Interpreter-free C for Cortex-M microcontrollers from the verified int8 export.

See docs/MCU.md. Modules: :mod:`~export.mcu.quant` (TFLite's integer
arithmetic), :mod:`~export.mcu.lower` (flatbuffer -> integer program),
:mod:`~export.mcu.plan` (static activation buffer), :mod:`~export.mcu.generate`
(``model.c``/``model.h``), :mod:`~export.mcu.build` (host and firmware
builds).
"""
