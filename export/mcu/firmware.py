"""Cortex-M firmware of the generated C, run on QEMU's Arm boards.

Boards (:data:`BOARDS`, keyed by core):

=============  ==============  ==========================================
core           QEMU machine    memory used (linker script)
=============  ==============  ==========================================
cortex-m55     ``mps3-an547``  ITCM 512 KiB code, SRAM 2 MiB constants,
                               DTCM 512 KiB data/bss/stack (Helium/MVE)
cortex-m4      ``mps2-an386``  SSRAM1 4 MiB code and constants, SSRAM2/3
                               4 MiB data/bss/stack (DSP extension, FPU)
=============  ==============  ==========================================

:func:`build_firmware` writes the sources, the project's start-up code,
semihosting, harness and linker scripts (``export/mcu/boards``) and one
``arm-none-eabi-gcc`` command line (saved as ``build.sh``), links, and
reads flash and RAM from the map file. :func:`run_qemu` runs the ELF in
``qemu-system-arm -M <machine> -icount shift=0`` with the images passed in
over semihosting and returns the outputs, per-image and per-layer retired
instructions, the layers' fired-input counts and the stack's high-water
mark (the harness paints the stack at reset).

Counting: with ``-icount shift=0`` QEMU advances virtual time by exactly
1 ns per retired instruction; SysTick, clocked by the board's SYSCLK
(25 MHz on the AN386, 32 MHz on the AN547), then ticks once per 40 (31.25)
instructions. The harness measures the ratio on a loop of a known 2,000,000
instructions at start-up (``calibration``) and every figure is
``ticks x ratio``: exact to one tick (40 / 31.25 instructions) per
measured interval, and the same on every run (checked by the tests).

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
from typing import Dict, List, Optional

import numpy as np

from export.mcu.build import BOARD_DIR, KERNEL_SOURCES, ToolError, run_tool, write_sources
from export.mcu.targets import CORES, TARGETS

__all__ = ["Board", "BOARDS", "CORES", "Firmware", "QemuRun", "firmware_command", "build_firmware", "run_qemu",
           "read_map", "available", "missing_tools"]


@dataclasses.dataclass(frozen=True)
class Board:
    core: str
    machine: str
    linker_script: str
    sysclk_hz: int
    flash_limit: int      # bytes of the regions holding code and constants
    ram_limit: int        # bytes of the data/bss/stack region

    @property
    def cpu_flags(self) -> tuple:
        """The core's compiler flags (:data:`export.mcu.targets.TARGETS`)."""
        return TARGETS[self.core].cpu_flags


#: One board per core of :data:`export.mcu.targets.CORES`.
BOARDS: Dict[str, Board] = {
    "cortex-m4": Board("cortex-m4", "mps2-an386", "mps2_an386.ld", 25_000_000, 4 * 1024 * 1024, 4 * 1024 * 1024),
    "cortex-m55": Board("cortex-m55", "mps3-an547", "mps3_an547.ld", 32_000_000, 512 * 1024 + 2 * 1024 * 1024,
                        512 * 1024),
}
BOARD_SOURCES = ("board_main.c", "startup.c", "semihost.c", "semihost.h", "sections.ld", "mps3_an547.ld",
                 "mps2_an386.ld")
CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
OPT_FLAGS = ("-O2",)


def missing_tools() -> List[str]:
    """The firmware tools not on PATH (``arm-none-eabi-gcc``, ``qemu-system-arm``)."""
    return [t for t in (CC, QEMU) if shutil.which(t) is None]


def available() -> bool:
    return not missing_tools()


def board(core: str) -> Board:
    try:
        return BOARDS[core]
    except KeyError:
        raise ValueError(f"unknown core {core!r}; valid: {', '.join(CORES)}") from None


def firmware_command(core: str, stack_bytes: int = 16384, output: str = "firmware.elf") -> List[str]:
    """The one ``arm-none-eabi-gcc`` command line (run in the build
    directory) that compiles and links the firmware of ``core``."""
    b = board(core)
    return [CC, *b.cpu_flags, *OPT_FLAGS, "-std=c99", "-Wall", "-Wno-unused-function", "-ffunction-sections",
            "-fdata-sections", "-DS2_PROFILE", "-I.", "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
            f"-Wl,--defsym=__stack_size__={int(stack_bytes)}", "-Wl,-Map=firmware.map", "-L.", "-T", b.linker_script,
            "-o", output, "model.c", *KERNEL_SOURCES, "board_main.c", "startup.c", "semihost.c"]


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


def build_firmware(code, core: str, out_dir: str, stack_bytes: int = 16384) -> Firmware:
    """Writes the sources and builds the firmware of ``core`` in ``out_dir``.

    Raises:
      ToolError: the ARM toolchain is missing or the build failed.
      ValueError: ``code`` was generated for another target, or the
        firmware does not fit the board's memory.
    """
    b = board(core)
    if code.target != core:
        raise ValueError(f"code generated for {code.target} cannot be {core} firmware (its model.h stops the "
                         f"compiler): generate(..., target={core!r})")
    write_sources(code, out_dir)
    for name in BOARD_SOURCES:
        shutil.copyfile(os.path.join(BOARD_DIR, name), os.path.join(out_dir, name))
    cmd = firmware_command(core, stack_bytes)
    with open(os.path.join(out_dir, "build.sh"), "w") as f:
        f.write("#!/bin/sh\n# the firmware's one compile-and-link command (generated by export.mcu)\n"
                + " ".join(shlex.quote(c) for c in cmd) + "\n")
    run_tool(cmd, cwd=out_dir, what=f"the {core} firmware (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi)")
    sections, breakdown = read_map(os.path.join(out_dir, "firmware.map"))
    flash = sum(v for k, v in sections.items() if k in _FLASH) + sections.get(".data", 0)
    ram = sum(sections.get(k, 0) for k in _RAM)
    fw = Firmware(core, out_dir, os.path.join(out_dir, "firmware.elf"), sections, flash, ram, breakdown, cmd,
                  int(stack_bytes))
    if ram + stack_bytes > b.ram_limit:
        raise ValueError(f"the {core} firmware needs {ram + stack_bytes} bytes of RAM; {b.machine} has {b.ram_limit}")
    return fw


@dataclasses.dataclass
class QemuRun:
    """What one QEMU run measured.

    Attributes:
      outputs: ``[N, output bytes]`` as the model's output dtype.
      instructions: ``[N]`` retired instructions per inference.
      layer_instructions: ``[N, layers]``.
      fired: ``[N, layers]`` fired inputs of the spike-driven layers.
      instructions_per_tick: the calibration (40 on the AN386, 31.25 on the AN547).
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


def qemu_command(core: str, elf: str) -> List[str]:
    b = board(core)
    return [QEMU, "-M", b.machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", elf]


def run_qemu(firmware: Firmware, inputs: np.ndarray, layers: int, output_bytes: int,
             output_dtype=np.int8, timeout: float = 1800.0, work_dir: Optional[str] = None) -> QemuRun:
    """Runs ``firmware`` on its QEMU board over ``inputs`` (``[N, ...]`` in
    the model's input dtype)."""
    if shutil.which(QEMU) is None:
        raise ToolError(f"{QEMU} is not installed; on Debian: apt-get install qemu-system-arm")
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
        cmd = qemu_command(firmware.core, os.path.abspath(firmware.elf))
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
