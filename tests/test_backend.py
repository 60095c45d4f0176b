"""backend helpers: parallel_map keeps order and the caller's floating-point error state in its threads."""
import warnings

import numpy as np
import pytest

from yoso_np.backend import parallel_map, scatter_add_rows


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
    # the last two tables pass 4 MiB: zeros in a mapping of their own, a plain writable C-contiguous array
    for rows, k, width in ((50, 200, 3), (5, 3, 3), (2, 100, 3), (1000, 1, 3), (20000, 3000, 64), (9000, 0, 64)):
        index = rng.integers(0, rows, k)
        values = rng.standard_normal((k, width)).astype(np.float32)
        expected = np.zeros((rows, width), np.float32)
        np.add.at(expected, index, values)
        got = scatter_add_rows(rows, index, values)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable and got.shape == (rows, width)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        got += 1  # an optimizer updates it in place
        np.testing.assert_allclose(got, expected + 1, rtol=1e-6, atol=1e-6)


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
