"""What the generated C is generated for: the host build and the two cores.

One :class:`Target` per name of :data:`TARGETS`: the compiler flags of the
build, the kernels' code path there (``export/mcu/c``: Helium on the
Cortex-M55, the DSP extension on the Cortex-M4, portable C on the host),
the dense convs the generator gives HWIO weights, and the conditions on
the compiler's ACLE predefined macros under which those sources are right.

The plan of a generated ``model.c`` holds for its target only: the kernels
pick their code path from the compiler's feature macros, and the scratch
sizes and the dense HWIO layout are planned per path. ``model.h`` therefore
stops the compilation for any other target (:func:`guard`), e.g. for
sources generated for the Cortex-M55 compiled with ``-mcpu=cortex-m4``::

    #error "s2_model was generated for -mcpu=cortex-m55 -mfloat-abi=hard -mthumb (export.mcu target cortex-m55), ..."

The host build's sources refuse a Cortex-M and any compiler with Helium or
the DSP extension (an x86 or AArch64 host takes the portable path they
were planned for). A compiler cannot tell apart cores with the same ISA,
FPU and float ABI (a Cortex-M7 given ``-mfpu=fpv4-sp-d16`` defines what
the Cortex-M4 does); they run the same code path and plan.

Example::

    from export.mcu.targets import CORES, TARGETS
    TARGETS["cortex-m55"].cpu_flags     # ("-mcpu=cortex-m55", "-mfloat-abi=hard", "-mthumb")
    CORES                                # ("cortex-m4", "cortex-m55"): the targets with a board
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Tuple

__all__ = ["Target", "TARGETS", "CORES", "HOST", "target", "guard"]

HOST = "host"
_M_PROFILE = "defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M'"
_MVE = "defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)"
_DSP = "defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP"


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of the generator.

    Attributes:
      name: ``"cortex-m55"``, ``"cortex-m4"`` or ``"host"``.
      cpu_flags: the compiler flags of the core and float ABI (empty for
        the host: its own compiler's defaults).
      kernel_path: the code path of ``export/mcu/c`` there: ``"mve"``
        (Helium), ``"dsp"`` (the DSP extension) or ``"portable"``.
      dense_hwio_taps: a dense conv with at most this many taps
        (``k_h k_w in_c``: an image stem) gets HWIO weights, one vector
        multiply per tap (``S2_DENSE_HWIO``, Helium and portable paths only).
      requires: ``(C preprocessor condition, what it says)`` pairs that all
        hold when the compiler targets this target (:func:`guard`).
    """

    name: str
    cpu_flags: Tuple[str, ...]
    kernel_path: str
    dense_hwio_taps: int
    requires: Tuple[Tuple[str, str], ...]

    @property
    def described(self) -> str:
        """The target as the ``#error`` line names it."""
        if not self.cpu_flags:
            return "the host build: portable C kernels, no Helium or DSP extension"
        return " ".join(self.cpu_flags)


TARGETS: Dict[str, Target] = {
    "cortex-m4": Target(
        "cortex-m4", ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb"), "dsp", 0, (
            (_M_PROFILE, "a Cortex-M"),
            ("defined(__ARM_ARCH_7EM__)", "Armv7E-M"),
            (_DSP, "the DSP extension: the kernels' Cortex-M4 path"),
            ("!defined(__ARM_FEATURE_MVE)", "no Helium"),
            ("defined(__ARM_FP) && __ARM_FP == 4", "the single-precision FPU of -mfpu=fpv4-sp-d16"),
            ("defined(__ARM_PCS_VFP)", "-mfloat-abi=hard"))),
    "cortex-m55": Target(
        "cortex-m55", ("-mcpu=cortex-m55", "-mfloat-abi=hard", "-mthumb"), "mve", 32, (
            (_M_PROFILE, "a Cortex-M"),
            ("defined(__ARM_ARCH) && __ARM_ARCH >= 8", "Armv8.1-M"),
            (_MVE, "Helium (MVE): the kernels' Cortex-M55 path"),
            ("defined(__ARM_FP) && __ARM_FP == 14", "the Cortex-M55's FPU (half, single and double precision)"),
            ("defined(__ARM_PCS_VFP)", "-mfloat-abi=hard"))),
    HOST: Target(
        HOST, (), "portable", 0, (
            (f"!({_M_PROFILE})", "not a Cortex-M: generate for its core"),
            ("!defined(__ARM_FEATURE_MVE)", "no Helium"),
            ("!defined(__ARM_FEATURE_DSP)", "no DSP extension: the kernels' portable path"))),
}
#: The targets with a QEMU board (:data:`export.mcu.firmware.BOARDS`), in
#: the order the command lines list them.
CORES = tuple(name for name in TARGETS if name != HOST)


def target(name: str) -> Target:
    """The :class:`Target` called ``name``; ``ValueError`` naming the valid ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}") from None


def _negated(cond: str) -> str:
    if re.fullmatch(r"!?defined\(\w+\)", cond):
        return cond[1:] if cond.startswith("!") else "!" + cond
    if cond.startswith("!(") and cond.endswith(")"):
        return cond[2:-1]
    return f"!({cond})"


def guard(name: str, symbol: str = "s2_model") -> str:
    """The C preprocessor lines that stop a compilation of ``symbol``'s
    sources (generated for target ``name``) by a compiler that targets
    anything else: one ``#if`` over the negated :attr:`Target.requires`,
    an ``#error`` naming the flags the sources were generated for."""
    t = target(name)
    width = max(len(_negated(cond)) for cond, _ in t.requires) + 2
    lines = [f"/* export.mcu planned this model for {t.name}: built for another target, it computes wrong outputs */"]
    for i, (cond, what) in enumerate(t.requires):
        test = f"{'#if' if i == 0 else '   ||'} {_negated(cond)}"
        tail = " \\" if i + 1 < len(t.requires) else ""
        lines.append(f"{test:<{width + 4}} /* {what} */{tail}")
    message = (f"{symbol} was generated for {t.described} (export.mcu target {t.name}), not for the target of this "
               "compiler: build it with those flags, or generate the model for your target")
    return "\n".join(lines) + f'\n#error "{message}"\n#endif\n'
