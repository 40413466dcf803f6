"""export.tflite.verify.rounding_tolerance: the float32 summation-error bound that
tells a float32 model's rounding ties from real runtime disagreements."""

from types import SimpleNamespace

import numpy as np
import pytest

from export.tflite.verify import rounding_tolerance


def _orders(terms):
    """float32 sums of ``terms`` (last axis) in three orders: left to right,
    right to left, and pairwise (NumPy's)."""
    t = terms.astype(np.float32)
    left = np.zeros(t.shape[:-1], np.float32)
    right = np.zeros(t.shape[:-1], np.float32)
    for i in range(t.shape[-1]):
        left = left + t[..., i]
        right = right + t[..., -1 - i]
    return left, right, t.sum(axis=-1, dtype=np.float32)


@pytest.mark.parametrize("cin,scale", [(1, 1.0), (32, 0.05), (128, 3.0)])
def test_conv_bound_covers_float32_summation_orders(cin, scale):
    rng = np.random.default_rng(cin)
    channels = 8
    kernel = (rng.standard_normal((3, 3, cin, channels)) * scale).astype(np.float32)
    theta = rng.standard_normal(channels).astype(np.float32)
    spikes = (rng.random((200, 3 * 3 * cin)) < 0.3).astype(np.float32)
    terms = spikes[:, :, None] * kernel.reshape(-1, channels)[None]  # (N, K, C)
    terms = np.concatenate([terms, -np.broadcast_to(theta, (200, 1, channels))], axis=1)
    sums = _orders(np.moveaxis(terms, 1, -1))
    exact = np.moveaxis(terms, 1, -1).astype(np.float64).sum(axis=-1)
    folded = SimpleNamespace(get_layer=lambda n: {
        "act": SimpleNamespace(thresholds=theta),
        "conv": SimpleNamespace(kernel=kernel, use_bias=False)}[n])
    plan = SimpleNamespace(neurons={"act": SimpleNamespace(kind="conv", producer="conv")})
    bound = rounding_tolerance(folded, plan, "act", exact)
    assert bound.shape == exact.shape
    spread = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a in sums for b in sums)
    assert spread > 0  # the orders really differ
    assert np.all(np.abs(sums[0] - sums[1]) <= bound)
    assert np.all(np.abs(sums[0] - exact) <= bound)
    # and it is a bound on rounding, not a blanket tolerance: far below the
    # potentials' own scale
    assert float(np.max(bound)) < 1e-3 * float(np.max(np.abs(kernel).reshape(-1, channels).sum(0)) + 1)


def test_tensor_neuron_bound_is_a_few_ulps():
    theta = np.array([0.5, -2.0], np.float32)
    folded = SimpleNamespace(get_layer=lambda n: SimpleNamespace(thresholds=theta))
    u = np.array([[0.5, -2.0], [1e6, 0.0]])
    bound = rounding_tolerance(folded, None, "act", u)
    np.testing.assert_allclose(bound, 4 * 2.0 ** -24 * (np.abs(u) + np.abs(theta)))
    assert bound[0, 0] > 0 and bound[0, 0] < 1e-6


def test_agreement_classification_is_the_argmax():
    from export.metrics import agreement_report

    ref = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]])
    out = np.array([[0.0, 1.0, 0.0], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.9, 0.0, 0.1]])
    result = agreement_report(ref, out)
    assert result == {"task": "classification", "examples": 4, "agreement": 0.5}
    assert agreement_report(ref[:0], out[:0])["agreement"] == 1.0


def test_agreement_regression_is_rms_within_one_percent_of_the_range():
    """Per example RMS(y - r) <= 1 % of (max r - min r) over the set; the
    tolerance is about 2.5 steps of an int8 output spanning that range."""
    from export.metrics import REGRESSION_TOLERANCE, agreement_report

    rng = np.random.default_rng(0)
    ref = rng.uniform(-2.0, 3.0, (50, 640))
    span = ref.max() - ref.min()
    tol = REGRESSION_TOLERANCE * span
    assert tol == pytest.approx(2.55 * span / 255, rel=0.01)
    out = ref.copy()
    out[:10] += 0.99 * tol                       # RMS just inside
    out[10:20, :64] += tol * np.sqrt(10) * 1.01  # RMS just outside (one tenth of the outputs)
    out[20:30] += rng.choice([-1, 1], (10, 640)) * 0.9 * tol
    result = agreement_report(ref, out, "regression")
    assert result["agreement"] == pytest.approx(40 / 50)
    assert result["tolerance"] == pytest.approx(tol) and result["reference_range"] == pytest.approx(span)
    assert result["rms_max"] == pytest.approx(tol * 1.01, rel=1e-6)
    assert "score_spearman" not in result
    # with the inputs: the rank correlation of the per-example reconstruction errors (anomaly scores)
    x = ref + rng.normal(0.0, 1.0, (50, 1)) * rng.normal(0.0, 1.0, (50, 640))
    assert agreement_report(ref, ref, "regression", inputs=x)["score_spearman"] == pytest.approx(1.0)
    assert agreement_report(ref, out, "regression", inputs=x)["score_spearman"] > 0.9
    reversed_scores = agreement_report(ref, x - (x - ref)[::-1], "regression", inputs=x)["score_spearman"]
    assert reversed_scores < 0.5


def test_agreement_rejects_bad_input():
    from export.metrics import agreement_report

    with pytest.raises(ValueError, match="task must be one of classification, regression"):
        agreement_report(np.zeros((2, 2)), np.zeros((2, 2)), "ranking")
    with pytest.raises(ValueError, match="differ in shape"):
        agreement_report(np.zeros((2, 2)), np.zeros((2, 3)))
