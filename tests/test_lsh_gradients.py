"""Statistics of the sampled (LSH) backward: with Gaussian hyperplanes two unit vectors collide under tau bits
with probability (1 - arccos(q.k)/pi)**tau, so the LSH estimates of dQ, dK, dV are unbiased for the expectation
surrogate's, and their error shrinks like 1/sqrt(num_hash)."""
import importlib

import numpy as np

from yoso_np import lsh

attention = importlib.import_module("yoso_np.layers.attention")


class Config:
    hash_code_len, use_fast_hash, lsh_backward = 4, False, True


def errors(num_hash, seeds, n=48, d=8):
    rng = np.random.default_rng(0)
    q, _ = attention.l2_normalize(rng.standard_normal((1, 1, n, d)).astype(np.float32))
    k, _ = attention.l2_normalize(q + 0.6 * rng.standard_normal((1, 1, n, d)).astype(np.float32))
    v, g = (rng.standard_normal((1, 1, n, d)).astype(np.float32) for _ in range(2))
    exact = attention.expectation_cumulation_backward(g[0, 0], q[0, 0], k[0, 0], v[0, 0], Config.hash_code_len)
    mask = np.ones((1, n), np.int32)
    config = type("C", (Config,), {"num_hash": num_hash})
    out = []
    for seed in seeds:
        codes = lsh.hash_codes(mask, q[0], mask, k[0], num_hash=num_hash, hash_code_len=Config.hash_code_len,
                               use_fast_hash=False, rng=np.random.default_rng(seed))
        sampled = attention.sampling_cumulation_backward(g, q, k, v, (mask, mask, *codes), config)
        out.append([np.linalg.norm(s[0, 0] - e) / np.linalg.norm(e) for s, e in zip(sampled, exact)])
    return np.mean(out, axis=0)  # mean relative error of (dQ, dK, dV)


def test_lsh_gradients_converge_like_one_over_sqrt_m():
    coarse = errors(16, range(6))
    fine = errors(256, range(6))
    assert np.all(fine < 0.2), fine  # measured: 0.57 at m=16, 0.29 at 64, 0.15 at 256, 0.074 at 1024
    ratio = coarse / fine  # 1/sqrt(m): sqrt(256 / 16) = 4
    assert np.all((ratio > 2.8) & (ratio < 5.5)), ratio
