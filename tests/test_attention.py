"""YOSO-E weights in float32 (accuracy of the arccos fit, rounding outside [-1, 1], block boundaries), and sampling
attention that does not depend on how its rows are split over threads."""
import importlib
import math

import numpy as np
import pytest

attention = importlib.import_module("yoso_np.layers.attention")


def weights(s, tau):
    s = np.array(s, dtype=np.float32)
    scratch = (np.empty_like(s), np.empty_like(s))
    return attention.collision_probability(s, tau, scratch)


@pytest.mark.parametrize("tau", [1, 2, 5, 9, 16])
def test_float32_weights_match_float64_arccos(tau):
    s = np.linspace(-1, 1, 400001).astype(np.float32)  # exact for the float32 cosines themselves
    exact = (1 - np.arccos(s.astype(np.float64)) / math.pi) ** tau
    got = weights(s, tau)
    assert got.dtype == np.float32
    assert np.abs(got - exact).max() < 1e-6 * max(tau, 1)


def test_rounding_outside_the_unit_interval_gives_no_nan():
    got = weights([1 + 3e-7, -1 - 3e-7, 1.0, -1.0, 0.0, -0.0], 9)
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got[2:], [1.0, 0.0, 0.5 ** 9, 0.5 ** 9], atol=1e-7)


def test_blocks_and_slices_cover_every_row(monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 7 * 50)  # 7-row blocks
    monkeypatch.setattr(attention, "SLICE_ELEMENTS", 3 * 50)  # 3-row slices: ragged ends
    rng = np.random.default_rng(0)
    q, _ = attention.l2_normalize(rng.standard_normal((45, 6)).astype(np.float32))
    k, _ = attention.l2_normalize(rng.standard_normal((50, 6)).astype(np.float32))
    v = rng.standard_normal((50, 4)).astype(np.float32)
    exact = ((1 - np.arccos(np.clip(q.astype(np.float64) @ k.T, -1, 1)) / math.pi) ** 9) @ v
    np.testing.assert_allclose(attention.expectation_cumulation(q, k, v, 9), exact, rtol=1e-5, atol=1e-6)


def test_sampling_does_not_depend_on_how_the_rows_are_split(monkeypatch):
    """The hash matrices are drawn before the heads are split over threads, so a seed gives one answer."""
    from yoso_np import YosoConfig

    rng = np.random.default_rng(1)
    b, h, n, d = 2, 3, 300, 16  # n >= 256: the rows go to threads
    q, _ = attention.l2_normalize(rng.standard_normal((b, h, n, d)).astype(np.float32))
    k, _ = attention.l2_normalize(rng.standard_normal((b, h, n, d)).astype(np.float32))
    v = rng.standard_normal((b, h, n, d)).astype(np.float32)
    mask = np.ones((b, n), np.float32)
    mask[1, 250:] = 0
    config = YosoConfig(hidden_size=h * d, num_attention_heads=h, use_expectation=False, num_hash=8)
    results = []
    for threads in (1, 2, 4):
        monkeypatch.setattr(attention, "cpu_threads", lambda: threads)
        out, (_, _, q_codes, k_codes) = attention.sampling_cumulation(q, k, v, mask, config, np.random.default_rng(5))
        results.append((out, q_codes, k_codes))
    for out, q_codes, k_codes in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(q_codes, results[0][1])
        np.testing.assert_array_equal(k_codes, results[0][2])
