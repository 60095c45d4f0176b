"""Which array module an array belongs to (NumPy or CuPy), and moving arrays between them.

CuPy is imported lazily: nothing here touches it until a CuPy array or ``device="cuda"`` shows up.
"""
import os
import sys
import threading

import numpy as np


def cupy_module():
    """Import and return cupy, or raise a clear ImportError naming the extra to install."""
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "the GPU path needs CuPy: pip install 'yoso_np[gpu]' (cupy-cuda12x) or cupy-cuda13x"
        ) from exc
    return cupy


def is_cupy_array(x):
    """True for a cupy.ndarray; never imports cupy (a CuPy array can only exist once cupy is imported)."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def array_module(*arrays):
    """numpy, or cupy if any of ``arrays`` is a CuPy array (``None`` entries are skipped)."""
    for a in arrays:
        if is_cupy_array(a):
            return sys.modules["cupy"]
    return np


def check_device(device):
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


def device_of(x):
    return "cuda" if is_cupy_array(x) else "cpu"


def to_device(x, device):
    """Move one array to ``device`` ('cpu' -> NumPy, 'cuda' -> CuPy); other values pass through unchanged."""
    check_device(device)
    if device == "cpu":
        return x.get() if is_cupy_array(x) else x
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        return cupy_module().asarray(x)
    return x


def to_numpy(x):
    """A NumPy array (or the value unchanged if it is not an array)."""
    return to_device(x, "cpu")


_POOL = None


def cpu_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_map(fn, items, xp, calls_blas=True):
    """[fn(i) for i in items]. On NumPy: on one Python thread per CPU core, since NumPy and BLAS release the GIL.
    With calls_blas, each thread gets a single-threaded BLAS (threadpoolctl): Python threads on top of BLAS's own
    threads were 7x slower here (they contend); split this way, 12 heads of YOSO-E at n = 4096 took 0.74 s instead
    of 1.2 s on 2 cores. Pass calls_blas=False for pure elementwise work, which needs no limit. On CuPy: a plain
    loop (the GPU runs each call in parallel already)."""
    global _POOL
    items = list(items)
    workers = min(len(items), cpu_threads())
    # a call from one of the pool's own threads runs in place: waiting on the pool from inside it could deadlock
    if xp is not np or workers < 2 or threading.current_thread().name.startswith("yoso_np"):
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    if _POOL is None:
        _POOL = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="yoso_np")
    caller_errstate = np.geterr()  # np.errstate is per thread: the workers follow the caller's

    def call(item):
        with np.errstate(**caller_errstate):
            return fn(item)

    if not calls_blas:
        return list(_POOL.map(call, items))
    with _blas_controller().limit(limits=1, user_api="blas"):
        return list(_POOL.map(call, items))


# inputs of at least this many tokens (batch x n) run their products and per-head work on yoso_np's threads, each
# with a single-threaded BLAS; shorter ones leave the threading of their products to BLAS. Our pool's dispatch costs
# 0.15-0.8 ms, which the products of a short input do not repay, and mixing the two within one forward was worst of
# all (1.3-1.5x slower at n = 128-512: every switch finds BLAS's workers asleep).
OWN_THREADS_MIN_TOKENS = 1024


def matmul(a, b, bias=None, split=True):
    """a @ b (+ bias, a row added to every row) for 2-D a and b. On NumPy with split, the larger of a's rows and
    b's columns is split over the pool's threads, each running a single-threaded BLAS, instead of BLAS threading
    the product itself: OpenBLAS's workers spin for ~0.1 s after every call (its THREAD_TIMEOUT, 2**28 cycles),
    and in that window they took a core from the threaded attention after the projections. At n = 4096 the whole
    model's sampling attention took 1.15 s with the products split against 1.53 s, while the split products ran
    3-7% slower than BLAS's own threading (each thread packs all of b); whole forwards of 1024 and 2048 tokens took
    0.88-0.94x the time, both attention modes. Results differ from an unsplit product's by float rounding only."""
    xp = array_module(a, b)
    rows, cols = a.shape[0], b.shape[1]
    parts = min(cpu_threads(), max(rows, cols))
    if xp is not np or parts < 2 or not split:
        out = a @ b
        if bias is not None:
            out += bias
        return out
    out = np.empty((rows, cols), dtype=np.result_type(a, b))
    by_rows = rows >= cols
    bounds = np.linspace(0, rows if by_rows else cols, parts + 1).astype(int)

    def product(i):
        part = slice(bounds[i], bounds[i + 1])
        if by_rows:
            np.matmul(a[part], b, out=out[part])
            if bias is not None:
                out[part] += bias
        else:
            np.matmul(a, b[:, part], out=out[:, part])
            if bias is not None:
                out[:, part] += bias[part]

    parallel_map(product, range(parts), np)
    return out


_BLAS_CONTROLLER = None


def _blas_controller():
    """threadpoolctl's view of the loaded BLAS, found once (2 ms); limiting through it then costs ~15 us instead
    of the 0.4 ms a fresh threadpool_limits spends finding the libraries again."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER


def scatter_add_rows(num_rows, index, values):
    """out[r] = sum of values[i] over i with index[i] == r; index (k,) ints, values (k, width).
    The gradient of a row gather (embedding lookup). np.add.at is slow on NumPy, and np.add.reduceat costs about
    10 us a segment, so rows hit once are assigned and only the repeated ones summed by reduceat; CuPy has a
    native scatter_add."""
    xp = array_module(values)
    out = xp.zeros((num_rows, values.shape[1]), dtype=values.dtype)
    if index.size == 0:
        return out
    if xp is not np:
        import cupyx

        cupyx.scatter_add(out, index, values)
        return out
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
    sizes = np.diff(np.r_[starts, index.size])
    lone = sizes == 1
    out[sorted_index[starts[lone]]] = values[order[starts[lone]]]
    if not lone.all():
        repeated = np.repeat(~lone, sizes)  # sorted positions that belong to a repeated row
        run_sizes = sizes[~lone]
        out[sorted_index[starts[~lone]]] = np.add.reduceat(values[order[repeated]],
                                                           np.cumsum(run_sizes) - run_sizes, axis=0)
    return out
