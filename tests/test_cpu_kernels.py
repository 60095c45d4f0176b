"""The compiled CPU loops of yoso_np.cpu_kernels against their NumPy twins (bit-identical results), and both against
an independent reference: a float64 formula written out here, or test_lsh's brute force."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from scipy.special import erfc

from tests.gradcheck import assert_close
from tests.test_lsh import brute_force, cumulation_inputs
from yoso_np import cpu_kernels, lsh

attention = importlib.import_module("yoso_np.layers.attention")
activations = importlib.import_module("yoso_np.layers.activations")
norm = importlib.import_module("yoso_np.layers.norm")
numba_needed = pytest.mark.skipif(cpu_kernels.collision_probability() is None,
                                  reason="needs numba (and not YOSO_NP_NUMBA=0)")


def collision_formula(s, tau):
    """(1 - arccos(s)/pi)^tau in float64."""
    return (1 - np.arccos(np.clip(s.astype(np.float64), -1, 1)) / np.pi) ** tau


def cosines(shape, seed=0):
    s = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    above_one = np.nextafter(np.float32(1), np.float32(2))
    edge = [1, -1, 0, -0.0, above_one, -above_one, np.nextafter(np.float32(1), np.float32(0)), 0.5, -0.5, 1e-30, -1e-30]
    s.reshape(-1)[:len(edge)] = edge
    return s


@numba_needed
@pytest.mark.parametrize("tau", range(1, 25))
def test_compiled_collision_probability_is_bit_identical_to_numpy(tau):
    s = cosines((37, 53), seed=tau)
    expected = s.copy()
    attention.collision_probability(expected, tau, (np.empty_like(s), np.empty_like(s)))
    got = s.copy()
    cpu_kernels.collision_probability()(got, tau, attention._NEG_ACOS_POLY_OVER_PI_F32)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    # the float32 arccos polynomial is within 1.1e-6 for tau <= 24 (measured); cosines a rounding error outside
    # [-1, 1] are only required to give no NaN
    inside = np.abs(s) <= 1
    assert_close(got[inside], collision_formula(s, tau)[inside], rtol=0, atol=1.5e-6, name=f"tau {tau}")


@numba_needed
def test_expectation_blocks_take_the_compiled_loop_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((300, 16)).astype(np.float32) for _ in range(2))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    v = rng.standard_normal((300, 8)).astype(np.float32)
    assert attention._compiled_weights(np, np.float32, 9) is not None
    compiled = attention.expectation_cumulation(q, k, v, 9)
    monkeypatch.setattr(attention, "_compiled_weights", lambda *args: None)
    np.testing.assert_array_equal(compiled, attention.expectation_cumulation(q, k, v, 9))
    expected = collision_formula(q.astype(np.float64) @ k.astype(np.float64).T, 9) @ v.astype(np.float64)
    assert_close(compiled, expected, rtol=1e-5, atol=2e-6, name="YOSO-E cumulation")


@numba_needed
def test_compiled_gelu_is_bit_identical_to_numpy(monkeypatch):
    x = (3 * np.random.default_rng(2).standard_normal((70, 301))).astype(np.float32)
    edge = [0, -0.0, 1e-30, -1e-30, 15, -15, 40, -40, 3e38, -3e38, np.inf, -np.inf]
    x.reshape(-1)[:len(edge)] = edge
    got = np.empty_like(x)
    cpu_kernels.gelu()(x, got, activations._GELU_TAIL_POLY_F32)
    expected = np.empty_like(x)
    with np.errstate(over="ignore", invalid="ignore"):  # +-inf give NaN (0 * inf) on both sides
        activations._gelu_float32_into(x, expected, np.empty_like(x))
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    finite = np.isfinite(x)
    x64 = x[finite].astype(np.float64)
    exact = x64 * 0.5 * erfc(-x64 / np.sqrt(2))
    assert np.abs(got[finite] - exact).max() < 4.5e-7  # the documented bound of the float32 GELU
    x[0, 0] = np.nan
    cpu_kernels.gelu()(x, got, activations._GELU_TAIL_POLY_F32)
    assert np.isnan(got[0, 0])
    # and through activation(): the compiled loop in one call, the NumPy passes in blocks, each also over x itself
    x = (3 * np.random.default_rng(3).standard_normal((300, 1000))).astype(np.float32)
    y, cache = activations.activation("gelu", x)
    assert cache[1] is x
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(cpu_kernels, "gelu", lambda: None)
        np.testing.assert_array_equal(y, activations.activation("gelu", x)[0])
        x_copy = x.copy()
        y_over, cache = activations.activation("gelu", x_copy, overwrite_x=True)
        assert cache is None and np.shares_memory(y_over, x_copy)
        np.testing.assert_array_equal(y_over, y)


@numba_needed
@pytest.mark.parametrize("shape", [(2, 3, 13), (2, 700, 768)])  # a remainder past the 8 accumulators; threaded rows
def test_compiled_layer_norm_matches_numpy(monkeypatch, shape):
    rng = np.random.default_rng(4)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    x[0, 0] = 7.0  # a constant row: variance 0, output = bias
    p = {"weight": rng.standard_normal(shape[-1]).astype(np.float32),
         "bias": rng.standard_normal(shape[-1]).astype(np.float32)}
    y, (_, cached_x, mean, rstd) = norm.layer_norm(p, x, 1e-5)
    monkeypatch.setattr(cpu_kernels, "layer_norm", lambda: None)
    y_np, (_, _, mean_np, rstd_np) = norm.layer_norm(p, x, 1e-5)
    assert cached_x is x and y.shape == y_np.shape and mean.shape == rstd.shape == rstd_np.shape == shape[:-1] + (1,)
    assert y.dtype == mean.dtype == rstd.dtype == np.float32
    # only the order of the two sums differs: a few float32 ulps
    np.testing.assert_allclose(mean, mean_np, rtol=1e-6)
    np.testing.assert_allclose(rstd, rstd_np, rtol=2e-6)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[0, 0], p["bias"])
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=-1, keepdims=True)
    exact = centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + 1e-5) * p["weight"] + p["bias"]
    assert_close(y, exact, rtol=1e-5, atol=1e-5, name="compiled")
    assert_close(y_np, exact, rtol=1e-5, atol=1e-5, name="numpy")


@numba_needed
@pytest.mark.parametrize("shape", [(2, 3, 13), (2, 700, 768)])
def test_compiled_layer_norm_backward_against_numpy_and_float64(monkeypatch, shape):
    rng = np.random.default_rng(6)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    p = {"weight": rng.standard_normal(shape[-1]).astype(np.float32),
         "bias": rng.standard_normal(shape[-1]).astype(np.float32)}
    _, cache = norm.layer_norm(p, x, 1e-5)
    dx, grads = norm.layer_norm_backward(dy, cache)
    monkeypatch.setattr(cpu_kernels, "layer_norm_backward", lambda: None)
    dx_np, grads_np = norm.layer_norm_backward(dy, cache)
    assert dx.dtype == grads["weight"].dtype == grads["bias"].dtype == np.float32 and dx.shape == shape
    np.testing.assert_allclose(dx, dx_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(grads["bias"], grads_np["bias"])  # the same row-by-row sums
    np.testing.assert_allclose(grads["weight"], grads_np["weight"], rtol=1e-5, atol=1e-5)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    xhat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    g = dy64 * p["weight"]
    exact = (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / np.sqrt(
        x64.var(-1, keepdims=True) + 1e-5)
    assert_close(dx, exact, rtol=1e-4, atol=1e-5, name="compiled dx")
    assert_close(grads["weight"], (dy64 * xhat).sum(axis=(0, 1)), rtol=1e-4, atol=1e-4, name="compiled dweight")


@numba_needed
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-12])
def test_layer_norm_of_rows_with_variance_near_eps(monkeypatch, eps):
    """Rows whose variance is of the order of eps, where eps inside or outside the square root differ by percents;
    both paths against the float64 formula."""
    rng = np.random.default_rng(5)
    x = (0.5 + rng.standard_normal((4, 6, 24)) * np.geomspace(1e-4, 1e-1, 6)[:, None]).astype(np.float32)
    p = {"weight": (1 + 0.1 * rng.standard_normal(24)).astype(np.float32),
         "bias": (0.1 * rng.standard_normal(24)).astype(np.float32)}
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=-1, keepdims=True)
    exact = centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps) * p["weight"] + p["bias"]
    compiled, _ = norm.layer_norm(p, x, eps)
    monkeypatch.setattr(cpu_kernels, "layer_norm", lambda: None)
    numpy_path, _ = norm.layer_norm(p, x, eps)
    # float32 rounding of x - mean is amplified by rstd (up to 1e4 here): compare with that scale
    assert_close(compiled, exact, rtol=0, atol=2e-3, name="compiled")
    assert_close(numpy_path, exact, rtol=0, atol=2e-3, name="numpy")


def cumulation_case(seed, n_k, code_len, dtype=np.float32, d_w=8):
    """test_lsh's cumulation inputs, big enough for the twins' table layouts to differ; the first 30 queries share
    their keys' codes. In the argument order of lsh_weighted_cumulation."""
    qm, qc, km, kc, v, qw, kw, capacity = cumulation_inputs(seed, code_len, n_q=250, n_k=n_k, d_v=19, d_w=d_w,
                                                             num_hash=11, dtype=dtype, few_codes=False)
    qc[:, :30] = kc[:, :30]
    return qm, qc, qw, km, kc, kw, v, capacity


@numba_needed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_k,code_len", [(300, 6), (40, 9)])  # NumPy path: table by code / by present code
def test_compiled_lsh_cumulation_is_bit_identical_to_numpy(monkeypatch, dtype, n_k, code_len):
    query_mask, query_codes, _, key_mask, key_codes, _, value, capacity = cumulation_case(n_k, n_k, code_len, dtype)
    args = (query_mask, query_codes, key_mask, key_codes, value, capacity)
    compiled = lsh.lsh_cumulation(*args)
    monkeypatch.setattr(cpu_kernels, "lsh_cumulation", lambda: None)
    expected = lsh.lsh_cumulation(*args)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_array_equal(compiled, expected)
    assert_close(compiled, brute_force(query_mask, query_codes, key_mask, key_codes, value), rtol=1e-5, atol=1e-5,
                 name="brute force")


@numba_needed
@pytest.mark.parametrize("n_k,code_len,d_w", [(300, 6, 7), (40, 9, 8)])
def test_compiled_lsh_weighted_cumulation_matches_numpy(monkeypatch, n_k, code_len, d_w):
    args = cumulation_case(n_k + d_w, n_k, code_len, d_w=d_w)
    compiled = lsh.lsh_weighted_cumulation(*args)
    monkeypatch.setattr(cpu_kernels, "lsh_weighted_cumulation", lambda: None)
    expected = lsh.lsh_weighted_cumulation(*args)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-5)  # the same pairs summed in another order
    qm, qc, qw, km, kc, kw, v, _ = args
    assert_close(compiled, brute_force(qm, qc, km, kc, v, qw, kw), rtol=1e-5, atol=1e-5, name="brute force")


@pytest.fixture
def fresh_kernels(monkeypatch):
    """The kernels chosen and compiled anew under the test's patches; afterwards the patches undone, then the
    kernels chosen anew again from the session's environment."""
    caches = (cpu_kernels._njit, cpu_kernels._compiled)
    for cached in caches:
        cached.cache_clear()
    yield
    monkeypatch.undo()
    for cached in caches:
        cached.cache_clear()


@numba_needed
def test_compiles_without_a_writable_cache_location(monkeypatch, fresh_kernels):
    from numba.core import caching
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # as on a read-only install with no home
    s = cosines((4, 5))
    expected = s.copy()
    attention.collision_probability(expected, 9, (np.empty_like(s), np.empty_like(s)))
    cpu_kernels.collision_probability()(s, 9, attention._NEG_ACOS_POLY_OVER_PI_F32)
    np.testing.assert_array_equal(s, expected)


def _cache_probe_loop(x):  # a loop only the cache tests compile
    for i in range(x.size):
        x[i] += 1.0


@numba_needed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="numba's user cache folder follows XDG on Linux")
def test_compiled_loops_are_cached_outside_the_package(monkeypatch, tmp_path):
    # beside the source, the cache would outlive a pip uninstall and shadow a later editable install
    import numba
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    in_tree = Path(__file__).parent / "__pycache__"
    for stale in in_tree.glob("*_cache_probe_loop*"):
        stale.unlink()
    cpu_kernels._njit()(_cache_probe_loop)(np.zeros(3))
    assert numba.config.CACHE_DIR == ""  # numba's setting restored
    assert [p.name for p in tmp_path.rglob("*.nbi")] == [f"{Path(__file__).stem}._cache_probe_loop-"
                                                       f"{_cache_probe_loop.__code__.co_firstlineno}.py"
                                                       f"{sys.version_info.major}{sys.version_info.minor}.nbi"]
    assert not list(in_tree.glob("*_cache_probe_loop*"))


@numba_needed
def test_compiled_loops_are_cached_where_numba_cache_dir_says(monkeypatch, tmp_path):
    import numba
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    cpu_kernels._njit()(_cache_probe_loop)(np.zeros(3))
    assert numba.config.CACHE_DIR == str(tmp_path)
    assert len(list(tmp_path.rglob("*_cache_probe_loop*.nbi"))) == 1


def test_numba_switched_off_by_environment(monkeypatch, fresh_kernels):
    monkeypatch.setenv("YOSO_NP_NUMBA", "0")
    assert cpu_kernels.collision_probability() is None and cpu_kernels.gelu() is None
    assert cpu_kernels.lsh_cumulation() is None and cpu_kernels.lsh_weighted_cumulation() is None
    assert cpu_kernels.fast_hash() is None and cpu_kernels.layer_norm() is None
    assert cpu_kernels.gelu_grad() is None and cpu_kernels.layer_norm_backward() is None
    assert attention._compiled_weights(np, np.float32, 9) is None
    assert activations._float32_into("gelu") is activations._gelu_float32_into


def test_only_float32_numpy_weights_are_compiled():
    assert attention._compiled_weights(np, np.float64, 9) is None
    assert attention._compiled_weights(np, np.float32, 32) is None


@numba_needed
def test_compiled_gelu_grad_against_float64_and_numpy(monkeypatch):
    """dy * (Phi(x) + x phi(x)): the compiled loop against the float64 formula and the NumPy path, also through
    activation_backward on the parts shared out to the cores."""
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((300, 1000))).astype(np.float32)
    x.reshape(-1)[:8] = [0, -0.0, 1e-30, -1e-30, 9, -9, 40, -40]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    slope = activations.activation_backward(np.ones_like(x), ("gelu", x))
    x64 = x.astype(np.float64)
    exact = 0.5 * erfc(-x64 / np.sqrt(2)) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)
    assert np.abs(slope - exact).max() < 2.5e-6  # the tail polynomial's ~2e-6 relative error near 0, as the forward's
    got = activations.activation_backward(dy, ("gelu", x))
    assert_close(got, dy * slope, rtol=1e-6, atol=0, name="dy * gelu'")
    dy_copy = dy.copy()
    over = activations.activation_backward(dy_copy, ("gelu", x), overwrite_dy=True)  # by blocks through scratch
    assert np.shares_memory(over, dy_copy)
    np.testing.assert_array_equal(over, got)
    monkeypatch.setattr(cpu_kernels, "gelu_grad", lambda: None)
    assert np.abs(got - activations.activation_backward(dy, ("gelu", x))).max() < 2.5e-6 * np.abs(dy).max()
    nan_x = np.array([np.nan, 1.0], np.float32)
    out = np.empty_like(nan_x)
    cpu_kernels._compiled(cpu_kernels._gelu_grad_loop)(nan_x, np.ones_like(nan_x), out, activations._GELU_TAIL_POLY_F32,
                                                        np.float32(activations.INV_SQRT_2PI))
    assert np.isnan(out[0]) and np.isfinite(out[1])
