"""Flag types shared by the three command lines (``python -m export``,
``python -m export.energy``, ``python -m export.mcu``): each parses one
flag's text or raises ``argparse.ArgumentTypeError`` with the valid values,
which the harness prints as the run's one ``error:`` line.

Example::

    p.add_argument("--cores", type=cores)      # "cortex-m4,cortex-m7" -> ["cortex-m4", "cortex-m7"]
"""

from __future__ import annotations

import argparse

from export.formats import QUANTIZATIONS, REWRITES

__all__ = ["DATASETS", "positive_int", "nonnegative_float", "positive_float", "subset", "formats",
           "accelerators", "rewrites", "optional_rewrites", "cores", "optional_cores"]

#: the built-in data sets of ``--dataset``
DATASETS = ("fashion_mnist", "cifar10", "cifar100")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text):
    value = nonnegative_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def subset(flag, valid, text):
    """Comma-separated ``text`` as a list of distinct members of ``valid``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in valid for t in items):
        raise argparse.ArgumentTypeError(
            f"{flag} takes a comma-separated subset of {','.join(valid)}, got {text!r}")
    return list(dict.fromkeys(items))


def formats(text):
    return subset("--formats", QUANTIZATIONS, text)


def accelerators(text):
    from export.tflite.vela import ACCELERATORS

    return subset("--ethos_u", ACCELERATORS, text)


def rewrites(text):
    """``--rewrites`` of ``python -m export``: ``none`` or a subset."""
    return [] if text.strip() == "none" else subset("--rewrites", REWRITES, text)


def optional_rewrites(text):
    """``--rewrites`` of ``python -m export.mcu``: empty, ``none`` or a subset."""
    return [] if text.strip() in ("", "none") else subset("--rewrites", REWRITES, text)


def cores(text):
    """``--mcu`` of ``python -m export``: a subset of the microcontroller
    targets (:data:`export.mcu.targets.MCU_TARGETS`: the cores with a QEMU
    board and the compiled-only ``cortex-m0plus`` and ``generic``)."""
    from export.mcu.targets import MCU_TARGETS

    return subset("--mcu", MCU_TARGETS, text)


def optional_cores(text):
    """``--cores`` of ``python -m export.mcu``: empty (host only) or a subset
    of :data:`export.mcu.targets.MCU_TARGETS`."""
    from export.mcu.targets import MCU_TARGETS

    return [] if not text.strip() else subset("--cores", MCU_TARGETS, text)
