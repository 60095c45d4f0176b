"""backend helpers: parallel_map keeps order and the caller's floating-point error state in its threads; matmul's
split products are the whole product."""
import warnings

import numpy as np
import pytest

from yoso_np import backend
from yoso_np.backend import matmul, parallel_map, scatter_add_rows


def overflow(i):
    return np.float32(1e38) * np.float32(10 + i)


def test_parallel_map_keeps_order_and_the_callers_errstate():
    assert parallel_map(lambda i: i * i, range(7), np) == [i * i for i in range(7)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            assert all(np.isinf(parallel_map(overflow, range(4), np)))
        with pytest.raises(RuntimeWarning):
            parallel_map(overflow, range(4), np)


def test_scatter_add_rows_matches_add_at():
    rng = np.random.default_rng(0)
    for rows, k in ((50, 200), (5, 3), (2, 100), (1000, 1)):
        index = rng.integers(0, rows, k)
        values = rng.standard_normal((k, 3))
        expected = np.zeros((rows, 3))
        np.add.at(expected, index, values)
        np.testing.assert_allclose(scatter_add_rows(rows, index, values), expected)


def test_parallel_map_called_from_its_own_workers_runs_in_place():
    """Nested calls (e.g. a threaded activation inside a threaded head loop) must not wait on a busy pool; a
    regression would hang, so the call runs on a daemon thread with a deadline."""
    import threading

    result = []

    def outer(i):
        return sum(parallel_map(lambda j: i * j, range(4), np))

    caller = threading.Thread(target=lambda: result.append(parallel_map(outer, range(6), np)), daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert result == [[6 * i for i in range(6)]], "nested parallel_map deadlocked"


@pytest.mark.parametrize("threads", [2, 3])
def test_matmul_split_over_threads_is_the_whole_product(monkeypatch, threads):
    """Split by a's rows (tall a), by b's columns (wide b, e.g. the LM head on a short input), with a bias, on a
    transposed view (the weight gradient dy.T @ x). Integer-valued floats make every summation order exact."""
    monkeypatch.setattr(backend, "cpu_threads", lambda: threads)
    rng = np.random.default_rng(0)
    ints = lambda *shape: rng.integers(-8, 9, shape).astype(np.float64)
    for a, b in ((ints(37, 5), ints(5, 4)), (ints(3, 6), ints(6, 41)), (ints(11, 7).T, ints(11, 9))):
        bias = ints(b.shape[1])
        np.testing.assert_array_equal(matmul(a, b), a @ b)
        np.testing.assert_array_equal(matmul(a, b, bias), a @ b + bias)
        np.testing.assert_array_equal(matmul(a, b, bias, split=False), a @ b + bias)
