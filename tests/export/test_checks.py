"""export.metrics: the agreement metric, the correlation that tells an export
at chance; export.checks: the judging of a report against BOUNDS (closed-form cases)."""

import copy

import numpy as np
import pytest

from export import checks
from export.checks import BOUNDS, CheckResult, evaluate
from export.metrics import agreement_fraction, agreement_report, output_correlation, relative_error


def test_classification_agreement_is_same_top1():
    ref = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    out = np.array([[0.0, 0.9, 0.8], [0.0, 5.0, 0.0], [0.1, 0.0, 0.2], [0.5, 0.4, 0.0]])
    assert agreement_fraction(ref, out, "classification") == 0.75


def test_regression_agreement_is_rms_within_one_percent_of_the_reference_range():
    ref = np.zeros((4, 100))
    ref[:, 0] = 10.0  # range 10: tolerance RMS 0.1
    out = ref.copy()
    out[1] += 0.0999       # RMS just under 0.1: agrees
    out[2] += 0.1001       # just over
    out[3, :50] += 0.2     # RMS 0.2 / sqrt(2) = 0.1414: over
    assert agreement_fraction(ref, out, "regression") == 0.5
    for i, expected in enumerate([1.0, 1.0, 0.0, 0.0]):   # example by example
        assert agreement_fraction(ref[i:i + 1], out[i:i + 1], "regression") == expected
    assert agreement_report(ref[1:2], out[1:2], "regression")["rms_max"] < 0.1
    with pytest.raises(ValueError, match="task must be one of classification, regression"):
        agreement_fraction(ref, out, "auto")


def test_output_correlation_tells_faithful_from_chance():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10)) + np.arange(10)  # class biases: what a constant predictor reproduces
    assert output_correlation(ref, ref + 0.01 * rng.normal(size=ref.shape)) > 0.999
    blind = np.tile(ref.mean(0), (200, 1)) + 0.01 * rng.normal(size=ref.shape)  # ignores the input
    assert abs(output_correlation(ref, blind)) < 0.2
    assert output_correlation(ref, rng.permutation(ref)) < 0.2  # right values, wrong inputs
    # a reference that never varies: only an equally constant output follows it
    const = np.ones((5, 3))
    assert output_correlation(const, const) == 1.0 and output_correlation(const, rng.normal(size=(5, 3))) == 0.0


def _report(**over):
    fmt = {"litert": {"agreement_with_keras": 0.95, "correlation_with_keras": 0.99},
           "tflm": {"agreement_with_keras": 0.96, "correlation_with_keras": 0.99},
           "spikes": {"two_level": True, "neurons_equal_given_equal_inputs": True}}
    report = {"spiking": True, "task": "classification",
              "fold": {"agreement": 1.0, "spike_mismatches": {"a": {"count": 1, "elements": 100000},
                                                              "b": {"count": 0, "elements": 100000}}},
              "formats": {"float32": {**copy.deepcopy(fmt), "litert": {"agreement_with_keras": 1.0, "correlation_with_keras": 1.0},
                                      "tflm": {"agreement_with_keras": 1.0, "correlation_with_keras": 1.0}},
                          "int8": copy.deepcopy(fmt)}}
    report.update(over)
    return report


def test_evaluate_passes_a_good_export_and_names_each_check():
    result = evaluate(_report())
    assert result["passed"] and result["failed"] == [] and result["bounds"] == BOUNDS
    names = [r["name"] for r in result["results"]]
    assert names[:2] == ["fold.spikes", "fold.outputs"]
    for fmt in ("float32", "int8"):
        assert {f"{fmt}.spikes.two_level", f"{fmt}.spikes.neurons_equal", f"{fmt}.litert.agreement",
                f"{fmt}.litert.correlation", f"{fmt}.tflm.agreement", f"{fmt}.tflm.correlation"} <= set(names)
    assert result["results"][0]["value"] == pytest.approx(5e-6)


@pytest.mark.parametrize("change, failed", [
    (lambda r: r["formats"]["int8"]["spikes"].update(two_level=False), ["int8.spikes.two_level"]),
    (lambda r: r["formats"]["int8"]["spikes"].update(neurons_equal_given_equal_inputs=False),
     ["int8.spikes.neurons_equal"]),
    (lambda r: r["formats"]["int8"]["litert"].update(agreement_with_keras=0.10, correlation_with_keras=0.02),
     ["int8.litert.agreement", "int8.litert.correlation"]),  # at chance (the compare int16x8: 8-10 %)
    (lambda r: r["formats"]["float32"]["tflm"].update(agreement_with_keras=0.97), ["float32.tflm.agreement"]),
    (lambda r: r["fold"]["spike_mismatches"]["a"].update(count=50), ["fold.spikes"]),
    (lambda r: r["fold"].update(agreement=0.9), ["fold.outputs"]),
])
def test_evaluate_fails_each_broken_figure(change, failed):
    report = _report()
    change(report)
    result = evaluate(report)
    assert not result["passed"] and result["failed"] == failed


def test_bounds_move_with_quantization_aware_fine_tuning():
    report = _report()
    report["formats"]["int8"]["litert"]["agreement_with_keras"] = 0.95  # fine post-training, not after QAT
    assert evaluate(report)["passed"]
    report["qat"] = {"steps": 10}
    assert evaluate(report)["failed"] == ["int8.litert.agreement", "int8.tflm.agreement"]


def test_relative_error_tells_faithful_from_broken():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 8))
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref, ref + 0.05 * rng.normal(size=ref.shape)) == pytest.approx(0.05, rel=0.1)
    assert relative_error(ref, rng.permutation(ref)) == pytest.approx(np.sqrt(2), rel=0.1)   # ignores the input
    assert relative_error(ref, 2 * ref) == pytest.approx(1.0, rel=0.01)                       # off in scale
    assert relative_error(ref + 100, ref + 100) == 0.0                                        # offset-free spread
    const = np.ones((5, 3))
    assert relative_error(const, const) == 0.0 and relative_error(const, const + 1) == float("inf")


def test_a_regression_export_is_judged_by_relative_error_after_post_training_quantization():
    """A post-training integer regression output is judged by its relative
    error (the 1 % agreement is a fidelity figure: a faithful int8 autoencoder
    measures 20-95 % on it); float32 and int8 after QAT keep their agreement."""
    report = _report(task="regression")
    for fmt in ("float32", "int8"):
        for rt in ("litert", "tflm"):
            report["formats"][fmt][rt]["relative_error_vs_keras"] = 0.0 if fmt == "float32" else 0.12
    report["formats"]["int8"]["litert"]["agreement_with_keras"] = 0.20
    result = evaluate(report)
    names = [r["name"] for r in result["results"]]
    assert result["passed"] and "int8.litert.relative_error" in names and "int8.litert.agreement" not in names
    assert "float32.litert.agreement" in names
    report["formats"]["int8"]["tflm"]["relative_error_vs_keras"] = 1.3     # at chance
    assert evaluate(report)["failed"] == ["int8.tflm.relative_error"]
    report["qat"] = {"steps": 10}                                          # after QAT: agreement again
    assert evaluate(report)["failed"] == ["int8.litert.agreement", "int8.tflm.agreement"]
    # the same 20 % agreement fails a classifier
    classifier = _report()
    classifier["formats"]["int8"]["litert"]["agreement_with_keras"] = 0.20
    assert evaluate(classifier)["failed"] == ["int8.litert.agreement"]


def test_a_relu_model_has_no_fold_or_spike_checks():
    report = _report(spiking=False, fold={"skipped": "no spiking neurons"})
    for entry in report["formats"].values():
        entry.pop("spikes")
    names = [r["name"] for r in evaluate(report)["results"]]
    assert not [n for n in names if n.startswith("fold") or ".spikes." in n]


def test_reporter_checks_are_judged_with_the_export_s():
    class Reporter:
        name = "mcu"

        @staticmethod
        def checks(fmt, figures):
            return [CheckResult("outputs_bit_equal", figures["equal"], True, "is", bool(figures["equal"]),
                                "the C code gives TFLM's outputs"),
                    {"name": "cycles", "value": 5, "bound": 10, "compare": "<=", "passed": True, "what": "budget"}]

    report = _report()
    report["formats"]["int8"]["mcu"] = {"equal": False}
    result = evaluate(report, [Reporter()])
    assert result["failed"] == ["int8.mcu.outputs_bit_equal"]
    assert "int8.mcu.cycles" in [r["name"] for r in result["results"]]
    assert checks.failure_line(result) == ("int8.mcu.outputs_bit_equal no (needs yes: the C code gives TFLM's "
                                           "outputs)")


def test_failure_line_gives_value_and_bound():
    report = _report()
    report["formats"]["int8"]["litert"]["agreement_with_keras"] = 0.5
    report["fold"]["spike_mismatches"]["a"]["count"] = 100
    line = checks.failure_line(evaluate(report))
    assert line == ("fold.spikes 0.0005 (needs <= 0.0001); int8.litert.agreement 50.00% (needs >= 80.00%); "
                    + checks.QAT_ADVICE)


def test_a_failed_post_training_int8_check_names_qat_epochs():
    """The line of a post-training int8 export at chance says what works:
    quantization-aware fine-tuning, as the flag on the command line; after
    fine-tuning (or for a float32 failure) there is no such advice."""
    from export.cli import harness

    report = _report()
    report["formats"]["int8"]["tflm"]["agreement_with_keras"] = 0.09
    line = harness.one_line(checks.ExportCheckError(checks.failure_line(evaluate(report))))
    assert line.endswith("fine-tune it quantization-aware before converting, --qat_epochs 1"), line
    report["qat"] = {"steps": 10}
    assert "qat" not in checks.failure_line(evaluate(report)).replace("int8.tflm", "")
    report = _report()
    report["formats"]["float32"] = report["formats"].pop("int8")
    report["formats"]["float32"]["litert"]["agreement_with_keras"] = 0.5
    assert evaluate(report)["advice"] is None
