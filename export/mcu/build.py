"""Builds and runs the generated C on the host (``gcc``); the tools' errors.

* :func:`write_sources` puts ``model.c``/``model.h`` and the runtime
  (``export/mcu/c``: ``s2mcu.h``, ``s2mcu_internal.h`` and the kernel
  sources :data:`KERNEL_SOURCES`) into a directory.
* :func:`build_host` compiles them with the host compiler and
  ``host_main.c``; :func:`run_host` feeds it int8 images and reads the
  int8 outputs back (the fast bit-exactness tests).
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

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from export.errors import InputError
from export.mcu.targets import HOST

__all__ = ["C_DIR", "BOARD_DIR", "write_sources", "build_host", "run_host", "host_compiler", "run_tool",
           "ToolError", "KERNEL_SOURCES", "RUNTIME_SOURCES"]

C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")
BOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boards")
#: The kernels, one source per op family (``s2mcu_*.c``): every build compiles all of them.
KERNEL_SOURCES = tuple(sorted(n for n in os.listdir(C_DIR) if n.startswith("s2mcu_") and n.endswith(".c")))
#: What a build directory gets besides the generated files.
RUNTIME_SOURCES = ("s2mcu.h", "s2mcu_internal.h") + KERNEL_SOURCES


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


def run_tool(cmd: Sequence[str], cwd: Optional[str] = None, timeout: float = 600.0, what: str = None) -> str:
    """Runs a build tool; raises :class:`ToolError` with its first error line."""
    if shutil.which(cmd[0]) is None:
        raise ToolError(f"{cmd[0]} is not installed ({what or 'needed to build the C'}); on Debian: "
                        "apt-get install gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
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
      ValueError: ``code`` was generated for a core, not for the host
        (``generate(..., target="host")``; its ``model.h`` would stop the
        compiler anyway).
      ToolError: no host compiler, or the build failed.
    """
    if code.target != HOST:
        raise ValueError(f"build_host builds code generated for target='host'; this code is for {code.target} "
                         "(its firmware: export.mcu.firmware.build_firmware)")
    write_sources(code, out_dir, extra=("host_main.c",))
    exe = os.path.join(out_dir, "host_model")
    cmd = [host_compiler(), opt, "-std=c99", "-Wall", "-Wno-unused-function", "-o", exe, "model.c",
           *KERNEL_SOURCES, "host_main.c"]
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
