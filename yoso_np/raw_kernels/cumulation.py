"""lsh_cumulation and lsh_weighted_cumulation on the GPU.

Math (m = num_hash, weights of width d_w; the unweighted case is d_w = 1 with all weights 1):
    out[b, q] = qmask[b, q] / m * sum_f  qw[b, q] . T_bf[code[b, q, f]],
    T_bf[c]   = sum_{k: kmask[b, k], code[b, k, f] = c}  kw[b, k] (outer) v[b, k]        (a d_w x d_v matrix)
since sum_k [match] (qw . kw) v_k = qw . (sum_k [match] kw (outer) v_k).

Layout: one work item = (batch row b, hash f, a tile of wtile weight columns, a tile of vtile value columns).
Its table (capacity x wtile x vtile floats) lives in shared memory when it fits in 48 KB, otherwise in a global
scratch slice owned by the block. The block zeroes it, adds every key into it with atomics, then each query reads its
bucket and adds its share to out with a global atomic (the m hashes of a query meet in out). Blocks walk the work
items grid-stride and threads walk the tokens block-stride, so any n, d_v, d_w and grid size works.
Codes are first renumbered per (b, f) when 2**L exceeds the keys (compact_codes): a table then has n_k + 1 rows,
not 2**L, so the cost grows with the tokens whatever hash_code_len is.
Float atomics make the summation order vary between runs: expect differences in the last bits, not bitwise
reproducibility. NumPy twins: yoso_np.lsh.lsh_cumulation / lsh_weighted_cumulation.
"""
import numpy as np

from ._compile import check_int32, check_launch_array, get_kernel, multiprocessor_count

SOURCE = r"""
__device__ __forceinline__ void cumulate(
    float* table,                                              // [capacity, wtile, vtile]
    const int* __restrict__ qmask, const int* __restrict__ qcode, const float* __restrict__ qweight,
    const int* __restrict__ kmask, const int* __restrict__ kcode, const float* __restrict__ kweight,
    const float* __restrict__ value, float* __restrict__ out,
    int batch, int n_q, int n_k, int num_hash, int capacity, int d_w, int d_v, int wtile, int vtile, float inv_m)
{
    // qweight == kweight == nullptr: unweighted (d_w = wtile = 1, weight 1)
    const int w_tiles = (d_w + wtile - 1) / wtile;
    const int v_tiles = (d_v + vtile - 1) / vtile;
    const int cell = wtile * vtile;
    const long long items = (long long)batch * num_hash * w_tiles * v_tiles;
    const long long table_size = (long long)capacity * cell;

    for (long long item = blockIdx.x; item < items; item += gridDim.x) {
        const int c0 = (int)(item % v_tiles) * vtile;
        long long rest = item / v_tiles;
        const int w0 = (int)(rest % w_tiles) * wtile;
        rest /= w_tiles;
        const int f = (int)(rest % num_hash);
        const long long b = rest / num_hash;

        for (long long i = threadIdx.x; i < table_size; i += blockDim.x) table[i] = 0.f;
        __syncthreads();

        for (long long i = threadIdx.x; i < (long long)n_k * cell; i += blockDim.x) {
            const long long key = b * n_k + i / cell;
            const int r = (int)(i % cell);
            const int w = r / vtile, c = r % vtile;
            if (kmask[key] && w0 + w < d_w && c0 + c < d_v) {
                float contribution = value[key * d_v + c0 + c];
                if (kweight) contribution *= kweight[key * d_w + w0 + w];
                atomicAdd(&table[(long long)kcode[key * num_hash + f] * cell + r], contribution);
            }
        }
        __syncthreads();

        for (long long i = threadIdx.x; i < (long long)n_q * vtile; i += blockDim.x) {
            const long long query = b * n_q + i / vtile;
            const int c = (int)(i % vtile);
            if (qmask[query] && c0 + c < d_v) {
                const float* bucket = table + (long long)qcode[query * num_hash + f] * cell + c;
                float acc = 0.f;
                for (int w = 0; w < wtile && w0 + w < d_w; ++w)
                    acc += (qweight ? qweight[query * d_w + w0 + w] : 1.f) * bucket[w * vtile];
                atomicAdd(&out[query * d_v + c0 + c], acc * inv_m);
            }
        }
        __syncthreads();
    }
}

#define CUMULATION_ARGS \
    const int* qmask, const int* qcode, const int* kmask, const int* kcode, const float* value, float* out, \
    int batch, int n_q, int n_k, int num_hash, int capacity, int d_w, int d_v, int wtile, int vtile, float inv_m
#define WEIGHTED_ARGS \
    const int* qmask, const int* qcode, const float* qweight, const int* kmask, const int* kcode, \
    const float* kweight, const float* value, float* out, \
    int batch, int n_q, int n_k, int num_hash, int capacity, int d_w, int d_v, int wtile, int vtile, float inv_m
#define SIZES batch, n_q, n_k, num_hash, capacity, d_w, d_v, wtile, vtile, inv_m

extern "C" __global__ void lsh_cumulation_shared(CUMULATION_ARGS) {
    extern __shared__ float table[];
    cumulate(table, qmask, qcode, nullptr, kmask, kcode, nullptr, value, out, SIZES);
}

extern "C" __global__ void lsh_cumulation_global(float* scratch, CUMULATION_ARGS) {
    float* table = scratch + (long long)blockIdx.x * capacity * wtile * vtile;
    cumulate(table, qmask, qcode, nullptr, kmask, kcode, nullptr, value, out, SIZES);
}

extern "C" __global__ void lsh_weighted_cumulation_shared(WEIGHTED_ARGS) {
    extern __shared__ float table[];
    cumulate(table, qmask, qcode, qweight, kmask, kcode, kweight, value, out, SIZES);
}

extern "C" __global__ void lsh_weighted_cumulation_global(float* scratch, WEIGHTED_ARGS) {
    float* table = scratch + (long long)blockIdx.x * capacity * wtile * vtile;
    cumulate(table, qmask, qcode, qweight, kmask, kcode, kweight, value, out, SIZES);
}
"""

THREADS = 256
SHARED_BYTES = 48 * 1024          # the default limit of dynamic shared memory per block
MAX_VALUE_TILE = 32
GLOBAL_SCRATCH_BYTES = 256 * 2**20  # cap on the global tables (one per block) when a table misses shared memory
GLOBAL_TABLE_BYTES = 64 * 2**20     # shrink the column tile until one global table is at most this


def _tiles(capacity, d_w, d_v, table):
    """(wtile, vtile, use_global) for a table of capacity x wtile x vtile floats."""
    cells = SHARED_BYTES // (4 * capacity)
    use_global = table == "global" or (table == "auto" and cells == 0)
    if table == "shared" and cells == 0:
        raise ValueError(f"a hash table of capacity {capacity} does not fit in shared memory")
    if use_global:
        vtile = min(d_v, MAX_VALUE_TILE)
        while vtile > 1 and 4 * capacity * vtile > GLOBAL_TABLE_BYTES:
            vtile //= 2
        return 1, vtile, True
    vtile = min(d_v, MAX_VALUE_TILE, cells)
    return max(1, min(d_w, cells // vtile)), vtile, False


def compact_codes(query_hash_code, key_hash_code, capacity):
    """(query codes, key codes, capacity) renumbered per (batch row b, hash f) so that a table needs a row per key,
    not per possible code: a key's code becomes the position of its first occurrence among the row's sorted key
    codes (< n_k), a query code no key has becomes n_k (a row no key writes, which stays zero), and the capacity the
    power of two above n_k. Equal codes stay equal and a query meets the same keys, so the sums are unchanged.
    Sort-based, as the NumPy path's _table_rows: O(tokens x hashes x log) work, a few launches, no host data.
    Runs on NumPy arrays too (its own twin). Codes must lie in [0, capacity)."""
    from ..backend import array_module
    xp = array_module(key_hash_code)
    batch, n_k, num_hash = key_hash_code.shape
    if n_k == 0:
        return query_hash_code, key_hash_code, capacity
    rows = xp.arange(batch * num_hash, dtype=xp.int64).reshape(batch, 1, num_hash)
    keys = (rows * capacity + key_hash_code).reshape(-1)  # row r's keys fill sorted positions [r n_k, (r+1) n_k)
    sorted_keys = xp.sort(keys)
    first = rows * n_k
    key_ids = xp.searchsorted(sorted_keys, keys).reshape(key_hash_code.shape) - first
    queries = rows * capacity + query_hash_code
    found = xp.searchsorted(sorted_keys, queries.reshape(-1)).reshape(queries.shape)
    hit = sorted_keys[xp.minimum(found, sorted_keys.size - 1)] == queries
    query_ids = xp.where(hit, found - first, n_k)
    return query_ids.astype(xp.int32), key_ids.astype(xp.int32), max(2, 1 << n_k.bit_length())


def _launch(name, masks_codes, weights, value, capacity, table, check_codes):
    import cupy

    (qmask, qcode), (kmask, kcode) = masks_codes
    batch, n_k, d_v = value.shape
    n_q, num_hash = qcode.shape[1:]
    check_launch_array("value", value, np.float32, (batch, n_k, d_v))
    check_launch_array("query_mask", qmask, np.int32, (batch, n_q))
    check_launch_array("query_hash_code", qcode, np.int32, (batch, n_q, num_hash))
    check_launch_array("key_mask", kmask, np.int32, (batch, n_k))
    check_launch_array("key_hash_code", kcode, np.int32, (batch, n_k, num_hash))
    d_w = 1
    if weights:
        qweight, kweight = weights
        d_w = qweight.shape[2] if qweight.ndim == 3 else -1
        check_launch_array("query_weight", qweight, np.float32, (batch, n_q, d_w))
        check_launch_array("key_weight", kweight, np.float32, (batch, n_k, d_w))
    if not (isinstance(capacity, (int, np.integer)) and 2 <= capacity <= 2**24 and capacity & (capacity - 1) == 0):
        raise ValueError(f"hashtable_capacity must be a power of two in [2, 2**24], got {capacity}")
    for arg, codes in (("query_hash_code", qcode), ("key_hash_code", kcode)):  # out-of-range codes write anywhere
        if check_codes and codes.size and (int(codes.min()) < 0 or int(codes.max()) >= capacity):
            raise ValueError(f"{arg} must lie in [0, {capacity})")
    if num_hash < 1 or d_w < 1:
        raise ValueError(f"need num_hash >= 1 and a weight width >= 1, got {num_hash} and {d_w}")
    if table not in ("auto", "shared", "global"):
        raise ValueError(f"table must be 'auto', 'shared' or 'global', got {table!r}")
    out = cupy.zeros((batch, n_q, d_v), dtype=cupy.float32)
    if out.size == 0:
        return out
    if capacity > max(2, 1 << n_k.bit_length()) and table == "auto":
        qcode, kcode, capacity = compact_codes(qcode, kcode, capacity)
    wtile, vtile, use_global = _tiles(int(capacity), d_w, d_v, table)
    items = batch * num_hash * -(-d_w // wtile) * -(-d_v // vtile)
    sizes = check_int32(batch=batch, n_q=n_q, n_k=n_k, num_hash=num_hash, capacity=capacity, d_w=d_w, d_v=d_v,
                        wtile=wtile, vtile=vtile) + [np.float32(1.0 / num_hash)]
    arrays = [qmask, qcode, *weights[:1], kmask, kcode, *weights[1:], value, out]
    table_bytes = 4 * capacity * wtile * vtile
    if use_global:
        blocks = max(1, min(items, GLOBAL_SCRATCH_BYTES // table_bytes, 16 * multiprocessor_count()))
        scratch = cupy.empty(blocks * table_bytes // 4, dtype=cupy.float32)
        kernel = get_kernel("cumulation", SOURCE, f"{name}_global")
        kernel((blocks,), (THREADS,), (scratch, *arrays, *sizes))
    else:
        blocks = min(items, 16 * multiprocessor_count())
        kernel = get_kernel("cumulation", SOURCE, f"{name}_shared")
        kernel((blocks,), (THREADS,), (*arrays, *sizes), shared_mem=table_bytes)
    return out


def lsh_cumulation(query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity, table="auto",
                   check_codes=True):
    """out [batch, n_q, d_v] float32 (see module docstring). Masks int32 (nonzero = keep), codes int32, value float32.

    table: 'auto' (shared memory when the table fits, else global), 'shared' or 'global' (for tests).
    check_codes: read the codes' range back (a device sync) before launching; False for codes known in range.
    """
    return _launch("lsh_cumulation", ((query_mask, query_hash_code), (key_mask, key_hash_code)), (), value,
                   hashtable_capacity, table, check_codes)


def lsh_weighted_cumulation(query_mask, query_hash_code, query_weight, key_mask, key_hash_code, key_weight, value,
                            hashtable_capacity, table="auto", check_codes=True):
    """out [batch, n_q, d_v] float32 with each colliding pair weighted by query_weight[q] . key_weight[k]."""
    return _launch("lsh_weighted_cumulation", ((query_mask, query_hash_code), (key_mask, key_hash_code)),
                   (query_weight, key_weight), value, hashtable_capacity, table, check_codes)


TABLE_BUDGET_BYTES = 256 * 2**20  # tables and gathers of the float64 path at once


def cumulation_by_tables(query_mask, query_hash_code, key_mask, key_hash_code, value, hashtable_capacity,
                         query_weight=None, key_weight=None):
    """The same sums in value's dtype (float64 too, which the kernels' float atomics cannot give) by array
    operations: per hash f the tables T_bf[c] = sum_k kmask kw_k (outer) v_k by one scatter-add over compacted
    codes, read by one gather per query. Batch rows in chunks whose tables fit TABLE_BUDGET_BYTES; a few launches
    per hash and chunk. Masks nonzero = keep; codes int32 in [0, capacity)."""
    import cupyx
    from ..backend import array_module
    xp = array_module(value)
    batch, n_k, d_v = value.shape
    n_q, num_hash = query_hash_code.shape[1:]
    qcode, kcode, capacity = compact_codes(query_hash_code, key_hash_code, hashtable_capacity)
    d_w = 1 if key_weight is None else key_weight.shape[2]
    width = d_w * d_v
    kept = value * (key_mask != 0)[:, :, None]
    if key_weight is not None:  # kw (outer) v per key, flattened
        kept = (key_weight[:, :, :, None] * kept[:, :, None, :]).reshape(batch, n_k, width)
    out = xp.zeros((batch, n_q, d_v), dtype=value.dtype)
    rows = max(1, TABLE_BUDGET_BYTES // max(1, (capacity + n_q) * width * value.itemsize))
    for b0 in range(0, batch, rows):
        b1 = min(batch, b0 + rows)
        chunk = xp.arange(b1 - b0)[:, None]
        for f in range(num_hash):
            table = xp.zeros((b1 - b0, capacity, width), dtype=value.dtype)
            cupyx.scatter_add(table, (chunk, kcode[b0:b1, :, f]), kept[b0:b1])
            found = table[chunk, qcode[b0:b1, :, f]]                    # (rows, n_q, width)
            if query_weight is None:
                out[b0:b1] += found
            else:
                out[b0:b1] += xp.einsum("bqwv,bqw->bqv", found.reshape(b1 - b0, n_q, d_w, d_v), query_weight[b0:b1])
    out *= (query_mask != 0)[:, :, None] * (1.0 / num_hash)
    return out
