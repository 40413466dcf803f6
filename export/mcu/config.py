"""What one microcontroller run does: :class:`McuConfig`.

Example::

    from export import mcu
    config = mcu.McuConfig(cores=("cortex-m55",), num_images=50, output_dir="runs/qs/mcu")
    report = mcu.run_mcu(conversion, x_test, config)
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Dict, Optional, Tuple, Union

from export.errors import InputError
from export.mcu.lower import LAYOUTS
from export.mcu.targets import CORES, DEFAULT_CORES, MCU_TARGETS

__all__ = ["McuConfig", "McuConfigError", "DEFAULT_IMAGES", "DEFAULT_MEASURE_IMAGES"]

DEFAULT_IMAGES = 200
DEFAULT_MEASURE_IMAGES = 20


class McuConfigError(InputError, ValueError):
    """An :class:`McuConfig` field out of its range (the message names it
    and what is valid)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class McuConfig:
    """How :func:`export.mcu.run.run_mcu` runs a model (keyword arguments
    only; checked when made).

    Attributes:
      cores: targets to generate for, a subset of
        :data:`export.mcu.targets.MCU_TARGETS`: the cores with a QEMU board
        (:data:`export.mcu.targets.CORES`) are built and run there, the
        others (``cortex-m0plus``, ``generic``) generated and compiled;
        ``()`` for the host check only.
      layouts: ``"auto"`` (per spike-driven layer, the layout with the
        fewest instructions measured on each core), one layout of
        :data:`export.mcu.lower.LAYOUTS` for every layer, or ``{layer index
        or name: layout}``.
      num_images: images run under QEMU and compared with TFLM.
      measure_images: images of the layout measurement (at most ``num_images``).
      host_images: images of the host check (``None``: every image given).
      output_dir: keep the generated sources and firmware there
        (``<output_dir>/<core>/<layout>``, ``host/<layout>``); ``None``: a
        temporary directory.
      model_name: in the report and the generated files' headers
        (``None``: the Keras model's name of a conversion, else ``"model"``).
      verbose: print a line per host check and core as they finish.
    """

    cores: Tuple[str, ...] = DEFAULT_CORES
    layouts: Union[str, Dict] = "auto"
    num_images: int = DEFAULT_IMAGES
    measure_images: int = DEFAULT_MEASURE_IMAGES
    host_images: Optional[int] = None
    output_dir: Optional[str] = None
    model_name: Optional[str] = None
    verbose: bool = False

    def __post_init__(self):
        cores = (self.cores,) if isinstance(self.cores, str) else tuple(self.cores)
        bad = [c for c in cores if c not in MCU_TARGETS]
        if bad:
            raise McuConfigError(f"unknown core {bad[0]!r}; valid: {', '.join(MCU_TARGETS)} (with a QEMU board: "
                                 f"{', '.join(CORES)}; or () for the host check)")
        object.__setattr__(self, "cores", tuple(dict.fromkeys(cores)))
        valid = ("auto",) + LAYOUTS
        choices = list(self.layouts.values()) if isinstance(self.layouts, dict) else [self.layouts]
        bad = [c for c in choices if c not in valid or (isinstance(self.layouts, dict) and c == "auto")]
        if bad:
            raise McuConfigError(f"unknown layout {bad[0]!r}; valid: {', '.join(valid)}, or {{layer: layout}} "
                                 f"with {', '.join(LAYOUTS)}")
        for name in ("num_images", "measure_images", "host_images"):
            value = getattr(self, name)
            if value is None and name == "host_images":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise McuConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.output_dir is not None and not isinstance(self.output_dir, (str, os.PathLike)):
            raise McuConfigError(f"output_dir must be a path or None, got {type(self.output_dir).__name__}")
        if self.model_name is not None and not isinstance(self.model_name, str):
            raise McuConfigError(f"model_name must be a string or None, got {type(self.model_name).__name__}")
