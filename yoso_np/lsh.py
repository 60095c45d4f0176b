"""YOSO's sampling primitives: hash codes and LSH cumulation (Zeng et al., ICML 2021, section 3).

Shapes (batch is whatever the caller folds into it, e.g. batch * heads):
    masks           [batch, n]                   bool or integer 0/1 (1 = keep)
    x, value        [batch, n, d]                float
    hash codes      [batch, n, num_hash]         int32 in [0, 2**hash_code_len)
    dmat (fast)     [batch, 3, num_part, d]      float32 of +-1, num_part = max(1, ceil(num_hash / (d // L)))
    rmat (Gaussian) [batch, d, num_hash * L]     float32 standard normal

Hash f of a vector is an L-bit code whose bit i is the sign bit of projection f * L + i. Masked vectors get code 0.
NumPy inputs run the vectorised NumPy code below; CuPy inputs run the CUDA kernels of ``raw_kernels``
(Gaussian hashing is a matmul on either backend, so it has no kernel of its own).
"""
import functools
import math

import numpy as np

from . import cpu_kernels
from .backend import is_cupy_array, scatter_add_rows

MAX_HASH_CODE_LEN = 24  # codes are summed exactly in float32 (< 2**24) and stored in int32


# ---------------------------------------------------------------------------------------------- input checks
def _backend(**arrays):
    """The array module shared by all ``arrays``; TypeError for non-arrays or a NumPy/CuPy mix."""
    on_gpu = {}
    for name, a in arrays.items():
        if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
            raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {type(a).__name__}")
        on_gpu[name] = is_cupy_array(a)
    if len(set(on_gpu.values())) > 1:
        gpu = [n for n, g in on_gpu.items() if g]
        cpu = [n for n, g in on_gpu.items() if not g]
        raise TypeError(f"arrays must all be NumPy or all CuPy: {gpu} are CuPy but {cpu} are NumPy")
    if any(on_gpu.values()):
        import cupy
        return cupy
    return np


def _check_int(name, value, low, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def _check_float(name, a, ndim):
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")


def _check_shape(name, a, expected):
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(a.shape)}")


def _check_mask(name, mask, batch, n, check_values=True):
    """Validate a [batch, n] 0/1 mask and return it as booleans (check_values=False: dtype and shape only)."""
    if mask.dtype != bool and mask.dtype.kind not in "iu":
        raise TypeError(f"{name} must be bool or integer (0/1), got dtype {mask.dtype}")
    _check_shape(name, mask, (batch, n))
    if mask.dtype == bool:
        return mask
    if check_values and mask.size and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1, got values in [{int(mask.min())}, {int(mask.max())}]")
    return mask != 0


def _check_codes(name, codes, batch, n, capacity, check_values=True):
    if codes.dtype != np.int32:
        raise TypeError(f"{name} must be int32, got dtype {codes.dtype}")
    if codes.ndim != 3 or tuple(codes.shape[:2]) != (batch, n):
        raise ValueError(f"{name} must have shape ({batch}, {n}, num_hash), got {tuple(codes.shape)}")
    if codes.shape[2] < 1:
        raise ValueError(f"{name} must hold at least one hash (num_hash >= 1), got shape {tuple(codes.shape)}")
    if check_values and codes.size:  # reading the range back is a device sync on CuPy
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= capacity:
            raise ValueError(f"{name} must lie in [0, {capacity}) (hashtable_capacity), got values in [{low}, {high}]")


def _check_capacity(hashtable_capacity):
    cap = _check_int("hashtable_capacity", hashtable_capacity, 2, 2**MAX_HASH_CODE_LEN)
    if cap & (cap - 1):
        raise ValueError(f"hashtable_capacity must be 2**hash_code_len (a power of two), got {cap}")
    return cap


def _check_hash_params(num_hash, hash_code_len):
    return _check_int("num_hash", num_hash, 1), _check_int("hash_code_len", hash_code_len, 1, MAX_HASH_CODE_LEN)


def num_fast_hash_parts(num_hash, hash_code_len, dim):
    """How many Hadamard rounds fast_hash needs: each one yields dim // hash_code_len hashes."""
    return max(1, math.ceil(num_hash / (dim // hash_code_len)))


def _check_fast_hash_dim(dim, hash_code_len):
    if dim < 1 or dim & (dim - 1):
        raise ValueError(f"fast_hash needs a head dimension that is a power of two (pad x with zeros), got {dim}")
    if hash_code_len > dim:
        raise ValueError(f"hash_code_len must be <= the (padded) head dimension {dim} for fast_hash, "
                         f"got {hash_code_len}")


# ---------------------------------------------------------------------------------------------- hashing
def draw_hash_matrices(rng, batch, dim, num_hash, hash_code_len, use_fast_hash, xp=np):
    """Random hash matrices drawn where they are used (xp), by a generator seeded from ``rng``: NumPy's on the CPU,
    CuPy's on a GPU (no host-to-device copy per layer). A seed reproduces a draw on one backend; CPU and GPU draw
    different numbers.

    use_fast_hash: Dmat [batch, 3, num_part, dim] of random signs (float32 +-1; dim must be a power of two).
    otherwise:     R [batch, dim, num_hash * hash_code_len] standard normal (float32).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    batch = _check_int("batch", batch, 1)
    dim = _check_int("dim", dim, 1)
    num_hash, hash_code_len = _check_hash_params(num_hash, hash_code_len)
    seed = int(rng.integers(2**63))
    on_cpu = xp is np
    generator = np.random.default_rng(seed) if on_cpu else xp.random.RandomState(seed)
    if use_fast_hash:
        _check_fast_hash_dim(dim, hash_code_len)
        shape = (batch, 3, num_fast_hash_parts(num_hash, hash_code_len, dim), dim)
        uniform = generator.random(shape, dtype=np.float32) if on_cpu else \
            generator.random_sample(shape, dtype=np.float32)
        return xp.where(uniform < 0.5, np.float32(-1), np.float32(1))
    return generator.standard_normal((batch, dim, num_hash * hash_code_len), dtype=np.float32)


def _sylvester_hadamard(dim):
    h = np.ones((1, 1))
    while h.shape[0] < dim:
        h = np.kron([[1.0, 1.0], [1.0, -1.0]], h)
    return h


def hadamard_transform(a):
    """a @ H along the last axis, H the unnormalised Sylvester-Hadamard matrix (size a power of two).

    H_d = H_r (kron) H_c with r * c = d, so on a reshaped to [.., r, c] it is H_r @ A @ H_c: two small matmuls,
    d * (r + c) work per vector instead of d**2.
    """
    xp = _backend(a=a)
    dim = a.shape[-1]
    rows = 1 << ((dim.bit_length() - 1) // 2)
    h_rows, h_cols = (xp.asarray(_sylvester_hadamard(k), dtype=a.dtype) for k in (rows, dim // rows))
    return (xp.matmul(h_rows, a.reshape(-1, rows, dim // rows)) @ h_cols).reshape(a.shape)


def fast_hash_projection(dmat, num_hash, hash_code_len):
    """The [batch, d, num_hash * L] matrix R with x @ R = the projections fast_hash takes its bits from.

    Part p computes y = H D3 H D2 H D1 x, i.e. the row vector x @ (D1 H D2 H D3 H) (H is symmetric), and hash
    f = p * (d // L) + g takes columns g * L .. g * L + L - 1 of part p. The composed matrix is built by running the
    transform on the rows of the identity; its entries are integers below d**2, exact in float32 for d <= 4096, so
    x @ R differs from the sequential transform only by float rounding.
    """
    xp = _backend(dmat=dmat)
    batch, _, num_part, dim = dmat.shape
    exact = xp.float32 if dim <= 4096 else xp.float64
    signs = xp.asarray(dmat, dtype=exact)[:, :, :, None, :]        # [batch, 3, part, 1, d]
    m = xp.broadcast_to(xp.eye(dim, dtype=exact), (batch, num_part, dim, dim))
    for r in range(3):
        m = hadamard_transform(m * signs[:, r])                     # rows: e_i^T D1 H D2 H ...
    per_part = dim // hash_code_len
    f = np.arange(num_hash)[:, None]
    columns = (f // per_part) * dim + (f % per_part) * hash_code_len + np.arange(hash_code_len)
    m = m.transpose(0, 2, 1, 3).reshape(batch, dim, num_part * dim)
    return xp.ascontiguousarray(m[:, :, xp.asarray(columns.ravel())], dtype=xp.float32)


def _fast_hash_projections(dmat, num_hash, hash_code_len, max_floats=2**22):
    """fast_hash_projection one batch row at a time, computed a few rows at once (bounded memory for large d)."""
    batch, _, num_part, dim = dmat.shape
    rows = max(1, max_floats // (num_part * dim * dim))
    for start in range(0, batch, rows):
        yield from fast_hash_projection(dmat[start:start + rows], num_hash, hash_code_len)


def _sign_codes(x, projections, keep, num_hash, hash_code_len, rows_per_chunk=256):
    """codes[b, t, f] = sum_i [ (x[b, t] @ projections[b])[f * L + i] > 0 ] << i, and 0 where keep is False.

    projections: one [d, num_hash * L] matrix per batch row (an array or an iterable). Chunked over tokens so that
    a chunk's projections (256 x 576 floats for m = 64, L = 9) stay in L2 for the sign and code passes: 1.5x faster
    than 1024-token chunks with both cores busy. The bits are summed exactly by a float matmul.
    """
    xp = _backend(x=x)
    if xp is not np:  # one batched product for all rows and tokens: a few launches, no host data
        bits = xp.matmul(x, projections) > 0
        shifts = xp.arange(hash_code_len, dtype=xp.int32)
        bits = bits.reshape(x.shape[:2] + (num_hash, hash_code_len)).astype(xp.int32)
        codes = (bits << shifts).sum(-1, dtype=xp.int32)
        return xp.where(keep[:, :, None], codes, 0).astype(xp.int32, copy=False)
    n = x.shape[1]
    powers = xp.asarray(2.0 ** np.arange(hash_code_len), dtype=x.dtype)
    codes = xp.empty((x.shape[0], n, num_hash), dtype=xp.int32)
    for b, r in enumerate(projections):
        r = xp.ascontiguousarray(r, dtype=x.dtype)  # BLAS needs contiguous operands
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            bits = x[b, start:stop] @ r
            xp.greater(bits, 0, out=bits)
            codes[b, start:stop] = bits.reshape(stop - start, num_hash, hash_code_len) @ powers
    codes[~keep] = 0
    return codes


def _check_dmat(dmat, batch, dim, num_hash, hash_code_len, check_values=True):
    _check_float("dmat", dmat, 4)
    _check_shape("dmat", dmat, (batch, 3, num_fast_hash_parts(num_hash, hash_code_len, dim), dim))
    if check_values and dmat.size and not bool((_backend(dmat=dmat).abs(dmat) == 1).all()):
        raise ValueError("dmat must hold only +1 and -1 (random signs)")


def fast_hash(mask, x, dmat, num_hash, hash_code_len, *, check_values=True):
    """Hash codes from randomised Hadamard transforms (see module docstring); x's last dim a power of two.
    check_values=False skips the checks that read array values back (mask 0/1, dmat +-1; a device sync each on
    CuPy) for inputs the caller made itself; dtypes and shapes are always checked."""
    xp = _backend(mask=mask, x=x, dmat=dmat)
    _check_float("x", x, 3)
    batch, n, dim = x.shape
    num_hash, hash_code_len = _check_hash_params(num_hash, hash_code_len)
    _check_fast_hash_dim(dim, hash_code_len)
    _check_dmat(dmat, batch, dim, num_hash, hash_code_len, check_values)
    keep = _check_mask("mask", mask, batch, n, check_values)
    if xp is not np:
        from .raw_kernels import fast_hash as kernels
        return kernels.fast_hash(keep.astype(xp.int32), xp.ascontiguousarray(x, dtype=xp.float32),
                                 xp.ascontiguousarray(dmat, dtype=xp.float32), num_hash, hash_code_len)
    compiled = _compiled_fast_hash(x, keep, dmat, num_hash, hash_code_len)
    if compiled is not None:
        return compiled
    return _sign_codes(x, _fast_hash_projections(dmat, num_hash, hash_code_len), keep, num_hash, hash_code_len)


def _compiled_fast_hash(x, keep, dmat, num_hash, hash_code_len):
    """fast_hash by the compiled loop (cpu_kernels, the CUDA kernel's method) for float32 x, or None without numba.
    Its codes differ from the composed-matrix ones only where a projection is at rounding level. They come as a
    [batch, n, num_hash] view of hash-major memory, the layout the compiled cumulations read."""
    kernel = cpu_kernels.fast_hash() if x.dtype == np.float32 else None
    if kernel is None:
        return None
    codes = np.empty((x.shape[0], num_hash, x.shape[1]), dtype=np.int32)
    contiguous = np.ascontiguousarray
    kernel(contiguous(x), contiguous(keep), contiguous(dmat, dtype=np.float32), num_hash, hash_code_len, codes)
    return codes.transpose(0, 2, 1)


def _hash_major(codes):
    """[batch, n, num_hash] codes as the compiled loops read them: [batch, num_hash, n], C-contiguous (no copy for
    the compiled fast_hash's codes)."""
    return np.ascontiguousarray(codes.transpose(0, 2, 1))


def gaussian_hash(mask, x, rmat, num_hash, hash_code_len, *, check_values=True):
    """Hash codes from the signs of x @ rmat (hash f uses columns f * L .. f * L + L - 1, column f * L + i is bit i).
    check_values as fast_hash."""
    _backend(mask=mask, x=x, rmat=rmat)
    _check_float("x", x, 3)
    batch, n, dim = x.shape
    num_hash, hash_code_len = _check_hash_params(num_hash, hash_code_len)
    _check_float("rmat", rmat, 3)
    _check_shape("rmat", rmat, (batch, dim, num_hash * hash_code_len))
    keep = _check_mask("mask", mask, batch, n, check_values)
    return _sign_codes(x, rmat, keep, num_hash, hash_code_len)


def hash_dim(dim, hash_code_len, use_fast_hash):
    """The width the hash matrices of a head dim are drawn for: fast hashing zero-pads the head dim to the next
    power of two >= max(dim, hash_code_len), which leaves every projection unchanged in meaning."""
    return 1 << (max(dim, hash_code_len) - 1).bit_length() if use_fast_hash else dim


def _check_pair(query_mask, query, key_mask, key):
    xp = _backend(query_mask=query_mask, query=query, key_mask=key_mask, key=key)
    _check_float("query", query, 3)
    _check_float("key", key, 3)
    if key.shape[0] != query.shape[0] or key.shape[2] != query.shape[2]:
        raise ValueError(f"key must match query in batch and last dim: query {tuple(query.shape)}, "
                         f"key {tuple(key.shape)}")
    return xp


def hash_codes(query_mask, query, key_mask, key, *, num_hash, hash_code_len, use_fast_hash, rng):
    """(query_codes, key_codes) from ONE draw of hash matrices shared by queries and keys; any head dim works."""
    xp = _check_pair(query_mask, query, key_mask, key)
    num_hash, hash_code_len = _check_hash_params(num_hash, hash_code_len)
    batch, _, dim = query.shape
    matrices = draw_hash_matrices(rng, batch, hash_dim(dim, hash_code_len, use_fast_hash), num_hash, hash_code_len,
                                  use_fast_hash, xp)
    return hash_with(query_mask, query, key_mask, key, matrices, num_hash=num_hash, hash_code_len=hash_code_len,
                     use_fast_hash=use_fast_hash)


def hash_with(query_mask, query, key_mask, key, matrices, *, num_hash, hash_code_len, use_fast_hash, check_values=True):
    """(query_codes, key_codes) under given hash matrices (draw_hash_matrices for hash_dim(d, ...)), one per batch
    row, shared by queries and keys. On NumPy the fast-hash projection is composed once for both, and its rows for
    the zero padding are dropped instead of padding x."""
    xp = _check_pair(query_mask, query, key_mask, key)
    num_hash, hash_code_len = _check_hash_params(num_hash, hash_code_len)
    batch, _, dim = query.shape
    if not use_fast_hash:
        return (gaussian_hash(query_mask, query, matrices, num_hash, hash_code_len, check_values=check_values),
                gaussian_hash(key_mask, key, matrices, num_hash, hash_code_len, check_values=check_values))
    padded = hash_dim(dim, hash_code_len, True)
    if xp is not np:
        if padded != dim:
            pad = ((0, 0), (0, 0), (0, padded - dim))
            query, key = xp.pad(query, pad), xp.pad(key, pad)
        return (fast_hash(query_mask, query, matrices, num_hash, hash_code_len, check_values=check_values),
                fast_hash(key_mask, key, matrices, num_hash, hash_code_len, check_values=check_values))
    _check_dmat(matrices, batch, padded, num_hash, hash_code_len, check_values)
    query_keep = _check_mask("query_mask", query_mask, batch, query.shape[1], check_values)
    key_keep = _check_mask("key_mask", key_mask, batch, key.shape[1], check_values)
    compiled = [_compiled_fast_hash(x, keep, matrices, num_hash, hash_code_len)
                for x, keep in ((query, query_keep), (key, key_keep))]
    if compiled[0] is not None:
        return tuple(compiled)
    projections = [r[:dim] for r in _fast_hash_projections(matrices, num_hash, hash_code_len)]
    return (_sign_codes(query, projections, query_keep, num_hash, hash_code_len),
            _sign_codes(key, projections, key_keep, num_hash, hash_code_len))


# ---------------------------------------------------------------------------------------------- cumulation
def _check_cumulation_inputs(query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity,
                             check_values=True):
    xp = _backend(query_mask=query_mask, query_hash_code=query_hash_code, key_mask=key_mask,
                  key_hash_code=key_hash_code, value=value)
    capacity = _check_capacity(hashtable_capacity)
    _check_float("value", value, 3)
    batch, n_k, _ = value.shape
    if query_mask.ndim != 2:
        raise ValueError(f"query_mask must have shape (batch, n_q), got {tuple(query_mask.shape)}")
    n_q = query_mask.shape[1]
    query_keep = _check_mask("query_mask", query_mask, batch, n_q, check_values)
    key_keep = _check_mask("key_mask", key_mask, batch, n_k, check_values)
    _check_codes("query_hash_code", query_hash_code, batch, n_q, capacity, check_values)
    _check_codes("key_hash_code", key_hash_code, batch, n_k, capacity, check_values)
    if query_hash_code.shape[2] != key_hash_code.shape[2]:
        raise ValueError(f"query_hash_code and key_hash_code must hold the same number of hashes, got "
                         f"{query_hash_code.shape[2]} and {key_hash_code.shape[2]}")
    return xp, capacity, query_keep, key_keep


TABLE_BLOCK_FLOATS = 2**18  # hash-table entries per block of (batch rows, hashes): about L2-sized
COMPILED_TABLE_ROWS = 2**12  # the compiled cumulations (cpu_kernels) index codes densely up to max(this, n_k)


def _small_table(kernel, capacity, n_k):
    """kernel, where its dense per-code arrays of ``capacity`` rows stay small, else None (the NumPy path then
    indexes only the codes present)."""
    return kernel if kernel is not None and capacity <= max(n_k, COMPILED_TABLE_ROWS) else None


def _cache_sized_blocks(batch, num_hash, floats_per_table):
    """(rows, hashes) slices covering batch x num_hash in blocks whose tables hold ~TABLE_BLOCK_FLOATS floats."""
    floats_per_table = max(1, floats_per_table)  # no keys or zero-width values: any block size
    hashes_per_block = max(1, min(num_hash, TABLE_BLOCK_FLOATS // floats_per_table))
    rows_per_block = max(1, TABLE_BLOCK_FLOATS // (floats_per_table * num_hash)) if hashes_per_block == num_hash else 1
    for b in range(0, batch, rows_per_block):
        for f in range(0, num_hash, hashes_per_block):
            yield slice(b, b + rows_per_block), slice(f, f + hashes_per_block)


def _argsort_descending(counts, largest):
    """Stable argsort of non-negative ints <= largest, biggest first (by radix sort when they fit uint16)."""
    if largest < 2**16:
        return np.argsort((largest - counts).astype(np.uint16), kind="stable")
    return np.argsort(-counts, kind="stable")


class _KeyBuckets:
    """The keys of every (batch row, hash) grouped by code: a counting-sort layout of the hash tables.

    sorted_keys: flat key indices (b * n_k + k) ordered by (row = b * num_hash + f, code); bucket j holds
    sorted_keys[start[j] : start[j] + size[j]], and buckets are numbered biggest first, so the buckets with more
    than r keys are exactly the first few. Masked keys are in no bucket. (lsh_weighted_cumulation walks them.)
    """

    def __init__(self, key_hash_code, key_keep, capacity):
        batch, n_k, num_hash = key_hash_code.shape
        self.capacity = capacity
        # masked keys get the code `capacity`, past every real one, and are dropped below
        sortable = np.where(key_keep[:, None, :], key_hash_code.transpose(0, 2, 1), capacity)
        sortable = sortable.astype(np.uint16 if capacity < 2**16 else np.int32)  # uint16 sorts by radix
        order = np.argsort(sortable, axis=-1, kind="stable")                       # [batch, num_hash, n_k]
        rows = batch * num_hash
        codes = np.take(sortable, (order.reshape(rows, n_k) + (np.arange(rows) * n_k)[:, None]).reshape(-1))
        first = np.ones(codes.size, dtype=bool)
        first[1:] = codes[1:] != codes[:-1]
        first[::n_k] = True                                                         # each row starts a bucket
        start = np.flatnonzero(first)
        size = np.diff(start, append=codes.size)
        real = codes[start] < capacity
        start, size = start[real], size[real]
        self.bucket_key_sorted = (start // n_k) * capacity + codes[start]          # row * capacity + code
        by_size = _argsort_descending(size, n_k)
        self.start, self.size = start[by_size], size[by_size]
        self.id_of_sorted = np.empty(size.size, dtype=np.int64)
        self.id_of_sorted[by_size] = np.arange(size.size)
        self.sorted_keys = (order + (np.arange(batch) * n_k)[:, None, None]).reshape(-1)

    @property
    def count(self):
        return self.size.size

    def lookup(self, query_hash_code):
        """Bucket id of every (b, q, f) query code, or self.count (an empty bucket) where no key has it."""
        batch, n_q, num_hash = query_hash_code.shape
        rows = (np.arange(batch)[:, None, None] * num_hash + np.arange(num_hash)).astype(np.int64)
        query_key = rows * self.capacity + query_hash_code
        keys = self.bucket_key_sorted
        if keys.size == 0:
            return np.full(query_key.shape, self.count, dtype=np.int64)
        table_size = batch * num_hash * self.capacity
        if table_size <= 4 * (query_key.size + keys.size):
            table = np.full(table_size, self.count, dtype=np.int64)
            table[keys] = self.id_of_sorted
            return table[query_key]
        pos = np.minimum(np.searchsorted(keys, query_key), keys.size - 1)
        return np.where(keys[pos] == query_key, self.id_of_sorted[pos], self.count)

    def weighted_pair_sums(self, query_hash_code, query_keep, query_weight, key_weight, value):
        """[batch, n_q, d_v]: sum over hashes f and keys k colliding with q of (qw[q] . kw[k]) value[k].

        Walks the colliding pairs level by level: the (query, hash) entries sorted by the size of their bucket, level r
        pairs each entry whose bucket has more than r keys with its (r+1)-th key; each level is one gather and one
        contiguous add, with no scatter conflicts.
        """
        batch, n_q, num_hash = query_hash_code.shape
        d_v = value.shape[2]
        bucket = self.lookup(query_hash_code).reshape(-1)                     # entry e = (b * n_q + q) * m + f
        pairs = np.append(self.size, 0)[bucket] * np.repeat(query_keep.reshape(-1), num_hash)
        live = int(np.count_nonzero(pairs))
        entries = _argsort_descending(pairs, int(pairs.max(initial=0)))[:live]
        first_key = np.append(self.start, 0)[bucket[entries]]
        entry_weight = np.take(query_weight.reshape(batch * n_q, -1), entries // num_hash, axis=0)
        key_weight, value = key_weight.reshape(-1, key_weight.shape[2]), value.reshape(-1, d_v)
        acc = np.zeros((live, d_v), dtype=value.dtype)
        for r, count in enumerate(live - np.cumsum(np.bincount(pairs[entries], minlength=1))[:-1]):
            keys = self.sorted_keys[first_key[:count] + r]
            pair_weight = np.einsum("ij,ij->i", entry_weight[:count], np.take(key_weight, keys, axis=0))
            acc[:count] += pair_weight[:, None] * np.take(value, keys, axis=0)
        per_entry = np.zeros((batch * n_q * num_hash, d_v), dtype=value.dtype)
        per_entry[entries] = acc
        return per_entry.reshape(batch, n_q, num_hash, d_v).sum(axis=2)


def lsh_cumulation(query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity, *,
                   check_values=True):
    """out[b, q] = query_mask[b, q] / m * sum_f sum_k key_mask[b, k] [code_qf == code_kf] value[b, k].

    m = num_hash; out has value's dtype and shape [batch, n_q, d_v]. check_values=False skips reading the masks'
    values and the codes' range back (device syncs on CuPy) for codes that fast_hash/gaussian_hash made.
    """
    xp, capacity, query_keep, key_keep = _check_cumulation_inputs(
        query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity, check_values)
    if xp is not np:
        from .raw_kernels import cumulation as kernels
        if value.dtype != np.float32:  # float64: no float atomics, the dtype kept
            return kernels.cumulation_by_tables(query_keep, query_hash_code, key_keep, key_hash_code, value, capacity)
        out = kernels.lsh_cumulation(query_keep.astype(xp.int32), xp.ascontiguousarray(query_hash_code),
                                     key_keep.astype(xp.int32), xp.ascontiguousarray(key_hash_code),
                                     xp.ascontiguousarray(value, dtype=xp.float32), capacity, check_codes=False)
        return out.astype(value.dtype, copy=False)
    batch, n_q, num_hash = query_hash_code.shape
    n_k, d_v = value.shape[1:]
    out = np.zeros((batch, n_q, d_v), dtype=value.dtype)
    kernel = cpu_kernels.lsh_cumulation() if value.dtype in (np.float32, np.float64) else None
    compiled = _small_table(kernel, capacity, n_k)
    if compiled is not None:
        # the same sums in the same order, bit for bit, as _cumulate_by_tables; one [capacity, d_v] table
        compiled(_hash_major(query_hash_code), _hash_major(key_hash_code), key_keep, np.ascontiguousarray(value),
                 np.zeros((capacity, d_v), dtype=value.dtype), out)
    else:
        _cumulate_by_tables(query_hash_code, key_hash_code, key_keep, value, capacity, out)
    out *= query_keep[:, :, None].astype(value.dtype) / num_hash
    return out


def _cumulate_by_tables(query_hash_code, key_hash_code, key_keep, value, capacity, out):
    """out[b, q] += sum_f table_f[code_qf], for blocks of hashes whose tables are about L2-sized: the tables by
    _scatter_rows from the kept keys, read by a row gather per hash."""
    num_hash = query_hash_code.shape[2]
    n_k, d_v = value.shape[1:]
    for b in range(value.shape[0]):
        kept = slice(None) if key_keep[b].all() else np.flatnonzero(key_keep[b])
        kept_value = value[b, kept]
        for _, hashes in _cache_sized_blocks(1, num_hash, min(n_k, capacity) * d_v):
            key_rows, query_rows, table_rows = _table_rows(key_hash_code[b, kept, hashes],
                                                           query_hash_code[b, :, hashes], capacity)
            table = _scatter_rows(key_rows, kept_value, table_rows)
            for rows in query_rows:
                out[b] += np.take(table, rows, axis=0)


def _table_rows(key_codes, query_codes, capacity):
    """Rows of one flat table for the hashes of a block: (key_rows [n_k, hashes], query_rows [hashes, n_q],
    table_rows). Directly f * capacity + code when that table is no bigger than the keys; otherwise only the codes
    the keys have get rows, and query codes no key has map to a last row that stays zero."""
    offsets = np.arange(key_codes.shape[1], dtype=np.int64) * capacity
    if capacity <= key_codes.shape[0]:
        offsets = offsets.astype(np.int32)  # direct rows < capacity * hashes <= n_k * hashes: int32 is enough
        return key_codes + offsets, (query_codes + offsets).T.copy(), capacity * key_codes.shape[1]
    present, key_rows = np.unique(key_codes + offsets, return_inverse=True)
    query_keys = (query_codes + offsets).T
    found = np.minimum(np.searchsorted(present, query_keys), max(present.size - 1, 0))
    hit = present[found] == query_keys if present.size else np.zeros(query_keys.shape, dtype=bool)
    return key_rows.reshape(key_codes.shape), np.where(hit, found, present.size), present.size + 1


def _scatter_rows(rows, value, table_rows):
    """[table_rows, d]: table[r] = sum of value[k] over every (k, j) with rows[k, j] == r.

    This is a scatter-add with conflicts, i.e. S @ value for the sparse 0/1 matrix S[rows[k, j], k] = 1. scipy, where
    installed (it is optional), does it in one pass of its compiled CSC product; otherwise the keys are sorted into
    their rows (backend.scatter_add_rows: 7.7x the cumulation's time with 256-row tables at n = 4096).
    """
    n_k, per_key = rows.shape
    sparse = _scipy_sparse()
    if sparse is None:
        return scatter_add_rows(table_rows, rows.T.reshape(-1), np.tile(value, (per_key, 1)))
    s = sparse.csc_matrix((np.ones(rows.size, dtype=value.dtype), rows.reshape(-1),
                           np.arange(0, rows.size + 1, per_key)), shape=(table_rows, n_k))
    return np.asarray(s @ value)


@functools.lru_cache(maxsize=None)
def _scipy_sparse():
    """scipy.sparse, or None where scipy is not installed (looked for once: a failed import searches sys.path)."""
    try:
        import scipy.sparse
    except ImportError:
        return None
    return scipy.sparse


def lsh_weighted_cumulation(query_mask, query_hash_code, query_weight, key_mask, key_hash_code, key_weight, value,
                            hashtable_capacity, *, check_values=True):
    """out[b, q] = query_mask[b, q] / m * sum_f sum_k key_mask[b, k] [code_qf == code_kf]
                   (query_weight[b, q] . key_weight[b, k]) value[b, k]. check_values as lsh_cumulation."""
    xp, capacity, query_keep, key_keep = _check_cumulation_inputs(
        query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity, check_values)
    _backend(query_weight=query_weight, key_weight=key_weight, value=value)
    batch, n_q, num_hash = query_hash_code.shape
    n_k, d_v = value.shape[1:]
    _check_float("query_weight", query_weight, 3)
    _check_float("key_weight", key_weight, 3)
    d_w = query_weight.shape[2]
    _check_shape("query_weight", query_weight, (batch, n_q, d_w))
    _check_shape("key_weight", key_weight, (batch, n_k, d_w))
    if xp is not np:
        from .raw_kernels import cumulation as kernels
        if value.dtype != np.float32:  # float64: no float atomics, the dtype kept
            cast = lambda a: a.astype(value.dtype, copy=False)  # noqa: E731
            return kernels.cumulation_by_tables(query_keep, query_hash_code, key_keep, key_hash_code, value, capacity,
                                                cast(query_weight), cast(key_weight))
        f32 = lambda a: xp.ascontiguousarray(a, dtype=xp.float32)  # noqa: E731
        out = kernels.lsh_weighted_cumulation(
            query_keep.astype(xp.int32), xp.ascontiguousarray(query_hash_code), f32(query_weight),
            key_keep.astype(xp.int32), xp.ascontiguousarray(key_hash_code), f32(key_weight), f32(value), capacity,
            check_codes=False)  # checked above (or made by a hash)
        return out.astype(value.dtype, copy=False)
    dtype = value.dtype
    query_weight = query_weight.astype(dtype, copy=False)
    key_weight = key_weight.astype(dtype, copy=False)
    out = np.zeros((batch, n_q, d_v), dtype=dtype)
    if 0 in (n_q, n_k, d_v):
        return out
    kernel = cpu_kernels.lsh_weighted_cumulation() if dtype == np.float32 else None
    compiled = _small_table(kernel, capacity, n_k)
    if compiled is not None:
        contiguous = np.ascontiguousarray
        compiled(_hash_major(query_hash_code), query_keep, contiguous(query_weight), _hash_major(key_hash_code),
                 key_keep, contiguous(key_weight), contiguous(value), capacity, out)
    else:
        for rows, hashes in _cache_sized_blocks(batch, num_hash, n_q * max(d_v, d_w)):
            buckets = _KeyBuckets(key_hash_code[rows, :, hashes], key_keep[rows], capacity)
            out[rows] += buckets.weighted_pair_sums(query_hash_code[rows, :, hashes], query_keep[rows],
                                                    query_weight[rows], key_weight[rows], value[rows])
    out /= num_hash
    return out
