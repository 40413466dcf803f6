"""Arm Ethos-U NPU compilation of an int8 TFLite model with Vela.

:func:`compile_for_ethos_u` runs Arm's Vela compiler (``ethos-u-vela`` on
PyPI, ``pip install 's2nn_keras[edge]'``) on a flatbuffer and returns what it
decided and estimated: which operators run on the NPU and which fall back to
the Cortex-M CPU (with Vela's reason), Vela's estimated inference time,
cycles and MACs, and the SRAM and flash the compiled model needs.

Vela runs as a subprocess of the current Python (``python -m ethosu.vela``)
in a temporary directory; nothing is written elsewhere. Every figure is read
from Vela's summary CSV (``<name>_summary_<system_config>.csv``), its printed
warnings and the optimised ``<name>_vela.tflite``.

System configuration. Vela's timing and memory figures depend on the memory
system it is told about (``Arm/vela.ini``, shipped with Vela). Unless told
otherwise, this module uses, for every NPU family, an embedded system with
the tensor arena in SRAM and the weights in off-chip flash (memory mode
``Shared_Sram``), so "SRAM" and "flash" mean the same on every NPU:

=============  ==============================  =========  ===========
NPU            system config                   NPU clock  memory mode
=============  ==============================  =========  ===========
ethos-u55-*    ``Ethos_U55_High_End_Embedded``  500 MHz    Shared_Sram
ethos-u65-*    ``Ethos_U65_Embedded``           500 MHz    Shared_Sram
ethos-u85-*    ``Ethos_U85_SYS_Flash_High``     500 MHz    Shared_Sram
=============  ==============================  =========  ===========

For the U55 this is Vela's own default; for the U85 Vela would default to
``Ethos_U85_SYS_DRAM_Mid`` / ``Dedicated_Sram_384KB`` (1 GHz, arena and
weights in DRAM), which has no flash. Pass ``system_config``/``memory_mode``
to choose another system of ``Arm/vela.ini``.

What the figures mean (Vela's own caveat: its numbers are estimates the
compiler uses for its decisions, not measurements):

* ``npu_op_fraction``: the fraction of the *input* model's operators that
  Vela placed in NPU command streams: ``1 - cpu_ops / input_ops``, where
  ``cpu_ops`` are the operators left in the optimised model besides Vela's
  ``ethos-u`` custom operators (one per NPU partition).
* ``estimated_inference_ms``, ``estimated_cycles``: NPU work only. Operators
  that fall back to the CPU are **not** in the estimate (Vela does not model
  the CPU), so a model with fallbacks looks faster than it is.
* ``sram_bytes``, ``flash_bytes`` (off-chip + on-chip flash), ``dram_bytes``:
  Vela's "Total ... used" per memory (tensor arena and its weight caching
  in SRAM; encoded weights and command streams in flash).

Example::

    from export import to_tflite
    from export.tflite.vela import compile_for_ethos_u

    tflite_int8 = to_tflite(model, "int8", representative_data)
    u55 = compile_for_ethos_u(tflite_int8, "ethos-u55-128")
    u55["npu_op_fraction"], u55["cpu_fallback"], u55["estimated_inference_ms"]
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from export.errors import InputError
from export.report import FormatReporter

__all__ = ["compile_for_ethos_u", "compile_for_accelerators", "ACCELERATORS", "REPORT_ACCELERATORS",
           "DEFAULT_SYSTEMS", "VelaError", "VelaNotInstalledError", "available", "vela_version", "format_table",
           "reporter"]

# Vela 5.2's --accelerator-config choices.
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                "ethos-u85-2048")
# The two the export report and the benchmarks give: the microcontroller NPU
# without comparison/select ops, and the one that has them.
REPORT_ACCELERATORS = ("ethos-u55-128", "ethos-u85-256")
DEFAULT_SYSTEMS = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_Embedded", "Shared_Sram"),
    "ethos-u85": ("Ethos_U85_SYS_Flash_High", "Shared_Sram"),
}
INSTALL_HINT = "pip install 's2nn_keras[edge]'"
_VELA_OP = "CUSTOM:ethos-u"  # an NPU partition (command stream) in Vela's output


class VelaError(InputError, RuntimeError):
    """Vela failed to compile the model (its last error line is the message)."""


class VelaNotInstalledError(VelaError, ImportError):
    """The ``ethos-u-vela`` package is not installed."""


def _require_vela():
    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec("ethosu.vela") is None:
        raise VelaNotInstalledError(
            f"Ethos-U compilation needs Arm's Vela compiler (package ethos-u-vela), which is not installed: "
            f"{INSTALL_HINT}")


def available() -> bool:
    """True if ``ethos-u-vela`` is installed."""
    try:
        _require_vela()
        return True
    except VelaNotInstalledError:
        return False


def vela_version() -> str:
    """The installed Vela version (raises :class:`VelaNotInstalledError`)."""
    _require_vela()
    from importlib.metadata import version

    return version("ethos-u-vela")


def _op_histogram(tflite_model: bytes) -> Dict[str, int]:
    """``{op name: count}`` of a flatbuffer (``"CUSTOM:<code>"`` for custom ops)."""
    from export.tflite.flatbuffer import op_counts

    return op_counts(tflite_model)


_WARNING = re.compile(r"^Warning \(supported operators\) operator: (?P<op>[A-Z0-9_]+), ofm: '(?P<name>.*)'$")


def _fallbacks(log: str) -> List[Dict[str, str]]:
    """Vela's "Warning (supported operators)" blocks: operator type, output
    tensor name, and the reason (the lines up to the next blank line)."""
    out, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        m = _WARNING.match(line.strip())
        if not m:
            continue
        reason = []
        for nxt in lines[i + 1:]:
            if not nxt.strip():
                break
            reason.append(nxt.strip())
        text = " ".join(reason)
        out.append({"op": m["op"], "name": m["name"], "reason": text[len("Reason: "):] if text.startswith("Reason: ")
                    else text})
    return out


def _error_line(log: str) -> str:
    lines = [l.strip() for l in log.splitlines() if l.strip()]
    for l in reversed(lines):
        if "error" in l.lower():
            return l
    return lines[-1] if lines else "no output"


def _float(row, key, default=0.0):
    try:
        return float(row.get(key, default))
    except (TypeError, ValueError):
        return default


def compile_for_ethos_u(tflite_model: bytes, accelerator: str = "ethos-u55-128",
                        system_config: Optional[str] = None, memory_mode: Optional[str] = None,
                        optimise: str = "Performance", timeout_s: float = 600.0,
                        keep_model: bool = False) -> Dict:
    """Compiles ``tflite_model`` with Vela for one Ethos-U configuration.

    Args:
      tflite_model: the ``.tflite`` flatbuffer (an int8 or int16x8
        full-integer model; float operators all stay on the CPU).
      accelerator: one of :data:`ACCELERATORS`, e.g. ``"ethos-u55-128"``
        (128 MACs/cycle) or ``"ethos-u85-256"``.
      system_config, memory_mode: sections of Vela's ``Arm/vela.ini``;
        default :data:`DEFAULT_SYSTEMS` for the NPU family (module docstring).
      optimise: Vela's ``--optimise``, ``"Performance"`` or ``"Size"``.
      timeout_s: limit for the Vela subprocess.
      keep_model: also return the optimised flatbuffer under ``"optimized_model"``.

    Returns:
      A JSON-serialisable dict: ``accelerator``, ``system_config``,
      ``memory_mode``, ``optimise``, ``vela_version``, ``core_clock_hz``;
      ``input_ops``, ``cpu_ops``, ``npu_ops``, ``npu_op_fraction``,
      ``npu_partitions``, ``cpu_op_types`` (``{op: count}`` left on the CPU),
      ``cpu_fallback`` (``[{"op", "name", "reason"}]`` as Vela warned, in
      Vela's view of the graph: a fused activation it splits off an
      operator is reported on its own);
      ``estimated_inference_ms``, ``estimated_cycles``, ``npu_cycles``,
      ``macs``; ``sram_bytes``, ``flash_bytes``, ``dram_bytes``,
      ``weights_in``, ``feature_maps_in``; ``optimized_model_bytes``.

    Raises:
      VelaNotInstalledError: ``ethos-u-vela`` is not installed.
      ValueError: unknown accelerator/optimise, or bytes that are not a
        TFLite flatbuffer.
      VelaError: Vela exited with an error (its error line in the message).
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown Ethos-U accelerator {accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    if optimise not in ("Performance", "Size"):
        raise ValueError(f"optimise must be 'Performance' or 'Size', got {optimise!r}")
    data = bytes(tflite_model) if isinstance(tflite_model, (bytes, bytearray, memoryview)) else None
    if data is None or len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError("tflite_model must be the bytes of a TFLite flatbuffer (file identifier 'TFL3')")
    _require_vela()
    family = accelerator.rsplit("-", 1)[0]
    default_system, default_mode = DEFAULT_SYSTEMS[family]
    system_config = system_config or default_system
    memory_mode = memory_mode or default_mode

    with tempfile.TemporaryDirectory(prefix="s2nn_vela_") as tmp:
        src = os.path.join(tmp, "model.tflite")
        with open(src, "wb") as f:
            f.write(data)
        out_dir = os.path.join(tmp, "out")
        cmd = [sys.executable, "-m", "ethosu.vela", src, "--output-dir", out_dir,
               "--accelerator-config", accelerator, "--config", "Arm/vela.ini",
               "--system-config", system_config, "--memory-mode", memory_mode,
               "--optimise", optimise, "--show-cpu-operations"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VelaError(f"Vela did not finish within {timeout_s:g} s ({accelerator})") from None
        log = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0:
            raise VelaError(f"Vela failed for {accelerator} ({system_config}, {memory_mode}): {_error_line(log)}")
        csvs = glob.glob(os.path.join(out_dir, "model_summary_*.csv"))
        optimized_path = os.path.join(out_dir, "model_vela.tflite")
        if not csvs or not os.path.isfile(optimized_path):
            raise VelaError(f"Vela wrote no summary/optimised model for {accelerator}: {_error_line(log)}")
        with open(csvs[0], newline="") as f:
            row = next(csv.DictReader(f))
        with open(optimized_path, "rb") as f:
            optimized = f.read()

    in_ops = _op_histogram(data)
    out_ops = _op_histogram(optimized)
    partitions = out_ops.pop(_VELA_OP, 0)
    n_in = sum(in_ops.values())
    n_cpu = sum(out_ops.values())
    kib = 1024.0
    result = {
        "accelerator": accelerator,
        "system_config": row.get("system_config", system_config),
        "memory_mode": row.get("memory_mode", memory_mode),
        "optimise": optimise,
        "vela_version": vela_version(),
        "core_clock_hz": _float(row, "core_clock"),
        "input_ops": n_in,
        "cpu_ops": n_cpu,
        "npu_ops": n_in - n_cpu,
        "npu_op_fraction": round((n_in - n_cpu) / n_in, 4) if n_in else 0.0,
        "npu_partitions": partitions,
        "cpu_op_types": dict(sorted(out_ops.items())),
        "cpu_fallback": _fallbacks(log),
        "estimated_inference_ms": round(1e3 * _float(row, "inference_time"), 6),
        "estimated_cycles": int(_float(row, "cycles_total")),
        "npu_cycles": int(_float(row, "cycles_npu")),
        "macs": int(_float(row, "nn_macs")),
        "sram_bytes": int(round(kib * _float(row, "sram_memory_used"))),
        "flash_bytes": int(round(kib * (_float(row, "off_chip_flash_memory_used")
                                        + _float(row, "on_chip_flash_memory_used")))),
        "dram_bytes": int(round(kib * _float(row, "dram_memory_used"))),
        "weights_in": row.get("weights_storage_area"),
        "feature_maps_in": row.get("feature_map_storage_area"),
        "optimized_model_bytes": len(optimized),
        "estimate_covers": "NPU operators only (CPU fallback operators are not in Vela's estimate)",
    }
    if keep_model:
        result["optimized_model"] = optimized
    return result


def compile_for_accelerators(tflite_model: bytes, accelerators: Sequence[str] = REPORT_ACCELERATORS,
                             **kwargs) -> Dict[str, Dict]:
    """:func:`compile_for_ethos_u` for each accelerator: ``{accelerator: result}``."""
    return {acc: compile_for_ethos_u(tflite_model, acc, **kwargs) for acc in accelerators}


def format_table(results: Dict[str, Dict], indent: str = "  ") -> str:
    """Printable summary of :func:`compile_for_accelerators` results, one line
    per accelerator (NPU op fraction, CPU fallbacks, estimate, memory)."""
    lines = [f"{indent}{'Ethos-U':15s} {'NPU ops':>9s} {'parts':>5s} {'est. ms':>8s} {'Mcycles':>8s} "
             f"{'SRAM KiB':>9s} {'flash KiB':>9s}  CPU fallback"]
    for acc, r in results.items():
        cpu = ", ".join(f"{op}x{n}" for op, n in r["cpu_op_types"].items()) or "none"
        lines.append(f"{indent}{acc:15s} {100 * r['npu_op_fraction']:8.1f}% {r['npu_partitions']:5d} "
                     f"{r['estimated_inference_ms']:8.3f} {r['estimated_cycles'] / 1e6:8.3f} "
                     f"{r['sram_bytes'] / 1024:9.1f} {r['flash_bytes'] / 1024:9.1f}  {cpu}")
    return "\n".join(lines)


def reporter(accelerators: Sequence[str] = REPORT_ACCELERATORS, formats: Sequence[str] = ("int8",), **kwargs):
    """The export pipeline's hook (:class:`export.report.FormatReporter`)
    that adds ``report["formats"][fmt]["vela"] = {accelerator: result}`` for
    each format in ``formats`` and its table to the printed summary.
    ``kwargs`` go to :func:`compile_for_ethos_u` (``system_config``, ...).

    Example::

        from export import ExportConfig, export_run

        from export.tflite import vela
        export_run(model, ExportConfig(out_dir, images, labels,
                                       reporters=(vela.reporter(),) if vela.available() else ()))
    """
    for acc in accelerators:
        if acc not in ACCELERATORS:
            raise ValueError(f"unknown Ethos-U accelerator {acc!r}; valid: {', '.join(ACCELERATORS)}")

    def run(fmt, conversion):
        return compile_for_accelerators(conversion.flatbuffer, accelerators, **kwargs)

    def summary(fmt, results):
        first = next(iter(results.values()))
        systems = "; ".join(f"{acc}: {r['system_config']}/{r['memory_mode']}" for acc, r in results.items())
        return (f"  Ethos-U ({fmt}, Vela {first['vela_version']}; {systems}; estimate = NPU operators only)\n"
                + format_table(results, indent="    "))

    return FormatReporter(name="vela", formats=tuple(formats), run=run, summary=summary)
