"""Cortex-M firmware of the generated C, run on QEMU's Arm boards.

Boards (:data:`BOARDS`, keyed by core; memory maps from QEMU's
``hw/arm/mps2.c`` and ``mps2-tz.c``):

=============  ==============  =========  ===========================================
core           QEMU machine    SYSCLK     memory used (linker script)
=============  ==============  =========  ===========================================
cortex-m0plus  ``microbit``    16 MHz     a stand-in: nRF51822's Cortex-M0 (Armv6-M,
                                          the M0+'s instruction set); flash 256 KiB,
                                          SRAM 16 KiB, 4 KiB stack (``microbit.ld``)
cortex-m3      ``mps2-an385``  25 MHz     SSRAM1 4 MiB at 0: code and constants,
cortex-m4      ``mps2-an386``  25 MHz     SSRAM2/3 4 MiB at 0x20000000: data, bss,
cortex-m7      ``mps2-an500``  25 MHz     stack (``mps2.ld``, one map for the three)
cortex-m33     ``mps2-an505``  20 MHz     secure state from reset: SSRAM-0 4 MiB at
                                          0x10000000 code and constants, SSRAM-1/2
                                          4 MiB at 0x38000000 data/bss/stack
cortex-m55     ``mps3-an547``  32 MHz     ITCM 512 KiB code, SRAM 2 MiB constants,
                                          DTCM 512 KiB data/bss/stack (Helium/MVE)
=============  ==============  =========  ===========================================

QEMU 7.2 models no Cortex-M0+ machine; the microbit's Cortex-M0 runs the
same instructions, but has 16 KiB of RAM: a model that does not fit it is
linked for its sizes only (:func:`sizing_board`), not refused. ``generic``
has no board (:func:`export.mcu.build.compile_target`).

:func:`build_firmware` checks that the model fits the board
(:func:`check_fits`: its constants and its activation buffer plus the
stack, before building; the linker's own overflow ends in the same one
line, :class:`DoesNotFitError`), writes the sources, the project's start-up
code, semihosting, harness and linker scripts (``export/mcu/boards``) and
one ``arm-none-eabi-gcc`` command line (saved as ``build.sh``), links, and
reads flash and RAM from the map file. :func:`run_qemu` runs the ELF in
``qemu-system-arm -M <machine> -icount shift=0`` with the images passed in
over semihosting and returns the outputs, per-image and per-layer retired
instructions, the layers' fired-input counts and the stack's high-water
mark (the harness paints the stack at reset).

Counting: with ``-icount shift=0`` QEMU advances virtual time by exactly
1 ns per retired instruction; SysTick, clocked by the board's SYSCLK, then
ticks once per 1e9 / SYSCLK instructions (62.5 on the microbit, 40 on the
MPS2 boards, 50 on the AN505, 31.25 on the AN547). The harness measures the ratio on a loop of a
known 2,000,000 instructions at start-up (``calibration``) and every
figure is ``ticks x ratio``: exact to one tick per measured interval, and
the same on every run (checked by the tests).

The compiler flags of each core are its target's
(:data:`export.mcu.targets.TARGETS`); code generated for another target
is refused (:func:`build_firmware`, and ``model.h``'s ``#error``).

Example::

    from export.mcu.firmware import build_firmware, run_qemu
    fw = build_firmware(generate(program, "spike_list", target="cortex-m55"), "cortex-m55", "build/m55")
    run = run_qemu(fw, quantize_inputs(flatbuffer, images), len(program.layers), output_bytes=10)
    run.instructions.mean(), run.outputs, fw.flash_bytes
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from export.errors import InputError
from export.mcu.build import BOARD_DIR, C_FLAGS, KERNEL_SOURCES, ToolError, run_tool, write_sources
from export.mcu.targets import CORES, TARGETS, entry

__all__ = ["Board", "BOARDS", "CORES", "Firmware", "QemuRun", "DoesNotFitError", "firmware_command", "build_firmware",
           "run_qemu", "check_fits", "fits", "sizing_board", "read_map", "memory_usage", "available", "missing_tools",
           "STACK_BYTES"]

KIB, MIB = 1024, 1024 * 1024
#: the stack the firmware reserves (the harness measures what it uses)
STACK_BYTES = 16384


class DoesNotFitError(InputError, ValueError):
    """The model does not fit a board's flash or RAM (one line: what it
    needs and what the board has)."""


@dataclasses.dataclass(frozen=True)
class Board:
    """A QEMU machine for a core.

    Attributes:
      machine: QEMU's ``-M`` (``""``: a memory map to link with, not run:
        :func:`sizing_board`).
      flash: ``((linker region, bytes), ...)`` holding code and constants.
      ram: ``(linker region, bytes)`` of data, bss and the stack.
      const_region: the region of ``flash`` the model's constants go to.
      stack_bytes: the stack the firmware reserves.
      stand_in: for a board whose core is not the target's but runs its
        code (the microbit's Cortex-M0 for the Cortex-M0+), what it is; a
        model that does not fit it is compiled and linked, not refused.
    """

    core: str
    machine: str
    linker_script: str
    sysclk_hz: int
    flash: Tuple[Tuple[str, int], ...]
    ram: Tuple[str, int]
    const_region: str
    stack_bytes: int = STACK_BYTES
    stand_in: str = ""

    @property
    def cpu_flags(self) -> tuple:
        """The core's compiler flags (:data:`export.mcu.targets.TARGETS`)."""
        return TARGETS[self.core].cpu_flags

    @property
    def flash_limit(self) -> int:
        """Bytes of the regions holding code and constants."""
        return sum(size for _, size in self.flash)

    @property
    def const_limit(self) -> int:
        """Bytes of the region holding the constants."""
        return dict(self.flash)[self.const_region]

    @property
    def ram_limit(self) -> int:
        """Bytes of the data/bss/stack region."""
        return self.ram[1]

    @property
    def instructions_per_tick(self) -> float:
        """What the calibration must measure under ``-icount shift=0``."""
        return 1e9 / self.sysclk_hz


def _mps2(core, machine):
    return Board(core, machine, "mps2.ld", 25_000_000, (("SSRAM1", 4 * MIB),), ("SSRAM23", 4 * MIB), "SSRAM1")


#: One board per core of :data:`export.mcu.targets.CORES`.
BOARDS: Dict[str, Board] = {b.core: b for b in (
    Board("cortex-m0plus", "microbit", "microbit.ld", 16_000_000, (("FLASH", 256 * KIB),), ("SRAM", 16 * KIB),
          "FLASH", stack_bytes=4096, stand_in="a Cortex-M0 (nRF51822), Armv6-M: the Cortex-M0+'s instruction set "
                                           "(QEMU 7.2 has no Cortex-M0+ machine); 256 KiB flash, 16 KiB RAM"),
    _mps2("cortex-m3", "mps2-an385"),
    _mps2("cortex-m4", "mps2-an386"),
    _mps2("cortex-m7", "mps2-an500"),
    Board("cortex-m33", "mps2-an505", "mps2_an505.ld", 20_000_000, (("SSRAM0_S", 4 * MIB),), ("SSRAM12_S", 4 * MIB),
          "SSRAM0_S"),
    Board("cortex-m55", "mps3-an547", "mps3_an547.ld", 32_000_000, (("ITCM", 512 * KIB), ("SRAM", 2 * MIB)),
          ("DTCM", 512 * KIB), "SRAM"),
)}
assert tuple(BOARDS) == CORES
#: the start-up code, semihosting, harness and linker scripts every firmware directory gets
BOARD_SOURCES = tuple(sorted(n for n in os.listdir(BOARD_DIR) if n.endswith((".c", ".h", ".ld"))))
CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
OPT_FLAGS = ("-O2",)


def missing_tools(cores=None) -> List[str]:
    """The tools ``cores`` need (all targets: ``None``) that are not on PATH:
    ``arm-none-eabi-gcc`` for a Cortex-M, ``qemu-system-arm`` for a core
    with a board."""
    cores = CORES if cores is None else tuple(cores)
    needed = ([CC] if any(TARGETS[c].cortex_m for c in cores) else []) + ([QEMU] if set(cores) & set(BOARDS) else [])
    return [t for t in needed if shutil.which(t) is None]


def available() -> bool:
    return not missing_tools()


def board(core: str) -> Board:
    return entry(BOARDS, core, f"no QEMU board for {core!r}; the cores with one: {', '.join(CORES)}")


def sizing_board(core: str) -> Board:
    """A memory map to link ``core``'s firmware with for its flash and RAM
    figures only, not to run (``machine`` empty): the MPS2 boards' 4 MiB
    + 4 MiB (``mps2.ld``)."""
    if not TARGETS[core].cortex_m:
        raise ValueError(f"{core!r} is not a Cortex-M target")
    return Board(core, "", "mps2.ld", 0, (("SSRAM1", 4 * MIB),), ("SSRAM23", 4 * MIB), "SSRAM1")


def firmware_command(core: str, stack_bytes: Optional[int] = None, output: str = "firmware.elf",
                     board_: Optional[Board] = None) -> List[str]:
    """The one ``arm-none-eabi-gcc`` command line (run in the build
    directory) that compiles and links the firmware of ``core`` (for its
    board, or ``board_``; the board's stack unless ``stack_bytes``)."""
    b = board_ or board(core)
    stack = b.stack_bytes if stack_bytes is None else int(stack_bytes)
    return [CC, *TARGETS[core].cpu_flags, *OPT_FLAGS, *C_FLAGS, "-ffunction-sections", "-fdata-sections",
            "-DS2_PROFILE", "-I.", "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
            f"-Wl,--defsym=__stack_size__={stack}", "-Wl,-Map=firmware.map", "-Wl,--print-memory-usage",
            "-L.", "-T", b.linker_script, "-o", output, "model.c", *KERNEL_SOURCES, "board_main.c", "startup.c",
            "semihost.c"]


def _does_not_fit(b: Board, flash: int, flash_limit: int, ram: int, how: str) -> DoesNotFitError:
    return DoesNotFitError(f"the model does not fit {b.machine or b.linker_script} ({b.core}): it needs {flash:,} B "
                           f"of flash and {ram:,} B of RAM ({how}); the board has {flash_limit:,} B and "
                           f"{b.ram_limit:,} B")


def check_fits(code, core: str, stack_bytes: Optional[int] = None, board_: Optional[Board] = None) -> None:
    """Refuses, before building, a model whose constants do not fit the
    board's constant region or whose activation buffer, fired-input
    counters and stack do not fit its RAM (:class:`DoesNotFitError`:
    both figures, needed and available, in one line)."""
    b = board_ or board(core)
    stack_bytes = b.stack_bytes if stack_bytes is None else int(stack_bytes)
    flash = int(code.const_bytes)
    layers = len(code.layouts)
    ram = int(code.arena_bytes) + 4 * layers + int(stack_bytes)
    if flash > b.const_limit or ram > b.ram_limit:
        raise _does_not_fit(b, flash, b.const_limit, ram, f"flash: its constants, in {b.const_region}; RAM: "
                            f"activation buffer {code.arena_bytes:,} B + stack {int(stack_bytes):,} B")


def fits(code, core: str) -> bool:
    """:func:`check_fits` as a yes or no."""
    try:
        check_fits(code, core)
    except DoesNotFitError:
        return False
    return True


_USAGE = re.compile(r"^\s*(\w+):\s+(\d+)\s*(B|KB|MB|GB)\s+(\d+)\s*(B|KB|MB|GB)\s+[\d.]+%", re.M)
_UNITS = {"B": 1, "KB": KIB, "MB": MIB, "GB": 1024 * MIB}


def memory_usage(linker_output: str) -> Dict[str, Tuple[int, int]]:
    """``{region: (used bytes, region bytes)}`` from the table of ``ld
    --print-memory-usage`` (printed on success and on overflow)."""
    return {m.group(1): (int(m.group(2)) * _UNITS[m.group(3)], int(m.group(4)) * _UNITS[m.group(5)])
            for m in _USAGE.finditer(linker_output)}


def _linker_overflow(b: Board):
    """``run_tool``'s ``explain``: the linker's region overflow as :class:`DoesNotFitError`."""

    def explain(output: str):
        if "overflowed by" not in output and "will not fit in region" not in output:
            return None
        usage = memory_usage(output)
        flash = sum(usage.get(name, (0, 0))[0] for name, _ in b.flash)
        ram = usage.get(b.ram[0], (0, 0))[0]
        return _does_not_fit(b, flash, b.flash_limit, ram, "the linker's memory usage, stack included")

    return explain


@dataclasses.dataclass
class Firmware:
    """A linked ELF: ``sections`` ``{name: bytes}`` from the map file,
    ``flash_bytes`` (.text + .ARM.exidx + .rodata + the .data image),
    ``static_ram_bytes`` (.data + .bss), ``breakdown`` (``{category:
    {"flash", "ram"}}``, :func:`read_map`), ``command`` (what built it)."""

    core: str
    directory: str
    elf: str
    sections: Dict[str, int]
    flash_bytes: int
    static_ram_bytes: int
    breakdown: Dict[str, Dict[str, int]]
    command: List[str]
    stack_reserved: int
    machine: str = ""     # the QEMU machine it runs on ("": linked for its sizes only)


_SECTION = re.compile(r"^(\.[\w.]+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)")
_INPUT = re.compile(r"^ (\.[\w.]+|COMMON)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S+)$")
_INPUT_LONG_NAME = re.compile(r"^ (\.[\w.]+|COMMON)$")
_INPUT_NEXT = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S+)$")
_FLASH = (".text", ".ARM.exidx", ".rodata")
_RAM = (".data", ".bss")
_HARNESS = ("main", "Reset_Handler", "Fault_Handler", "s2_reset", "s2_vectors", "s2_sh_", "s2_stack_", "s2_record",
            "s2_profile_ticks", "s2_calibrate", "s2_mve_self_test", "s2_model_check")


def _category(section: str, obj: str) -> str:
    """What an input section is: ``model_constants`` (weights, biases,
    multipliers, layer parameters), ``model_code`` (``s2_model_invoke``
    and friends), ``kernels`` (``s2mcu_*.c``), ``activation_buffer``,
    ``harness`` (start-up, semihosting, measurement) or ``libc``."""
    if ".a(" in obj or obj.endswith(".a"):
        return "libc"
    name = section.split(".", 2)[-1] if section.count(".") >= 2 else ""
    if name.startswith(_HARNESS) or section in (".vectors",):
        return "harness"
    if name == "s2_model_arena":
        return "activation_buffer"
    if name.startswith("s2_model_L"):
        return "model_constants"
    if name.startswith("s2_model_"):
        return "model_code"
    if name.startswith("s2_") or section.startswith(".rodata"):
        return "kernels" if section.startswith(".text") else "model_code"
    return "harness"


def read_map(path: str):
    """``(sections, breakdown)`` of a GNU ld map file: output section sizes,
    and flash and RAM bytes per :func:`_category` of the input sections
    (the firmware is compiled with -ffunction-sections -fdata-sections, so
    every function and array has its own section)."""
    sections: Dict[str, int] = {}
    breakdown: Dict[str, Dict[str, int]] = {}
    with open(path) as f:
        lines = f.read().split("Linker script and memory map", 1)[-1].splitlines()
    current = None
    pending = None
    for line in lines:
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            sections[current] = sections.get(current, 0) + int(m.group(3), 16)
            pending = None
            continue
        m = _INPUT.match(line)
        name = size = obj = None
        if m:
            name, size, obj = m.group(1), int(m.group(3), 16), m.group(4)
        elif _INPUT_LONG_NAME.match(line):
            pending = _INPUT_LONG_NAME.match(line).group(1)
            continue
        elif pending is not None and _INPUT_NEXT.match(line):
            m = _INPUT_NEXT.match(line)
            name, size, obj = pending, int(m.group(2), 16), m.group(3)
            pending = None
        if name is None or current is None or size == 0:
            continue
        entry = breakdown.setdefault(_category(name, obj), {"flash": 0, "ram": 0})
        if current in _FLASH:
            entry["flash"] += size
        elif current == ".data":
            entry["flash"] += size
            entry["ram"] += size
        elif current == ".bss":
            entry["ram"] += size
    return sections, breakdown


def build_firmware(code, core: str, out_dir: str, stack_bytes: Optional[int] = None,
                   board_: Optional[Board] = None) -> Firmware:
    """Writes the sources and builds the firmware of ``core`` in ``out_dir``
    (for its board, or ``board_``, e.g. :func:`sizing_board`).

    Raises:
      DoesNotFitError: the model does not fit the board's flash or RAM
        (:func:`check_fits` before building, or the linker's overflow).
      ToolError: the ARM toolchain is missing or the build failed.
      ValueError: ``code`` was generated for another target.
    """
    b = board_ or board(core)
    stack_bytes = b.stack_bytes if stack_bytes is None else int(stack_bytes)
    if code.target != core:
        raise ValueError(f"code generated for {code.target} cannot be {core} firmware (its model.h stops the "
                         f"compiler): generate(..., target={core!r})")
    check_fits(code, core, stack_bytes, b)
    write_sources(code, out_dir)
    for name in BOARD_SOURCES:
        shutil.copyfile(os.path.join(BOARD_DIR, name), os.path.join(out_dir, name))
    cmd = firmware_command(core, stack_bytes, board_=b)
    with open(os.path.join(out_dir, "build.sh"), "w") as f:
        f.write("#!/bin/sh\n# the firmware's one compile-and-link command (generated by export.mcu)\n"
                + " ".join(shlex.quote(c) for c in cmd) + "\n")
    run_tool(cmd, cwd=out_dir, what=f"the {core} firmware (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi)",
             explain=_linker_overflow(b))
    sections, breakdown = read_map(os.path.join(out_dir, "firmware.map"))
    flash = sum(v for k, v in sections.items() if k in _FLASH) + sections.get(".data", 0)
    ram = sum(sections.get(k, 0) for k in _RAM)
    return Firmware(core, out_dir, os.path.join(out_dir, "firmware.elf"), sections, flash, ram, breakdown, cmd,
                    int(stack_bytes), b.machine)


@dataclasses.dataclass
class QemuRun:
    """What one QEMU run measured.

    Attributes:
      outputs: ``[N, output bytes]`` as the model's output dtype.
      instructions: ``[N]`` retired instructions per inference.
      layer_instructions: ``[N, layers]``.
      fired: ``[N, layers]`` fired inputs of the spike-driven layers.
      instructions_per_tick: the calibration (:attr:`Board.instructions_per_tick`: 62.5 on the
        microbit, 40 on the MPS2 boards, 50 on the AN505, 31.25 on the AN547).
      stack_used: the stack's high-water mark (bytes).
      mve: 1 if the MVE self-test ran and passed, 2 without MVE.
      mvfr1: the core's MVFR1 register (bits 11:8: MVE, 2 = integer and float).
      command: the QEMU command line.
    """

    outputs: np.ndarray
    instructions: np.ndarray
    layer_instructions: np.ndarray
    fired: np.ndarray
    instructions_per_tick: float
    stack_used: int
    stack_reserved: int
    mve: int
    mvfr1: int
    command: List[str]


def qemu_command(core: str, elf: str, machine: str = "") -> List[str]:
    return [QEMU, "-M", machine or board(core).machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", elf]


def run_qemu(firmware: Firmware, inputs: np.ndarray, layers: int, output_bytes: int,
             output_dtype=np.int8, timeout: float = 1800.0, work_dir: Optional[str] = None) -> QemuRun:
    """Runs ``firmware`` on its QEMU board over ``inputs`` (``[N, ...]`` in
    the model's input dtype)."""
    if shutil.which(QEMU) is None:
        raise ToolError(f"{QEMU} is not installed; on Debian: apt-get install qemu-system-arm")
    if not firmware.machine:
        raise ValueError(f"the {firmware.core} firmware in {firmware.directory!r} was linked for its sizes only")
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="s2mcu_qemu_")
        work_dir = tmp.name
    try:
        os.makedirs(work_dir, exist_ok=True)
        np.ascontiguousarray(inputs).tofile(os.path.join(work_dir, "inputs.bin"))
        for name in ("outputs.bin", "counts.bin", "summary.bin"):
            if os.path.exists(os.path.join(work_dir, name)):
                os.remove(os.path.join(work_dir, name))
        cmd = qemu_command(firmware.core, os.path.abspath(firmware.elf), firmware.machine)
        proc = subprocess.run(cmd, cwd=work_dir, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ToolError(f"{firmware.core} firmware under QEMU exited {proc.returncode}: "
                            f"{(proc.stdout + proc.stderr).strip()[-300:] or 'no output'}")
        summary = np.fromfile(os.path.join(work_dir, "summary.bin"), dtype=np.uint32)
        if summary.size < 9 or summary[0] != 0x434D3253:
            raise ToolError("the firmware wrote no valid summary.bin")
        n = int(summary[2])
        if n != len(inputs):
            raise ToolError(f"the firmware ran {n} of {len(inputs)} images")
        ratio = float(summary[3]) / float(summary[4])
        counts = np.fromfile(os.path.join(work_dir, "counts.bin"), dtype=np.uint32).reshape(n, 1 + 2 * layers)
        outputs = np.fromfile(os.path.join(work_dir, "outputs.bin"), dtype=output_dtype).reshape(n, -1)
        return QemuRun(outputs, np.rint(counts[:, 0] * ratio).astype(np.int64),
                       np.rint(counts[:, 1:1 + layers] * ratio).astype(np.int64), counts[:, 1 + layers:].copy(),
                       ratio, int(summary[5]), int(summary[6]), int(summary[8]), int(summary[7]), cmd)
    finally:
        if tmp is not None:
            tmp.cleanup()
