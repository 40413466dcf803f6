"""Builds and runs the generated C on the host (``gcc``); compiles it for a
target without a board; the tools' errors.

* :func:`write_sources` puts ``model.c``/``model.h`` and the runtime
  (``export/mcu/c``: ``s2mcu.h``, ``s2mcu_internal.h`` and the kernel
  sources :data:`KERNEL_SOURCES`) into a directory.
* :func:`build_host` compiles them with the host compiler and
  ``host_main.c`` (code generated for ``host`` or ``generic``, which both
  take the kernels' portable path); :func:`run_host` feeds it int8 images
  and reads the int8 outputs back (the fast bit-exactness tests).
* :func:`compile_target` compiles the sources of any target with its
  compiler and flags (``-c``, no board: the Cortex-M0+, ``generic``) and
  sums the objects' sections (:class:`Objects`).
* The firmware of a board is :mod:`export.mcu.firmware`'s
  (:func:`~export.mcu.firmware.firmware_command`, the one
  ``arm-none-eabi-gcc`` command line of a board of
  :data:`~export.mcu.firmware.BOARDS`; :func:`~export.mcu.firmware.build_firmware`
  runs it and reads flash and RAM from the map file).

Example::

    from export.mcu.build import build_host, run_host
    exe = build_host(generate(program, "spike_list", target="host"), "build/host")
    run_host(exe, quantize_inputs(flatbuffer, images), (10,))["outputs"]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from export.errors import InputError
from export.mcu.targets import GENERIC, HOST, TARGETS

__all__ = ["C_DIR", "BOARD_DIR", "write_sources", "build_host", "run_host", "host_compiler", "run_tool",
           "ToolError", "KERNEL_SOURCES", "RUNTIME_SOURCES", "ARM_CC", "compiler_of", "compile_target", "Objects",
           "C_FLAGS"]

C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")
BOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boards")
#: The kernels, one source per op family (``s2mcu_*.c``): every build compiles all of them.
KERNEL_SOURCES = tuple(sorted(n for n in os.listdir(C_DIR) if n.startswith("s2mcu_") and n.endswith(".c")))
#: What a build directory gets besides the generated files.
RUNTIME_SOURCES = ("s2mcu.h", "s2mcu_internal.h") + KERNEL_SOURCES
ARM_CC = "arm-none-eabi-gcc"
#: every build's language and warnings (the firmware's, the host's, the library's)
C_FLAGS = ("-std=c99", "-Wall", "-Wno-unused-function")


class ToolError(InputError, RuntimeError):
    """A compiler, linker or emulator is missing or failed (the message
    says which and its last error line)."""


def _last_error(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for key in ("undefined reference", "error:", "error"):
        for l in lines:
            if key in l.lower():
                return l
    return lines[-1] if lines else "no output"


def run_tool(cmd: Sequence[str], cwd: Optional[str] = None, timeout: float = 600.0, what: str = None,
             explain: Optional[Callable[[str], Optional[Exception]]] = None) -> str:
    """Runs a build tool; raises :class:`ToolError` with its first error
    line, or what ``explain(its output)`` makes of a failure (an exception
    to raise instead, or ``None``)."""
    if shutil.which(cmd[0]) is None:
        raise ToolError(f"{cmd[0]} is not installed ({what or 'needed to build the C'}); on Debian: "
                        "apt-get install gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        better = explain(proc.stdout + proc.stderr) if explain is not None else None
        if better is not None:
            raise better
        raise ToolError(f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}): "
                        f"{_last_error(proc.stderr + proc.stdout)}")
    return proc.stdout + proc.stderr


def write_sources(code, out_dir: str, extra: Sequence[str] = ()) -> List[str]:
    """Writes the generated files and the runtime sources (plus ``extra``
    files of ``export/mcu/c``) into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, text in code.files.items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    for name in tuple(RUNTIME_SOURCES) + tuple(extra):
        dst = os.path.join(out_dir, name)
        shutil.copyfile(os.path.join(C_DIR, name), dst)
        paths.append(dst)
    return paths


def host_compiler() -> str:
    return os.environ.get("CC", "gcc")


def build_host(code, out_dir: str, check_spikes: bool = True, opt: str = "-O2") -> str:
    """Compiles the model for the host; returns the executable's path.

    Raises:
      ValueError: ``code`` was generated for a Cortex-M, not for the host
        or ``generic`` (``generate(..., target="host")``; its ``model.h``
        would stop the compiler anyway).
      ToolError: no host compiler, or the build failed.
    """
    if code.target not in (HOST, GENERIC):
        raise ValueError(f"build_host builds code generated for target='host' (or 'generic'); this code is for "
                         f"{code.target} (its firmware: export.mcu.firmware.build_firmware)")
    write_sources(code, out_dir, extra=("host_main.c",))
    exe = os.path.join(out_dir, "host_model")
    cmd = [host_compiler(), opt, *C_FLAGS, "-o", exe, "model.c", *KERNEL_SOURCES, "host_main.c"]
    if check_spikes:
        cmd.insert(2, "-DS2_CHECK_SPIKES")
    run_tool(cmd, cwd=out_dir, what="the host build")
    return exe


def run_host(exe: str, inputs: np.ndarray, output_shape: Tuple[int, ...], output_dtype=np.int8,
             layers: int = 0, timeout: float = 3600.0) -> Dict[str, np.ndarray]:
    """Runs the host build on ``inputs`` (``[N, ...]`` in the model's input
    dtype). Returns ``{"outputs": [N, *output_shape], "fired": [N, layers]}``."""
    work = os.path.dirname(exe)
    src, dst, fired = (os.path.join(work, n) for n in ("inputs.bin", "outputs.bin", "fired.bin"))
    np.ascontiguousarray(inputs).tofile(src)
    cmd = [exe, src, dst] + ([fired] if layers else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ToolError(f"host model failed (exit {proc.returncode}): {_last_error(proc.stderr)}")
    n = len(inputs)
    out = np.fromfile(dst, dtype=output_dtype).reshape((n,) + tuple(output_shape))
    result = {"outputs": out}
    if layers:
        result["fired"] = np.fromfile(fired, dtype=np.uint32).reshape(n, layers)
    return result


def compiler_of(target: str) -> List[str]:
    """The compiler and flags of ``target``'s sources: ``arm-none-eabi-gcc``
    and the core's flags for a Cortex-M, the host compiler otherwise."""
    t = TARGETS[target]
    return [ARM_CC, *t.cpu_flags] if t.cortex_m else [host_compiler()]


@dataclasses.dataclass
class Objects:
    """The objects of :func:`compile_target`: ``flash_bytes`` (text, rodata
    and the data image), ``static_ram_bytes`` (data and bss) summed over the
    model and the kernels (no start-up code, no libc), and the command."""

    directory: str
    objects: List[str]
    flash_bytes: int
    static_ram_bytes: int
    command: List[str]


def _section_sizes(objects: Sequence[str], cwd: str, size_tool: str) -> Tuple[int, int, int]:
    """``(text incl. rodata, data, bss)`` summed over ``objects`` (``size -B``)."""
    out = run_tool([size_tool, "-B", *objects], cwd=cwd, what="the section sizes")
    text = data = bss = 0
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            text, data, bss = text + int(parts[0]), data + int(parts[1]), bss + int(parts[2])
    return text, data, bss


def compile_target(code, out_dir: str, opt: str = "-O2") -> Objects:
    """Compiles the sources of ``code`` for its target (``-c``: no start-up
    code, no board) in ``out_dir``, as a firmware or library build would;
    the sizes of the objects (``arm-none-eabi-size`` or ``size``).

    Raises:
      ToolError: the compiler is missing, or the sources do not compile.
    """
    write_sources(code, out_dir)
    cc = compiler_of(code.target)
    sources = ["model.c", *KERNEL_SOURCES]
    cmd = [*cc, opt, *C_FLAGS, "-ffunction-sections", "-fdata-sections", "-c", *sources]
    run_tool(cmd, cwd=out_dir, what=f"the {code.target} build" + (
        " (Debian: gcc-arm-none-eabi, libnewlib-arm-none-eabi)" if cc[0] == ARM_CC else ""))
    objects = [s[:-2] + ".o" for s in sources]
    size_tool = "arm-none-eabi-size" if cc[0] == ARM_CC else "size"
    text, data, bss = _section_sizes(objects, out_dir, size_tool)
    return Objects(out_dir, objects, text + data, data + bss, cmd)
