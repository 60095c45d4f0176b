"""Which array module an array belongs to (NumPy or CuPy), and moving arrays between them.

CuPy is imported lazily: nothing here touches it until a CuPy array or ``device="cuda"`` shows up.
"""
import contextlib
import mmap
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


# The pool of CPU workers, one per process. Three things make it safe to embed:
# - it is created under a lock (two first calls from two threads make one pool);
# - a fork child drops the parent's pool (its threads did not survive the fork) and makes its own on first use;
# - the single-threaded BLAS its workers need is counted: the first parallel_map in sets it, the last one out
#   restores what the host had, however the calls of several threads overlap (threadpoolctl's limits are
#   process-wide, so per-call `with limit` blocks left out of order would leave the host's BLAS single-threaded).
_POOL = None
_POOL_LOCK = threading.Lock()
_WORKER = threading.local()  # .active is True on the pool's own threads
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMITER = None


def cpu_threads():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _mark_worker():
    _WORKER.active = True


def _pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="yoso_np", initializer=_mark_worker)
        return _POOL


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS limited to one thread while any caller is inside; the last one out restores the host's setting."""
    global _BLAS_USERS, _BLAS_LIMITER
    with _BLAS_LOCK:
        if _BLAS_USERS == 0:
            _BLAS_LIMITER = _blas_controller().limit(limits=1, user_api="blas")
            _release_blas_control()
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0:
                limiter, _BLAS_LIMITER = _BLAS_LIMITER, None
                limiter.restore_original_limits()
                _release_blas_control()


def _release_blas_control():
    """threadpoolctl 3.8 lets one thread at a time change OpenBLAS's process-wide setting (the first to set a
    limit, until it lets go; the others' calls do nothing), so the thread that sets single-threaded BLAS and
    the one that restores it may differ only if each lets go after its change. Not while this thread is inside
    a `with threadpool_limits` of its own: that block still needs its control to restore the host's setting."""
    import threadpoolctl

    ownership = getattr(threadpoolctl, "CONTROLLING_THREAD_OWNERSHIP", None)
    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None and getattr(ownership, "count", 0) <= 0:
        clear()


def _after_fork_in_child():
    """The child has only the forking thread: the pool's threads are gone, and a lock another thread held at the
    fork would stay held forever. A fork inside a parallel section hands the child the host's BLAS setting back."""
    global _POOL, _POOL_LOCK, _BLAS_LOCK, _BLAS_USERS, _BLAS_LIMITER, _BLAS_CONTROLLER_LOCK
    _POOL, _POOL_LOCK, _BLAS_LOCK, _BLAS_CONTROLLER_LOCK = None, threading.Lock(), threading.Lock(), threading.Lock()
    limiter, _BLAS_USERS, _BLAS_LIMITER = _BLAS_LIMITER, 0, None
    if limiter is not None:
        try:
            limiter.restore_original_limits()
        except Exception:  # pragma: no cover - a BLAS that cannot be set in the child keeps its limit
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_map(fn, items, xp):
    """[fn(i) for i in items]. On NumPy: on one Python thread per CPU core, since NumPy and BLAS release the GIL.
    Each thread gets a single-threaded BLAS (threadpoolctl): Python threads on top of BLAS's own threads were 7x
    slower here (they contend); split this way, 12 heads of YOSO-E at n = 4096 took 0.74 s instead of 1.2 s on 2
    cores. On CuPy: a plain loop (the GPU runs each call in parallel already).

    Safe from any number of threads at once (their items share the one pool) and in forked children."""
    items = list(items)
    workers = min(len(items), cpu_threads())
    # a call from one of the pool's own threads runs in place: waiting on the pool from inside it could deadlock
    if xp is not np or workers < 2 or getattr(_WORKER, "active", False):
        return [fn(i) for i in items]
    pool = _pool()
    caller_errstate = np.geterr()  # np.errstate is per thread: the workers follow the caller's

    def call(item):
        with np.errstate(**caller_errstate):
            return fn(item)

    with single_threaded_blas():
        return list(pool.map(call, items))


# Big batches run on the pool's threads alone: BLAS single-threaded for the whole call, each product and pass split
# over the pool by split_range. OpenBLAS's own workers spin on the other core for ~0.1 s after each threaded product,
# so work handed to the pool between products waited for a core (the attention's stacks took 45-55 ms of a 32 x 128
# forward instead of 28). Whole 2-layer forwards, pool-only against BLAS's threads: 4 x 128 tokens 1.03x the time,
# 1 x 512 0.99, 8 x 128 0.94, 2 x 512 0.93, 1 x 1024 0.93.
POOL_MIN_TOKENS = 1024
_SECTION = threading.local()  # .on: this thread is inside a pool_section


@contextlib.contextmanager
def pool_section(tokens):
    """A NumPy model call over ``tokens`` (batch x n) tokens: from POOL_MIN_TOKENS with more than one core, BLAS is
    single-threaded inside and split_range shares work out to the pool; otherwise nothing changes. Nested sections
    and calls from the pool's own threads add nothing."""
    if tokens < POOL_MIN_TOKENS or cpu_threads() < 2 or in_pool_section() or getattr(_WORKER, "active", False):
        yield
        return
    with single_threaded_blas():
        _SECTION.on = True
        try:
            yield
        finally:
            _SECTION.on = False


def in_pool_section():
    return getattr(_SECTION, "on", False)


def split_range(fn, size, xp, min_chunk=1):
    """[fn(slice) for the contiguous chunks of range(size)]: one chunk per core on the pool inside a pool_section
    (chunks of at least min_chunk), else the whole range in one call on this thread."""
    chunks = min(cpu_threads(), size // max(min_chunk, 1)) if in_pool_section() else 1
    if chunks < 2:
        return [fn(slice(0, size))]
    return parallel_map(fn, [slice(size * i // chunks, size * (i + 1) // chunks) for i in range(chunks)], xp)


_BLAS_CONTROLLER = None
_BLAS_CONTROLLER_LOCK = threading.Lock()


def _blas_controller():
    """threadpoolctl's view of the loaded BLAS, found once (2 ms); limiting through it then costs ~15 us instead
    of the 0.4 ms a fresh threadpool_limits spends finding the libraries again."""
    global _BLAS_CONTROLLER
    with _BLAS_CONTROLLER_LOCK:
        if _BLAS_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        return _BLAS_CONTROLLER


def _zeros_in_small_pages(shape, dtype):
    """np.zeros(shape, dtype) in an anonymous mapping of its own. NumPy asks the kernel for 2 MiB pages for arrays from
    4 MiB (madvise), so a scatter of a few rows into a big table (the word embeddings' gradient, 154 MB) had every
    2 MiB page zeroed on first touch: 79-350 ms of a 32 x 128 training step, against 18 ms in 4 KiB pages."""
    count = int(np.prod(shape))
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes < 1 << 22 or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def scatter_add_rows(num_rows, index, values):
    """out[r] = sum of values[i] over i with index[i] == r; index (k,) ints, values (k, width).
    The gradient of a row gather (embedding lookup). np.add.at is slow on NumPy, and np.add.reduceat costs about
    10 us a segment, so rows hit once are assigned and only the repeated ones summed by reduceat; CuPy has a
    native scatter_add."""
    xp = array_module(values)
    shape = (num_rows, values.shape[1])
    out = xp.zeros(shape, dtype=values.dtype) if xp is not np else _zeros_in_small_pages(shape, values.dtype)
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
