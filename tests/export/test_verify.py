"""export.verify.rounding_tolerance: the float32 summation-error bound that
tells a float32 model's rounding ties from real runtime disagreements."""

from types import SimpleNamespace

import numpy as np
import pytest

from export.verify import rounding_tolerance


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
