"""The CUDA kernels: NVRTC compilation (no GPU needed), a one-thread CPU emulation of the sources (needs g++), and on a
GPU (marker gpu) the kernels against the NumPy reference, grid limits, and compute-sanitizer."""
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from yoso_np import lsh, raw_kernels
from yoso_np.raw_kernels import cumulation, fast_hash

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compile_all_returns_a_binary_for_every_source(arch):
    try:
        raw_kernels.load_nvrtc()
    except raw_kernels.NvrtcNotFoundError as exc:
        pytest.skip(f"libnvrtc cannot be found at all: {exc}")
    binaries = raw_kernels.compile_all(arch)
    assert set(binaries) == set(raw_kernels.SOURCES) == {"fast_hash", "cumulation", "expectation"}
    for name, binary in binaries.items():
        assert isinstance(binary, bytes) and binary[:4] == b"\x7fELF", name  # a CUBIN is an ELF file
    ptx = raw_kernels.compile_all(arch.replace("sm_", "compute_"))
    assert b".entry lsh_weighted_cumulation_global" in ptx["cumulation"]
    assert b".entry collision_probability_f64" in ptx["expectation"]  # the double variant, not only the float one
    with pytest.raises(ValueError, match="arch must look like"):
        raw_kernels.compile_all("ampere")


# ---------------------------------------------------------------------------------------------- CPU emulation
SHIM = r"""
// Run a kernel on the CPU: one thread per block (the block-stride loops then cover every index in order, so
// __syncthreads has nothing to wait for), blocks one after another. Checks indexing, not races.
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
struct Dim { unsigned x; };
static Dim threadIdx{0}, blockIdx{0}, blockDim{1}, gridDim{1};
inline void __syncthreads() {}
inline float atomicAdd(float* p, float v) { float old = *p; *p += v; return old; }
extern "C" { float y[1 << 16]; float table[1 << 16]; }   // the sources' dynamic shared memory
extern "C" void set_block(unsigned block, unsigned grid) { blockIdx.x = block; gridDim.x = grid; }
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to emulate the kernel sources on the CPU")
    libs = {}
    for name, source in raw_kernels.SOURCES.items():
        path = tmp_path_factory.mktemp("emulated") / f"{name}.cpp"
        path.write_text(SHIM + source)
        subprocess.run([compiler, "-O1", "-w", "-shared", "-fPIC", "-o", str(path.with_suffix(".so")), str(path)],
                       check=True)
        libs[name] = ctypes.CDLL(str(path.with_suffix(".so")))

    def run(source, function, blocks, *args):
        converted = [a.ctypes.data_as(ctypes.c_void_p) if isinstance(a, np.ndarray)
                     else ctypes.c_float(a) if isinstance(a, float) else ctypes.c_int(a) for a in args]
        for block in range(blocks):
            libs[source].set_block(block, blocks)
            getattr(libs[source], function)(*converted)
    return run


def near_zero_bits(x, dmat, num_hash, code_len):
    """[batch, n, num_hash]: hashes with a projection at float32 rounding level (computed in float64)."""
    projection = x.astype(np.float64) @ lsh.fast_hash_projection(dmat, num_hash, code_len).astype(np.float64)
    scale = 1e-4 * x.shape[-1] * np.linalg.norm(x.astype(np.float64), axis=-1)
    return (np.abs(projection) < scale[..., None]).reshape(*x.shape[:2], num_hash, code_len).any(-1)


def hash_inputs(seed, batch, n, dim, num_hash, code_len):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    mask = rng.integers(0, 2, (batch, n)).astype(np.int32)
    dmat = lsh.draw_hash_matrices(rng, batch, dim, num_hash, code_len, use_fast_hash=True)
    return mask, x, dmat


def cumulation_inputs(seed, batch, n_q, n_k, num_hash, code_len, d_v, d_w):
    rng = np.random.default_rng(seed)
    distinct = min(2**code_len, 6)  # few distinct codes: many collisions
    codes = [(rng.integers(0, distinct, (batch, n, num_hash)) * (2**code_len // distinct)).astype(np.int32)
             for n in (n_q, n_k)]
    masks = [rng.integers(0, 2, (batch, n)).astype(np.int32) for n in (n_q, n_k)]
    masks[1][-1] = 0  # a row with every key masked
    value = rng.standard_normal((batch, n_k, d_v)).astype(np.float32)
    weights = [rng.standard_normal((batch, n, d_w)).astype(np.float32) for n in (n_q, n_k)]
    return masks, codes, weights, value


@pytest.mark.parametrize("batch,n,dim,num_hash,code_len,blocks", [(2, 13, 8, 5, 3, 1), (3, 29, 64, 64, 9, 4),
                                                                     (2, 9, 16, 3, 16, 2), (1, 5, 1, 3, 1, 2)])
def test_fast_hash_source_emulated_matches_numpy(emulated, batch, n, dim, num_hash, code_len, blocks):
    mask, x, dmat = hash_inputs(dim, batch, n, dim, num_hash, code_len)
    codes = np.full((batch, n, num_hash), -1, dtype=np.int32)
    emulated("fast_hash", "fast_hash", blocks, mask, x, dmat, codes, batch, n, dim.bit_length() - 1,
             dmat.shape[2], num_hash, code_len, max(1, fast_hash.TILE_FLOATS // dim))
    expected = lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    same = (codes == expected) | near_zero_bits(x, dmat, num_hash, code_len)
    assert same.all()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("code_len,d_v,d_w,table,blocks", [(3, 7, 4, "shared", 3), (9, 100, 3, "shared", 5),
                                                           (3, 7, 4, "global", 2), (14, 5, 2, "auto", 3)])
def test_cumulation_source_emulated_matches_numpy(emulated, weighted, code_len, d_v, d_w, table, blocks):
    batch, n_q, n_k, num_hash, capacity = 3, 13, 11, 5, 2**code_len
    (qm, km), (qc, kc), (qw, kw), value = cumulation_inputs(code_len, batch, n_q, n_k, num_hash, code_len, d_v, d_w)
    d_w = d_w if weighted else 1
    wtile, vtile, use_global = cumulation._tiles(capacity, d_w, d_v, table)
    assert use_global == (table != "shared")
    out = np.zeros((batch, n_q, d_v), dtype=np.float32)
    arrays = [qm, qc, *[qw][:weighted], km, kc, *[kw][:weighted], value, out]
    scratch = [np.zeros(blocks * capacity * wtile * vtile, np.float32)] if use_global else []
    name = ("lsh_weighted_cumulation" if weighted else "lsh_cumulation") + ("_global" if use_global else "_shared")
    emulated("cumulation", name, blocks, *scratch, *arrays, batch, n_q, n_k, num_hash, capacity, d_w, d_v, wtile,
             vtile, 1.0 / num_hash)
    if weighted:
        expected = lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, value, capacity)
    else:
        expected = lsh.lsh_cumulation(qm, qc, km, kc, value, capacity)
    assert np.abs(expected[:2]).max() > 0.1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("batch,n,dim,num_hash,code_len", [(2, 13, 8, 5, 3), (3, 1001, 64, 64, 9),
                                                           (1, 7, 128, 40, 7), (2, 33, 2048, 9, 24)])
def test_fast_hash_kernel_matches_numpy(cupy, batch, n, dim, num_hash, code_len):
    mask, x, dmat = hash_inputs(n, batch, n, dim, num_hash, code_len)
    codes = lsh.fast_hash(cupy.asarray(mask), cupy.asarray(x), cupy.asarray(dmat), num_hash, code_len)
    assert isinstance(codes, cupy.ndarray) and codes.dtype == np.int32
    expected = lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    near = near_zero_bits(x, dmat, num_hash, code_len)
    assert near.mean() < 0.01
    assert ((codes.get() == expected) | near).all()


@pytest.mark.gpu
def test_fast_hash_kernel_walks_more_tiles_than_blocks(cupy):
    batch, n, dim, num_hash, code_len = 1, 200_003, 8, 3, 2  # > 65535 * 3 tokens, far more tiles than blocks
    mask, x, dmat = hash_inputs(0, batch, n, dim, num_hash, code_len)
    codes = fast_hash.fast_hash(cupy.asarray(mask), cupy.asarray(x), cupy.asarray(dmat), num_hash, code_len).get()
    expected = lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    assert ((codes == expected) | near_zero_bits(x, dmat, num_hash, code_len)).all()


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("code_len,d_v,table", [(3, 7, "auto"), (9, 100, "auto"), (9, 7, "global"), (15, 7, "auto")])
def test_cumulation_kernels_match_numpy(cupy, weighted, code_len, d_v, table):
    batch, n_q, n_k, num_hash, d_w, capacity = 3, 37, 29, 6, 5, 2**code_len
    (qm, km), (qc, kc), (qw, kw), value = cumulation_inputs(d_v, batch, n_q, n_k, num_hash, code_len, d_v, d_w)
    gpu = [cupy.asarray(a) for a in (qm, qc, qw, km, kc, kw, value)]
    if weighted:
        out = cumulation.lsh_weighted_cumulation(*gpu, capacity, table=table)
        expected = lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, value, capacity)
    else:
        out = cumulation.lsh_cumulation(gpu[0], gpu[1], gpu[3], gpu[4], gpu[6], capacity, table=table)
        expected = lsh.lsh_cumulation(qm, qc, km, kc, value, capacity)
    assert out.shape == (batch, n_q, d_v) and out.dtype == np.float32
    np.testing.assert_allclose(out.get(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.gpu
def test_lsh_dispatches_cupy_inputs_to_the_kernels(cupy):
    (qm, km), (qc, kc), (qw, kw), value = cumulation_inputs(1, 2, 70_001, 65_537, 2, 4, 3, 2)  # n > 65535
    qm_bool = cupy.asarray(qm).astype(bool)
    out = lsh.lsh_cumulation(qm_bool, cupy.asarray(qc), cupy.asarray(km), cupy.asarray(kc), cupy.asarray(value), 16)
    np.testing.assert_allclose(out.get(), lsh.lsh_cumulation(qm, qc, km, kc, value, 16), rtol=1e-5,
                               atol=1e-5 * float(abs(out).max()))
    small = [a[:, :50] for a in (qm, qc, qw)], [a[:, :40] for a in (km, kc, kw)], value[:, :40]
    (sqm, sqc, sqw), (skm, skc, skw), sv = small
    out = lsh.lsh_weighted_cumulation(*(cupy.asarray(a) for a in (sqm, sqc, sqw, skm, skc, skw, sv)), 16)
    np.testing.assert_allclose(out.get(), lsh.lsh_weighted_cumulation(sqm, sqc, sqw, skm, skc, skw, sv, 16),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="all NumPy or all CuPy"):
        lsh.lsh_cumulation(qm, cupy.asarray(qc), km, kc, value, 16)
    with pytest.raises(TypeError, match="query_hash_code must be int32"):
        cumulation.lsh_cumulation(cupy.asarray(qm), cupy.asarray(qc, dtype=cupy.int64), cupy.asarray(km),
                                  cupy.asarray(kc), cupy.asarray(value), 16)


@pytest.mark.gpu
def test_hash_codes_give_the_same_codes_on_cpu_and_gpu(cupy):
    rng = np.random.default_rng(3)
    query, key = (rng.standard_normal((4, 21, 48)).astype(np.float32) for _ in range(2))  # 48 is padded to 64
    mask = np.ones((4, 21), dtype=bool)
    kwargs = dict(num_hash=16, hash_code_len=8, use_fast_hash=True)
    cpu = lsh.hash_codes(mask, query, mask, key, rng=np.random.default_rng(5), **kwargs)
    gpu = lsh.hash_codes(*(cupy.asarray(a) for a in (mask, query, mask, key)), rng=np.random.default_rng(5), **kwargs)
    for c, g in zip(cpu, gpu):
        assert (c == g.get()).mean() > 0.99  # the rest: bits at rounding level


SANITIZER_SCRIPT = textwrap.dedent("""
    import cupy, numpy as np
    from yoso_np import lsh
    from yoso_np.raw_kernels import cumulation
    rng = np.random.default_rng(0)
    for dim, num_hash, code_len in ((8, 5, 3), (64, 64, 9), (2048, 3, 24)):
        x = cupy.asarray(rng.standard_normal((2, 13, dim)).astype(np.float32))
        mask = cupy.asarray(rng.integers(0, 2, (2, 13)).astype(np.int32))
        dmat = lsh.draw_hash_matrices(rng, 2, dim, num_hash, code_len, True, cupy)
        lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    for code_len, table in ((3, "shared"), (9, "shared"), (3, "global"), (14, "auto")):
        qc = cupy.asarray(rng.integers(0, 2**code_len, (2, 13, 5)).astype(np.int32))
        kc = cupy.asarray(rng.integers(0, 2**code_len, (2, 11, 5)).astype(np.int32))
        qm = cupy.asarray(rng.integers(0, 2, (2, 13)).astype(np.int32))
        km = cupy.asarray(rng.integers(0, 2, (2, 11)).astype(np.int32))
        qw = cupy.asarray(rng.standard_normal((2, 13, 3)).astype(np.float32))
        kw = cupy.asarray(rng.standard_normal((2, 11, 3)).astype(np.float32))
        v = cupy.asarray(rng.standard_normal((2, 11, 7)).astype(np.float32))
        cumulation.lsh_cumulation(qm, qc, km, kc, v, 2**code_len, table=table)
        cumulation.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, v, 2**code_len, table=table)
    cupy.cuda.runtime.deviceSynchronize()
    print("done")
""")


@pytest.mark.gpu
def test_kernels_are_clean_under_compute_sanitizer(cupy, tmp_path):
    sanitizer = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not installed")
    script = tmp_path / "exercise_kernels.py"
    script.write_text(SANITIZER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sanitizer, "--tool", "memcheck", sys.executable, str(script)], capture_output=True,
                            text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert "done" in output, output[-3000:]
    assert "ERROR SUMMARY: 0 errors" in output, output[-3000:]
