"""benchmarks/mcu_zoo.py without training or QEMU: its flags (each bad one
is one ``error:`` line, exit 2) and the pure helpers that turn run_mcu
reports into rows, cells, tables and the exit status."""

import pytest

from benchmarks import mcu_zoo as Z


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        Z.parse_args(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m benchmarks.mcu_zoo: error: "), lines
    return lines[0]


def test_defaults_are_every_model_every_target_and_the_relu_twins_on_m4_m55():
    from export.mcu.targets import MCU_TARGETS
    from tests import user_models, zoo

    args = Z.parse_args([])
    assert args.models == list(zoo.ZOO) + list(user_models.MODELS)
    assert args.cores == list(MCU_TARGETS) and args.relu_cores == ["cortex-m4", "cortex-m55"]
    assert Z.relu_names(args.models) == list(zoo.MLPERF_TINY)
    assert args.measure_images <= args.images <= args.test_examples
    args = Z.parse_args(["--models", "mlp,resnet8,mlp", "--cores", "generic", "--relu_cores", "none"])
    assert args.models == ["mlp", "resnet8"] and args.cores == ["generic"] and args.relu_cores == []
    assert Z.relu_names(args.models) == ["resnet8"]


@pytest.mark.parametrize("argv, words", [
    (["--models", "resnet9"], "unknown model 'resnet9'"),
    (["--cores", "cortex-m85"], "unknown core 'cortex-m85'"),
    (["--relu_cores", "generic"], "or none; got 'generic'"),
    (["--images", "0"], "expected a positive integer"),
    (["--images", "4", "--measure_images", "5"], "--measure_images 5 exceeds --images 4"),
    (["--train_examples", "100", "--calibration", "200"], "--calibration 200 exceeds --train_examples 100"),
    (["--test_examples", "50"], "--host_images 100 exceeds --test_examples 50"),
    (["--test_examples", "3"], "--images 4 exceeds --test_examples 3"),
])
def test_a_bad_flag_is_one_error_line(capsys, argv, words):
    assert words in _error(capsys, argv)


def test_one_line_and_classify():
    from export.errors import InputError
    from export.mcu.build import ToolError
    from export.mcu.lower import UnsupportedModelError

    assert Z.one_line(ValueError("a\n  b\tc ")) == "a b c"
    assert Z.one_line(KeyError()) == "KeyError"
    assert Z.one_line(ValueError("x" * 50), limit=10) == "xxxxxxx..."
    assert Z.classify(UnsupportedModelError("op GATHER has no kernel")) == "refused"
    assert Z.classify(InputError("no")) == "refused"
    assert Z.classify(ToolError("gcc failed")) == "error"
    assert Z.classify(RuntimeError("bug")) == "error"


def test_compact_counts_and_sizes():
    assert [Z.compact(n) for n in (None, 12, 1234, 999_499, 2_465_020, 14_085_430)] == \
        ["-", "12", "1k", "999k", "2.47M", "14.1M"]
    assert Z.kib(2048) == "2.0" and Z.kib(None) == "-"


def _core(instr=2_000_000, dense=8_000_000, equal=4, images=4, stack=900, **extra):
    return {"board": "mps2-an386", "instructions": {"mean": instr}, "instructions_dense": {"mean": dense},
            "bit_exact": {"images": images, "equal": equal}, "dense_bit_exact": {"images": images, "equal": images},
            "flash_bytes": 40960, "ram_bytes": 8192, "static_ram_bytes": 7000, "stack_bytes": stack,
            "deterministic": True, **extra}


def _row(model="resnet8", activation="s2nn", cores=None, **extra):
    r = {"model": model, "activation": activation, "status": "ok", "stage": None, "reason": None,
         "parameters": 1234, "export": {"spike_layers": 3, "tflite_bytes": 5000},
         "accuracy": {"task": "classification", "keras_accuracy": 0.5, "int8_accuracy": 0.25, "int8_agreement": 0.75},
         "export_checks": {"passed": True, "failed": []}, "cores": cores if cores is not None else {}}
    r.update(extra)
    return r


def test_cells():
    e = _core()
    assert Z.instruction_cell(e) == "2.00M / 8.00M"
    assert Z.memory_cell(e) == "40.0 / 8.0 4/4"
    linked = {"board": None, "compiled_only": True, "why": "does not fit its stand-in board microbit",
              "flash_bytes": 4096, "static_ram_bytes": 20480}
    assert Z.instruction_cell(linked) == "linked only" and Z.memory_cell(linked) == "4.0 / 20.0+stack"
    generic = dict(linked, why="portable C", bit_exact={"images": 100, "equal": 100})
    assert Z.instruction_cell(generic) == "host run" and Z.memory_cell(generic) == "4.0 / 20.0+stack 100/100"
    refused = {"refused": "the model does not fit mps2-an386 (cortex-m4): ..."}
    assert Z.instruction_cell(refused) == "does not fit" == Z.memory_cell(refused)
    assert Z.instruction_cell(None) == "" == Z.memory_cell(None)
    bad_dense = _core(dense_bit_exact={"images": 4, "equal": 3})
    assert Z.memory_cell(bad_dense).endswith("4/4 (dense 3/4)")
    assert Z.accuracy_cells(_row()) == ["50.0 %", "25.0 %", "75.0 %"]
    regression = _row(accuracy={"task": "regression", "keras_mse": 0.01, "int8_mse": 0.02, "int8_agreement": 1.0})
    assert Z.accuracy_cells(regression) == ["MSE 0.0100", "MSE 0.0200", "100.0 %"]
    assert Z.accuracy_cells(_row(accuracy=None)) == ["-", "-", "-"]


def test_mismatches_overruns_status_and_exit():
    from export.mcu.firmware import BOARDS

    cores = {"cortex-m4": _core(equal=3), "cortex-m55": _core(stack=BOARDS["cortex-m55"].stack_bytes),
             "generic": {"compiled_only": True, "bit_exact": {"images": 10, "equal": 10}}}
    host = {"dense": {"images": 10, "equal": 10}, "spike_list": {"images": 10, "equal": 9}}
    assert Z.core_mismatches(cores, host) == ["host spike_list", "cortex-m4"]
    assert Z.stack_overruns(cores) == ["cortex-m55"]
    assert Z.status_cell(_row()) == "ok" and Z.exit_status([_row()]) == 0
    refused = _row(status="refused", stage="mcu", reason="op GATHER has no kernel", cores=None)
    assert Z.status_cell(refused) == "refused (mcu): op GATHER has no kernel" and Z.exit_status([refused]) == 0
    failed = _row(export_checks={"passed": False, "failed": ["int8.litert.agreement"]},
                  cores={"cortex-m4": {"refused": "does not fit"}})
    assert Z.status_cell(failed) == "export checks FAILED: int8.litert.agreement; M4: does not fit"
    assert Z.exit_status([failed]) == 0
    assert Z.exit_status([_row(mismatches=["cortex-m4"])]) == 1
    assert Z.exit_status([_row(stack_overrun=["cortex-m55"])]) == 1
    assert Z.exit_status([_row(status="error", stage="export", reason="boom")]) == 1


def test_tables_have_a_row_per_model_and_a_column_per_core():
    cores = ["cortex-m4", "cortex-m55", "generic"]
    rows = [_row(cores={"cortex-m4": _core(), "cortex-m55": _core(500_000, 1_000_000),
                        "generic": {"compiled_only": True, "bit_exact": {"images": 10, "equal": 10},
                                    "flash_bytes": 1024, "static_ram_bytes": 1024}}),
            _row("resnet8", "relu", cores={"cortex-m4": _core(), "cortex-m55": _core()}),
            _row("transpose_autoencoder", status="refused", stage="export", reason="Conv2DTranspose ...", cores=None)]
    lines = Z.format_tables(rows, cores)
    tables = [[l for l in block.splitlines() if l.startswith("|")] for block in "\n".join(lines).split("\n\n")]
    assert [len(t) for t in tables] == [5, 5, 5]       # head, rule, three rows
    assert [c.strip() for c in tables[1][0].split("|")[1:-1]] == ["model", "M4", "M55", "generic"]
    assert "resnet8 (ReLU twin)" in tables[1][3] and "500k / 1.00M" in tables[1][2]
    assert "refused (export): Conv2DTranspose ..." in tables[0][4]
    assert all(len(set(len(l) for l in t)) == 1 for t in tables)   # padded columns
