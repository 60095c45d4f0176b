"""The CUDA kernels through their launchers on "GPU" arrays under yoso_np.testing.emulated_cuda(): each block with its
real 256 threads, against the NumPy reference, on sizes that stress the launchers; and broken copies of the sources
(a missing __syncthreads(), a wrong index) are caught."""

import numpy as np
import pytest

from yoso_np import lsh
from yoso_np.raw_kernels import cumulation, fast_hash
from yoso_np.testing import KernelFault, emulated_cuda, emulator

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the CUDA emulator needs GCC (g++)")


@pytest.fixture
def cp():
    with emulated_cuda() as cupy:
        yield cupy


def grid_cap(cp):
    return 16 * cp.cuda.Device().attributes["MultiProcessorCount"]


def hash_inputs(seed, batch, n, dim, num_hash, code_len):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    mask = rng.integers(0, 2, (batch, n)).astype(np.int32)
    mask[0] = 1
    dmat = lsh.draw_hash_matrices(rng, batch, dim, num_hash, code_len, use_fast_hash=True)
    return mask, x, dmat


def near_zero_bits(x, dmat, num_hash, code_len):
    """[batch, n, num_hash]: hashes with a projection at float32 rounding level (the butterflies and the NumPy
    matmul round differently there)."""
    projection = x.astype(np.float64) @ lsh.fast_hash_projection(dmat, num_hash, code_len).astype(np.float64)
    scale = 1e-4 * x.shape[-1] * np.linalg.norm(x.astype(np.float64), axis=-1)
    return (np.abs(projection) < scale[..., None]).reshape(*x.shape[:2], num_hash, code_len).any(-1)


def run_fast_hash(cp, mask, x, dmat, num_hash, code_len):
    codes = lsh.fast_hash(cp.asarray(mask), cp.asarray(x), cp.asarray(dmat), num_hash, code_len)
    assert isinstance(codes, cp.ndarray) and codes.dtype == np.int32
    return codes.get()


# batch, n, dim, num_hash, code_len: tokens not a multiple of the tile, one token, several Hadamard parts, one
# token per tile (dim 2048), and more tiles than the grid cap (dim 1024: a tile of one token; n None: cap + 7)
@pytest.mark.parametrize("batch,n,dim,num_hash,code_len", [(2, 13, 8, 5, 3), (1, 1, 64, 8, 4), (3, 29, 64, 64, 9),
                                                           (2, 9, 2048, 3, 24), (1, None, 1024, 4, 8),
                                                           (2, 5, 1, 3, 1)])
def test_fast_hash_kernel_matches_numpy(cp, batch, n, dim, num_hash, code_len):
    n = n or grid_cap(cp) + 7
    mask, x, dmat = hash_inputs(n + dim, batch, n, dim, num_hash, code_len)
    codes = run_fast_hash(cp, mask, x, dmat, num_hash, code_len)
    expected = lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    assert ((codes == expected) | near_zero_bits(x, dmat, num_hash, code_len)).all()
    assert (codes[mask == 0] == 0).all()


def cumulation_inputs(seed, batch, n_q, n_k, num_hash, code_len, d_v, d_w):
    rng = np.random.default_rng(seed)
    distinct = min(2**code_len, 6)  # few distinct codes: many collisions, so the atomics meet
    codes = [(rng.integers(0, distinct, (batch, n, num_hash)) * (2**code_len // distinct)).astype(np.int32)
             for n in (n_q, n_k)]
    masks = [rng.integers(0, 2, (batch, n)).astype(np.int32) for n in (n_q, n_k)]
    masks[0][0] = masks[1][0] = 1
    codes[1][:, 0] = codes[0][:, 0]  # the first key collides with the first query in every hash
    if batch > 1:
        masks[1][-1] = 0  # a row with every key masked
    value = rng.standard_normal((batch, n_k, d_v)).astype(np.float32)
    weights = [rng.standard_normal((batch, n, d_w)).astype(np.float32) for n in (n_q, n_k)]
    return masks, codes, weights, value


def run_cumulation(cp, weighted, inputs, capacity, table="auto"):
    (qm, km), (qc, kc), (qw, kw), value = inputs
    gpu = [cp.asarray(a) for a in (qm, qc, qw, km, kc, kw, value)]
    if table != "auto":  # the launcher's own switch; lsh always passes 'auto'
        if weighted:
            return cumulation.lsh_weighted_cumulation(*gpu, capacity, table=table).get()
        return cumulation.lsh_cumulation(gpu[0], gpu[1], gpu[3], gpu[4], gpu[6], capacity, table=table).get()
    if weighted:
        return lsh.lsh_weighted_cumulation(*gpu, capacity).get()
    return lsh.lsh_cumulation(gpu[0], gpu[1], gpu[3], gpu[4], gpu[6], capacity).get()


def cumulation_reference(weighted, inputs, capacity):
    (qm, km), (qc, kc), (qw, kw), value = inputs
    if weighted:
        return lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, value, capacity)
    return lsh.lsh_cumulation(qm, qc, km, kc, value, capacity)


# batch, n_q, n_k, num_hash, code_len, d_v, d_w, table: value widths not a multiple of the column tile (7, 100),
# one token, tables too big for shared memory (code_len 14: the global-memory fallback), the global path forced,
# and more work items than the grid cap (3 * 6 * 4 column tiles > 16 per multiprocessor)
CUMULATION_CASES = [(3, 13, 11, 5, 3, 7, 4, "auto"), (3, 37, 29, 6, 9, 100, 5, "auto"), (1, 1, 1, 2, 4, 3, 2, "auto"),
                    (2, 13, 11, 5, 14, 7, 3, "auto"), (3, 13, 11, 6, 3, 100, 5, "global")]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("batch,n_q,n_k,num_hash,code_len,d_v,d_w,table", CUMULATION_CASES)
def test_cumulation_kernels_match_numpy(cp, weighted, batch, n_q, n_k, num_hash, code_len, d_v, d_w, table):
    capacity = 2**code_len
    inputs = cumulation_inputs(code_len + d_v, batch, n_q, n_k, num_hash, code_len, d_v, d_w)
    wtile, vtile, use_global = cumulation._tiles(capacity, d_w if weighted else 1, d_v, table)
    assert use_global == (code_len == 14 or table == "global")
    if d_v == 100:  # the launcher caps shared-table grids at 16 blocks per multiprocessor, global ones at 4
        assert d_v % vtile and batch * num_hash * -(-d_v // vtile) > grid_cap(cp) // (1 if table == "auto" else 4)
    out = run_cumulation(cp, weighted, inputs, capacity, table)
    expected = cumulation_reference(weighted, inputs, capacity)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_hash_codes_and_cumulation_on_gpu_arrays_give_the_cpu_results(cp):
    """lsh.hash_codes draws on the host: the same seed gives the same codes on both backends."""
    rng = np.random.default_rng(3)
    query, key = (rng.standard_normal((4, 21, 48)).astype(np.float32) for _ in range(2))  # 48 is padded to 64
    mask = np.ones((4, 21), dtype=bool)
    kwargs = dict(num_hash=16, hash_code_len=8, use_fast_hash=True)
    cpu = lsh.hash_codes(mask, query, mask, key, rng=np.random.default_rng(5), **kwargs)
    gpu = lsh.hash_codes(*(cp.asarray(a) for a in (mask, query, mask, key)), rng=np.random.default_rng(5), **kwargs)
    for c, g in zip(cpu, gpu):
        assert isinstance(g, cp.ndarray) and (c == g.get()).mean() > 0.99  # the rest: bits at rounding level
    with pytest.raises(TypeError, match="must all be NumPy or all CuPy"):
        lsh.lsh_cumulation(mask.astype(np.int32), cp.asarray(cpu[0]), mask, cpu[1], query, 256)


# ---------------------------------------------------------------------------------------------- broken sources
def broken(source, old, new):
    assert source.count(old) >= 1, old
    return source.replace(old, new, 1)


BUTTERFLY_SYNC = "                    __syncthreads();\n                }\n            }\n            // bit i"
FAST_HASH_BREAKS = {
    "missing __syncthreads() after a butterfly pass": (BUTTERFLY_SYNC, "                }\n            }\n"
                                                       "            // bit i", "data race on shared memory"),
    "butterfly partner index off by one": ("y[lo + h] = a - c;", "y[lo + h + 1] = a - c;", "data race|outside"),
    "code written one hash too far": ("codes[token * num_hash + f] = code;", "codes[token * num_hash + f + 1] = code;",
                                      "outside every array argument"),
    "tile stride too short (shared memory overrun)": ("y[i] = v;", "y[i + dim] = v;", "outside the launch's dynamic"),
}
CUMULATION_BREAKS = {
    "missing __syncthreads() after zeroing the table": ("table[i] = 0.f;\n        __syncthreads();",
                                                        "table[i] = 0.f;\n", "data race on shared memory"),
    "missing __syncthreads() before reading the buckets": (
        "            }\n        }\n        __syncthreads();\n\n        for (long long i = threadIdx.x; i < (long long)n_q",
        "            }\n        }\n\n        for (long long i = threadIdx.x; i < (long long)n_q",
        "data race on shared memory"),
    "output column off by one": ("atomicAdd(&out[query * d_v + c0 + c]", "atomicAdd(&out[query * d_v + c0 + c + 1]",
                                 "outside every array argument"),
}


@pytest.mark.parametrize("what", list(FAST_HASH_BREAKS))
def test_a_broken_fast_hash_source_is_caught(monkeypatch, what):
    old, new, message = FAST_HASH_BREAKS[what]
    monkeypatch.setattr(fast_hash, "SOURCE", broken(fast_hash.SOURCE, old, new))
    mask, x, dmat = hash_inputs(0, 2, 13, 32, 8, 4)
    with emulated_cuda() as cp, pytest.raises(KernelFault, match=message):
        run_fast_hash(cp, mask, x, dmat, 8, 4)


@pytest.mark.parametrize("what", list(CUMULATION_BREAKS))
def test_a_broken_cumulation_source_is_caught(monkeypatch, what):
    old, new, message = CUMULATION_BREAKS[what]
    monkeypatch.setattr(cumulation, "SOURCE", broken(cumulation.SOURCE, old, new))
    inputs = cumulation_inputs(0, 2, 13, 11, 5, 3, 7, 4)
    inputs[0][0][:] = 1  # every query kept: the last one's row is written
    with emulated_cuda() as cp, pytest.raises(KernelFault, match=message):
        run_cumulation(cp, True, inputs, 8)


def test_a_wrong_index_inside_the_bounds_fails_the_comparison(monkeypatch):
    """Not every wrong index faults: a bit read from the wrong position stays in bounds, and the comparison with
    the NumPy reference catches it."""
    monkeypatch.setattr(fast_hash, "SOURCE", broken(fast_hash.SOURCE, "code |= (bits[bit] > 0.f) << bit;",
                                                    "code |= (bits[code_len - 1 - bit] > 0.f) << bit;"))
    mask, x, dmat = hash_inputs(1, 2, 13, 32, 8, 4)
    with emulated_cuda() as cp:
        codes = run_fast_hash(cp, mask, x, dmat, 8, 4)
    expected = lsh.fast_hash(mask, x, dmat, 8, 4)
    assert not ((codes == expected) | near_zero_bits(x, dmat, 8, 4)).all()
