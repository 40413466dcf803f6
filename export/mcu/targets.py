"""What the generated C is generated for: every Cortex-M, a portable C99
target and the host build.

One :class:`Target` per name of :data:`TARGETS`: the compiler flags of the
build (core, FPU, float ABI), the kernels' code path there
(``export/mcu/c``: Helium on the Cortex-M55, the DSP extension's SIMD on
the Cortex-M4, M7 and M33, portable C on the Cortex-M0+, M3, ``generic``
and the host), the dense convs the generator gives HWIO weights, and the
conditions on the compiler's ACLE predefined macros under which those
sources are right.

============== ============================================================ ========
target         flags (``arm-none-eabi-gcc``)                                kernels
============== ============================================================ ========
cortex-m0plus  -mcpu=cortex-m0plus -mfloat-abi=soft -mthumb                 portable
cortex-m3      -mcpu=cortex-m3 -mfloat-abi=soft -mthumb                     portable
cortex-m4      -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard -mthumb   dsp
cortex-m7      -mcpu=cortex-m7 -mfpu=fpv5-d16 -mfloat-abi=hard -mthumb      dsp
cortex-m33     -mcpu=cortex-m33 -mfpu=fpv5-sp-d16 -mfloat-abi=hard -mthumb  dsp
cortex-m55     -mcpu=cortex-m55 -mfloat-abi=hard -mthumb                    mve
generic        any C99 compiler without Helium or the DSP extension         portable
host           the host's gcc (the tests' and run_mcu's host check)         portable
============== ============================================================ ========

The plan of a generated ``model.c`` holds for its target only: the kernels
pick their code path from the compiler's feature macros, and the scratch
sizes and the dense HWIO layout are planned per path. ``model.h`` therefore
stops the compilation for any other target (:func:`guard`), e.g. for
sources generated for the Cortex-M55 compiled with ``-mcpu=cortex-m4``::

    #error "s2_model was generated for -mcpu=cortex-m55 -mfloat-abi=hard -mthumb (export.mcu target cortex-m55), ..."

``generic`` makes no Arm assumption: it compiles wherever the kernels take
their portable path (an x86, RISC-V or AArch64 compiler, a Cortex-M0+ or
M3), and refuses a compiler with Helium or the DSP extension (generate for
that core). The host build's sources also refuse a Cortex-M. A compiler
cannot tell apart cores with the same architecture, FPU and float ABI: a
Cortex-M7 with the single-precision FPU (``-mfpu=fpv5-sp-d16``) defines what
the Cortex-M4 does (generate ``cortex-m4`` for it: same code path and plan),
a Cortex-M0 what the Cortex-M0+ does.

Example::

    from export.mcu.targets import CORES, TARGETS
    TARGETS["cortex-m55"].cpu_flags     # ("-mcpu=cortex-m55", "-mfloat-abi=hard", "-mthumb")
    CORES                                # the targets with a QEMU board (all but generic and host)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Tuple

__all__ = ["Target", "TARGETS", "CORES", "MCU_TARGETS", "DEFAULT_CORES", "HOST", "GENERIC", "target", "entry", "guard"]

HOST = "host"
GENERIC = "generic"
_M_PROFILE = "defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M'"
_MVE = "defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)"
_DSP = "defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP"
_NO_MVE = ("!defined(__ARM_FEATURE_MVE)", "no Helium")
_NO_DSP = ("!defined(__ARM_FEATURE_DSP)", "no DSP extension: the kernels' portable path")
_HARD = ("defined(__ARM_PCS_VFP)", "-mfloat-abi=hard")
_SOFT = ("!defined(__ARM_FP) && !defined(__ARM_PCS_VFP)", "no FPU, -mfloat-abi=soft")


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of the generator.

    Attributes:
      name: a key of :data:`TARGETS`.
      cpu_flags: the compiler flags of the core and float ABI (empty for
        ``generic`` and the host: the compiler's defaults).
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
        if self.name == HOST:
            return "the host build: portable C kernels, no Helium or DSP extension"
        if not self.cpu_flags:
            return "portable C99, for any compiler without Helium or the DSP extension"
        return " ".join(self.cpu_flags)

    @property
    def cortex_m(self) -> bool:
        """Built with ``arm-none-eabi-gcc`` and :attr:`cpu_flags`."""
        return bool(self.cpu_flags)


def _cortex_m(name, flags, path, arch, fpu, hwio=0, extra=()):
    """A Cortex-M target: ``arch`` and ``fpu`` are ``(condition, what)``."""
    feature = {"mve": ((_MVE, "Helium (MVE): the kernels' Cortex-M55 path"),),
               "dsp": ((_DSP, "the DSP extension: the kernels' SIMD path"), _NO_MVE),
               "portable": (_NO_DSP, _NO_MVE)}[path]
    return Target(name, tuple(flags) + ("-mthumb",), path, hwio,
                  ((_M_PROFILE, "a Cortex-M"), arch, *feature, *fpu, *extra))


TARGETS: Dict[str, Target] = {t.name: t for t in (
    _cortex_m("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mfloat-abi=soft"), "portable",
              ("defined(__ARM_ARCH_6M__)", "Armv6-M"), (_SOFT,)),
    _cortex_m("cortex-m3", ("-mcpu=cortex-m3", "-mfloat-abi=soft"), "portable",
              ("defined(__ARM_ARCH_7M__)", "Armv7-M"), (_SOFT,)),
    _cortex_m("cortex-m4", ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"), "dsp",
              ("defined(__ARM_ARCH_7EM__)", "Armv7E-M"),
              (("defined(__ARM_FP) && __ARM_FP == 4", "the single-precision FPU of -mfpu=fpv4-sp-d16"), _HARD)),
    _cortex_m("cortex-m7", ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"), "dsp",
              ("defined(__ARM_ARCH_7EM__)", "Armv7E-M"),
              (("defined(__ARM_FP) && __ARM_FP == 14", "the double-precision FPU of -mfpu=fpv5-d16"), _HARD)),
    _cortex_m("cortex-m33", ("-mcpu=cortex-m33", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"), "dsp",
              ("defined(__ARM_ARCH_8M_MAIN__)", "Armv8-M Mainline"),
              (("defined(__ARM_FP) && __ARM_FP == 4", "the single-precision FPU of -mfpu=fpv5-sp-d16"), _HARD)),
    _cortex_m("cortex-m55", ("-mcpu=cortex-m55", "-mfloat-abi=hard"), "mve",
              ("defined(__ARM_ARCH) && __ARM_ARCH >= 8", "Armv8.1-M"),
              (("defined(__ARM_FP) && __ARM_FP == 14", "the Cortex-M55's FPU (half, single and double precision)"),
               _HARD), hwio=32),
    Target(GENERIC, (), "portable", 0, (_NO_MVE, _NO_DSP)),
    Target(HOST, (), "portable", 0, ((f"!({_M_PROFILE})", "not a Cortex-M: generate for its core"), _NO_MVE,
                                      _NO_DSP)),
)}
#: The targets with a QEMU board (:data:`export.mcu.firmware.BOARDS`), in
#: the order the command lines list them. The Cortex-M0+'s is a stand-in
#: (the microbit's Cortex-M0, same instruction set, 16 KiB RAM): a model
#: that does not fit it is compiled and linked, not run.
CORES = ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
#: What ``--mcu`` / ``--cores`` / :class:`export.mcu.config.McuConfig` take:
#: the cores run on their board, ``generic`` is compiled (and run by the
#: host compiler).
MCU_TARGETS = tuple(name for name in TARGETS if name != HOST)
#: ``McuConfig().cores``: the two cores of the published figures.
DEFAULT_CORES = ("cortex-m4", "cortex-m55")


def entry(table, name: str, refusal: str):
    """``table[name]``, or ``ValueError(refusal)`` naming what is valid."""
    if name not in table:
        raise ValueError(refusal)
    return table[name]


def target(name: str) -> Target:
    """The :class:`Target` called ``name``; ``ValueError`` naming the valid ones."""
    return entry(TARGETS, name, f"unknown target {name!r}; valid: {', '.join(TARGETS)}")


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
    remedy = ("build it with those flags, or generate the model for your target" if t.cortex_m
              else "generate the model for your target (its Cortex-M core)")
    message = (f"{symbol} was generated for {t.described} (export.mcu target {t.name}), not for the target of this "
               f"compiler: {remedy}")
    return "\n".join(lines) + f'\n#error "{message}"\n#endif\n'
