"""Every Cortex-M target, without QEMU (fast): each target's flags select
the kernel path it was planned for; model.h's guard lets exactly its own
target (and, for ``generic``, any portable compiler) compile the sources;
every target compiles with arm-none-eabi-gcc; ``generic`` runs on the host
byte-identical with TFLM; a model that does not fit a board is refused in
one line before building, and the linker's overflow becomes that line; the
drop-in CMake library (with its toolchain file, and the docs' main.c) and
the Arduino library build; the one-artefact source (model_int8.tflite and
the spike tensors its export_report.json records) is read exactly. The
QEMU runs on every board are in test_mcu_qemu.py (slow)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from export.mcu.artefact import (VerifiedTflite, VerifiedTfliteError, artefact_figures, load_verified, sha256,
                                 spike_code_table)
from export.mcu.build import ARM_CC, KERNEL_SOURCES, build_host, compile_target, run_host
from export.mcu.firmware import (BOARDS, Board, DoesNotFitError, build_firmware, check_fits, firmware_command,
                                 memory_usage)
from export.mcu.generate import generate
from export.mcu.library import LIBRARY, toolchain_name, write_arduino, write_library
from export.mcu.lower import lower
from export.mcu.run import format_summary, quantize_inputs, spike_codes, tflm_outputs
from export.mcu.targets import CORES, DEFAULT_CORES, GENERIC, HOST, MCU_TARGETS, TARGETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARM = shutil.which(ARM_CC) is not None
needs_arm = pytest.mark.skipif(not ARM, reason="needs arm-none-eabi-gcc (Debian: gcc-arm-none-eabi)")
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None,
                                 reason="needs cmake (Debian: apt-get install cmake) for the CMake library build")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler (gcc)")
CORTEX_M = [t for t in MCU_TARGETS if TARGETS[t].cortex_m]


@pytest.fixture(scope="module")
def s2nn(folded, calibration):
    from export.tflite.convert import convert

    return convert(folded[0], "int8", calibration)


@pytest.fixture(scope="module")
def program(s2nn):
    return lower(s2nn.flatbuffer, spike_codes(s2nn))


@pytest.fixture(scope="module")
def headers(program, tmp_path_factory):
    """Per target, a folder with the model.h of the spike_list plan."""
    out = {}
    for name in TARGETS:
        d = tmp_path_factory.mktemp(f"h_{name}")
        (d / "model.h").write_text(generate(program, "spike_list", target=name).files["model.h"])
        shutil.copyfile(os.path.join(REPO, "export", "mcu", "c", "s2mcu.h"), d / "s2mcu.h")
        out[name] = d
    return out


def _path_of_macros(flags):
    """The kernel path (s2mcu_internal.h) a compiler with ``flags`` takes."""
    cc = [ARM_CC, *flags] if flags else ["gcc"]
    macros = subprocess.run([*cc, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True,
                            check=True).stdout
    if re.search(r"#define __ARM_FEATURE_MVE [13]\b", macros):
        return "mve"
    return "dsp" if "#define __ARM_FEATURE_DSP 1" in macros else "portable"


def test_targets_boards_and_flags():
    """The seven targets the command lines take, each with its -mcpu and
    -mfloat-abi; a board for every core (the M0+'s a stand-in of the same
    instruction set); DSP SIMD on the M4, M7 and M33, Helium on the M55 only."""
    assert MCU_TARGETS == ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55",
                           GENERIC)
    assert set(TARGETS) == set(MCU_TARGETS) | {HOST} and set(DEFAULT_CORES) <= set(CORES)
    assert tuple(BOARDS) == CORES == tuple(t for t in CORTEX_M)
    paths = {n: TARGETS[n].kernel_path for n in MCU_TARGETS}
    assert paths == {"cortex-m0plus": "portable", "cortex-m3": "portable", "cortex-m4": "dsp", "cortex-m7": "dsp",
                     "cortex-m33": "dsp", "cortex-m55": "mve", GENERIC: "portable"}
    for name in CORTEX_M:
        flags = TARGETS[name].cpu_flags
        assert f"-mcpu={name}" in flags and any(f.startswith("-mfloat-abi=") for f in flags) and "-mthumb" in flags
    assert {b.machine for b in BOARDS.values()} == {"microbit", "mps2-an385", "mps2-an386", "mps2-an500",
                                                     "mps2-an505", "mps3-an547"}
    assert [c for c, b in BOARDS.items() if b.stand_in] == ["cortex-m0plus"]
    assert {c: b.instructions_per_tick for c, b in BOARDS.items()} == {
        "cortex-m0plus": 62.5, "cortex-m3": 40.0, "cortex-m4": 40.0, "cortex-m7": 40.0, "cortex-m33": 50.0,
        "cortex-m55": 31.25}


@needs_arm
@pytest.mark.parametrize("name", CORTEX_M)
def test_flags_select_the_planned_kernel_path(name):
    """arm-none-eabi-gcc with a target's flags predefines the ACLE macros
    that make the kernels take the path the generator planned for."""
    assert _path_of_macros(TARGETS[name].cpu_flags) == TARGETS[name].kernel_path


def _compiles(folder, flags):
    cc = [ARM_CC, *flags] if flags else ["gcc"]
    return subprocess.run([*cc, "-std=c99", "-E", "-x", "c", "-", "-o", os.devnull], input='#include "model.h"\n',
                          cwd=str(folder), capture_output=True, text=True)


@needs_arm
@pytest.mark.parametrize("generated_for", list(TARGETS))
def test_guard_lets_only_its_target_compile(headers, generated_for):
    """Sources generated for a target compile with its flags and stop every
    other target's compiler with an #error naming the flags they were
    generated for (-mcpu and -mfloat-abi); ``generic`` compiles wherever the
    kernels take the portable path (host, Cortex-M0+, M3) and nowhere else."""
    t = TARGETS[generated_for]
    for other in TARGETS:
        proc = _compiles(headers[generated_for], TARGETS[other].cpu_flags)
        ok = other == generated_for or (generated_for == GENERIC and TARGETS[other].kernel_path == "portable") or (
            generated_for == HOST and other == GENERIC)   # both: the host's own gcc, no flags
        assert (proc.returncode == 0) == ok, (generated_for, other, proc.stderr[-400:])
        if not ok:
            assert f'#error "s2_model was generated for {t.described} (export.mcu target {generated_for})' \
                   in proc.stderr, proc.stderr
            if t.cortex_m:
                assert f"-mcpu={generated_for}" in t.described and "-mfloat-abi=" in t.described


@needs_arm
def test_guard_catches_a_wrong_fpu_or_float_abi(headers):
    """What the flags of another core would not show: the same core with
    another FPU or float ABI (an M7 with the single-precision FPU is what
    the M4 is: the compiler cannot tell them apart, the plan is the same)."""
    cases = [("cortex-m7", ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=softfp", "-mthumb"), False),
             ("cortex-m4", ("-mcpu=cortex-m4", "-mfloat-abi=soft", "-mthumb"), False),
             ("cortex-m33", ("-mcpu=cortex-m33+nodsp", "-mfloat-abi=hard", "-mthumb"), False),
             ("cortex-m0plus", ("-mcpu=cortex-m0", "-mfloat-abi=soft", "-mthumb"), True),
             ("cortex-m4", ("-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", "-mthumb"), True)]
    for generated_for, flags, ok in cases:
        assert (_compiles(headers[generated_for], flags).returncode == 0) == ok, (generated_for, flags)


@needs_arm
@pytest.mark.parametrize("name", CORTEX_M + [GENERIC])
def test_every_target_compiles_warning_free(program, tmp_path, name):
    """model.c and every kernel compile for each target with its own
    compiler and flags, -Werror (no board, no start-up code)."""
    objects = compile_target(generate(program, "spike_list", target=name), str(tmp_path))
    assert objects.flash_bytes > program_constants(program) and objects.static_ram_bytes > 0
    flags = " ".join(objects.command)
    assert " ".join(TARGETS[name].cpu_flags) in flags and "-std=c99" in flags


def program_constants(program):
    return sum(int(np.asarray(c).size) for l in program.layers for k, c in l.consts.items() if k == "w")


def test_generic_runs_on_the_host_byte_identical(s2nn, program, fmnist, tmp_path):
    """``generic`` is plain C99: built by the host compiler it gives TFLM's outputs."""
    inputs = quantize_inputs(s2nn.flatbuffer, fmnist[2][:60])
    ref, _ = tflm_outputs(s2nn.flatbuffer, inputs)
    exe = build_host(generate(program, "spike_list", target=GENERIC), str(tmp_path))
    assert np.array_equal(run_host(exe, inputs, (10,))["outputs"], ref)
    with pytest.raises(ValueError, match="generated for target='host' \\(or 'generic'\\)"):
        build_host(generate(program, "dense", target="cortex-m3"), str(tmp_path / "m3"))


# ------------------------------------------------------------ fitting a board


def _tiny_board(core, flash, ram, script="mps2.ld", region=("SSRAM1", "SSRAM23")):
    return Board(core, "", script, 0, ((region[0], flash),), (region[1], ram), region[0])


def test_a_model_that_does_not_fit_is_refused_before_building(program, tmp_path):
    """One line with both figures (what the model needs, what the board
    has), before any file is written or tool run."""
    code = generate(program, "dense", target="cortex-m4")
    check_fits(code, "cortex-m4")
    for flash, ram in ((code.const_bytes - 1, 1 << 20), (1 << 20, code.arena_bytes + 1000)):
        with pytest.raises(DoesNotFitError) as err:
            build_firmware(code, "cortex-m4", str(tmp_path / "fw"), board_=_tiny_board("cortex-m4", flash, ram))
        line = str(err.value)
        assert "\n" not in line and line.startswith("the model does not fit ") and f"{flash:,} B and {ram:,} B" in line
        needs = f"it needs {code.const_bytes:,} B of flash and {code.arena_bytes + 4 * len(program.layers) + 16384:,} B"
        assert needs in line, line
    assert not (tmp_path / "fw").exists()


def test_memory_usage_reads_the_linker_table():
    table = """Memory region         Used Size  Region Size  %age Used
          SSRAM1:      330012 B         4 MB      7.87%
         SSRAM23:          21 KB         4 MB      0.51%
"""
    assert memory_usage(table) == {"SSRAM1": (330012, 4 << 20), "SSRAM23": (21 << 10, 4 << 20)}


@needs_arm
def test_the_linkers_overflow_is_the_same_one_line(program, tmp_path):
    """A board whose constant region holds the constants but not the code
    too: the check before building passes, the linker's overflow becomes
    the same one line (from ld --print-memory-usage)."""
    code = generate(program, "dense", target="cortex-m3")
    script = tmp_path / "tight.ld"
    flash = code.const_bytes + 256
    script.write_text(f"MEMORY {{\n  F (rx) : ORIGIN = 0, LENGTH = {flash}\n"
                      "  R (rwx) : ORIGIN = 0x20000000, LENGTH = 4M\n}\n"
                      'REGION_ALIAS("CODE", F);\nREGION_ALIAS("CONST", F);\nREGION_ALIAS("RAM", R);\n'
                      "INCLUDE sections.ld\n")
    board = _tiny_board("cortex-m3", flash, 4 << 20, script=str(script), region=("F", "R"))
    with pytest.raises(DoesNotFitError) as err:
        build_firmware(code, "cortex-m3", str(tmp_path / "fw"), board_=board)
    line = str(err.value)
    m = re.search(r"it needs ([\d,]+) B of flash and ([\d,]+) B of RAM \(the linker's memory usage, stack "
                  r"included\); the board has ([\d,]+) B and ([\d,]+) B", line)
    assert m and "\n" not in line, line
    need, have = int(m.group(1).replace(",", "")), int(m.group(3).replace(",", ""))
    assert need > have == flash and int(m.group(2).replace(",", "")) > 16384
    assert "-Wl,--print-memory-usage" in firmware_command("cortex-m3")


# ------------------------------------------------------------ drop-in libraries


def docs_main_c():
    """The minimal main.c of docs/MCU.md ("Put the model in your firmware")."""
    with open(os.path.join(REPO, "docs", "MCU.md")) as f:
        text = f.read()
    section = text.split("## Put the model in your firmware", 1)[1]
    return re.search(r"```c\n(.*?)```", section, re.S).group(1)


APP_CMAKE = """cmake_minimum_required(VERSION 3.13)
project(app C)
add_subdirectory(s2_model)
add_executable(app main.c)
target_link_libraries(app PRIVATE s2_model)
"""


def _cmake_build(app, toolchain=None):
    configure = ["cmake", "-S", str(app), "-B", str(app / "build"), "-G", "Unix Makefiles"]
    if toolchain:
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={toolchain}")
    for cmd in (configure, ["cmake", "--build", str(app / "build")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    return app / "build"


def _library_app(program, tmp_path, target):
    app = tmp_path / "app"
    paths = write_library(generate(program, "spike_list", target=target), str(app / LIBRARY), "s2nn")
    names = sorted(os.path.basename(p) for p in paths)
    assert "CMakeLists.txt" in names and "model.c" in names and not [n for n in names if n.endswith(".ld")]
    (app / "CMakeLists.txt").write_text(APP_CMAKE)
    (app / "main.c").write_text(docs_main_c())
    return app


@needs_arm
@needs_cmake
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m0plus"])
def test_cmake_library_and_the_docs_main_build_with_the_generated_toolchain(program, tmp_path, target):
    """The drop-in folder (no board files) is a static library s2_model for
    CMake; with the toolchain file it writes, the docs' main.c links
    against it into a bare-metal ELF for the target."""
    app = _library_app(program, tmp_path, target)
    build = _cmake_build(app, app / LIBRARY / toolchain_name(target))
    assert (build / LIBRARY / f"lib{LIBRARY}.a").is_file() and (build / "app").is_file()
    head = subprocess.run(["arm-none-eabi-readelf", "-A", str(build / "app")], capture_output=True, text=True).stdout
    assert ("v6S-M" if target == "cortex-m0plus" else "v7E-M") in head, head


@needs_cmake
def test_cmake_library_of_generic_runs_the_docs_main_on_the_host(s2nn, program, tmp_path):
    """``generic`` with the host compiler: the docs' main.c classifies a
    blank image as TFLM does (its exit status is the top-1 class)."""
    app = _library_app(program, tmp_path, GENERIC)
    assert toolchain_name(GENERIC) is None
    build = _cmake_build(app)
    got = subprocess.run([str(build / "app")]).returncode
    x = quantize_inputs(s2nn.flatbuffer, np.zeros((1, 28, 28, 1), np.float32))
    ref, _ = tflm_outputs(s2nn.flatbuffer, x)
    assert got == int(np.argmax(ref[0]))


@needs_arm
@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4"])
def test_arduino_library_compiles(program, tmp_path, target):
    """library.properties and src/ with the sources: every .c compiles with
    the target's flags, and a C++ sketch includes model.h."""
    lib = tmp_path / LIBRARY
    write_arduino(generate(program, "spike_list", target=target), str(lib), "s2nn")
    props = dict(l.split("=", 1) for l in (lib / "library.properties").read_text().splitlines())
    assert props["name"] == LIBRARY and props["includes"] == "model.h" and target in props["sentence"]
    assert {"version", "author", "maintainer", "paragraph", "category", "url", "architectures"} <= set(props)
    src = lib / "src"
    assert sorted(os.listdir(src)) == sorted(["model.c", "model.h", "s2mcu.h", "s2mcu_internal.h", *KERNEL_SOURCES])
    flags = TARGETS[target].cpu_flags
    proc = subprocess.run([ARM_CC, *flags, "-Os", "-std=c99", "-Wall", "-Werror", "-Wno-unused-function", "-c",
                           "model.c", *KERNEL_SOURCES], cwd=str(src), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "sketch.cpp").write_text('#include "model.h"\nvoid setup() {}\n'
                                         "void loop() { s2_model_invoke(); (void)s2_model_output(); }\n")
    proc = subprocess.run(["arm-none-eabi-g++", *flags, "-Os", "-Wall", "-Werror", "-I", str(src), "-c",
                           str(tmp_path / "sketch.cpp"), "-o", str(tmp_path / "sketch.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------ one artefact


def _export_folder(tmp_path, s2nn):
    """What python -m export writes that export.mcu reads."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model_int8.tflite").write_bytes(s2nn.flatbuffer)
    fmt = {"file": "model_int8.tflite", **artefact_figures(s2nn)}
    report = {"model": "runs/qs/final.keras", "formats": {"int8": fmt},
              "checks": {"passed": True, "failed": [], "results": []}}
    (folder / "export_report.json").write_text(json.dumps(report))
    return folder, report


def test_the_export_records_what_the_c_is_generated_from(s2nn):
    """sha256 of the file and, per neuron, its spike tensor and two int8
    codes: exactly the conversion's spike codes."""
    figures = artefact_figures(s2nn)
    assert figures["sha256"] == sha256(s2nn.flatbuffer)
    table = figures["spike_codes"]
    assert table == spike_code_table(s2nn) and set(table) <= set(s2nn.spike_tensors)
    assert {int(e["tensor"]): tuple(e["codes"]) for e in table.values()} == spike_codes(s2nn) != {}


def test_load_verified_reads_the_exact_file_and_its_spike_tensors(s2nn, tmp_path):
    folder, _ = _export_folder(tmp_path, s2nn)
    for path in (folder, folder / "model_int8.tflite"):
        v = load_verified(str(path))
        assert v.flatbuffer == s2nn.flatbuffer and v.codes == spike_codes(s2nn) and v.checks_passed is True
        assert v.name == "final" and v.sha256 == sha256(s2nn.flatbuffer)
        assert spike_codes(v) == v.codes    # run_mcu takes it as it takes a conversion
    # the report describes another file: refused, whichever way it is named
    (folder / "model_int8.tflite").write_bytes(s2nn.flatbuffer + b"\0")
    for path in (folder, folder / "model_int8.tflite"):
        with pytest.raises(VerifiedTfliteError, match="describes another model_int8.tflite"):
            load_verified(str(path))


def test_a_tflite_without_its_export_has_dense_layouts_only(s2nn, tmp_path):
    lone = tmp_path / "lone" / "m.tflite"
    lone.parent.mkdir()
    lone.write_bytes(s2nn.flatbuffer)
    v = load_verified(str(lone))
    assert v.codes == {} and v.checks_passed is None and "dense layouts only" in v.spike_source
    (tmp_path / "old").mkdir()
    stale, _ = _export_folder(tmp_path / "old", s2nn)
    report = json.loads((stale / "export_report.json").read_text())
    del report["formats"]["int8"]["spike_codes"]
    (stale / "export_report.json").write_text(json.dumps(report))
    with pytest.raises(VerifiedTfliteError, match="predates the spike tensors"):
        load_verified(str(stale))
    assert load_verified(str(stale / "model_int8.tflite")).codes == {}
    with pytest.raises(VerifiedTfliteError, match="does not exist"):
        load_verified(str(tmp_path / "nowhere"))


def test_summary_of_a_model_that_failed_its_export_checks():
    """The MCU table of an export whose checks failed says so, row by row,
    not just "bit-exact"."""
    core = {"board": "mps2-an386", "instructions": {"mean": 5e6}, "instructions_dense": {"mean": 7e6},
            "spike_vs_dense": 0.7, "flash_bytes": 1000, "ram_bytes": 900, "arena_bytes": 800, "stack_bytes": 100,
            "bit_exact": {"equal": 8, "images": 8}, "deterministic": True, "per_layer": []}
    report = {"layers": 3, "spike_layers": [], "tflite_bytes": 2000, "tflm_arena_bytes": 900, "host": {},
              "cores": {"cortex-m4": core}, "export_checks": {"passed": False, "failed": "int8.tflm.agreement 50%"}}
    text = format_summary(report)
    assert "THE MODEL FAILED ITS EXPORT CHECKS (int8.tflm.agreement 50%)" in text
    row = [l for l in text.splitlines() if l.strip().startswith("cortex-m4")][0]
    assert "8/8" in row and row.endswith("model FAILED export checks")
    report["export_checks"]["passed"] = True
    assert "FAILED" not in format_summary(report)


def test_cli_refuses_an_unknown_core_listing_every_target(tmp_path):
    valid = ",".join(MCU_TARGETS)
    for module, args in (("export", ["--model", "m.keras", "--output_dir", str(tmp_path), "--mcu", "cortex-m9"]),
                         ("export.mcu", ["--export_dir", str(tmp_path), "--output_dir", str(tmp_path),
                                         "--cores", "cortex-m4,cortex-m9"])):
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"takes a comma-separated subset of {valid}, got" in lines[0] and "cortex-m9" in lines[0], lines[0]


def test_cli_export_dir_must_be_an_export(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "export.mcu", "--export_dir", str(tmp_path), "--output_dir",
                           str(tmp_path / "o"), "--cores", ""], cwd=REPO, capture_output=True, text=True)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "model_int8.tflite' does not exist" in lines[0], lines


def test_verified_tflite_reports_its_source(s2nn, tmp_path):
    folder, _ = _export_folder(tmp_path, s2nn)
    v = load_verified(str(folder))
    assert isinstance(v, VerifiedTflite) and v.source()["sha256"] == sha256(s2nn.flatbuffer)
    assert v.source()["export_checks_passed"] is True and "export_report.json" in v.source()["spike_tensors"]
