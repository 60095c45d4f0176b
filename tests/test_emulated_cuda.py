"""yoso_np.testing itself: emulated_cuda() installs and removes the CuPy stand-in exactly, the stand-in follows CuPy's
rules, and the emulator runs a kernel with real threads and reports what a GPU would fault or race on."""
import sys

import numpy as np
import pytest

from yoso_np import backend
from yoso_np.testing import EmulatorError, KernelFault, emulated_cuda, emulator

needs_compiler = pytest.mark.skipif(not emulator.available(), reason="the CUDA emulator needs GCC (g++)")


def test_emulated_cuda_installs_and_restores_sys_modules():
    before = {name: sys.modules.get(name) for name in ("cupy", "cupyx", "cupy.cuda", "cupy.linalg")}
    with emulated_cuda() as cp:
        assert sys.modules["cupy"] is cp and sys.modules["cupyx"].scatter_add
        x = cp.asarray(np.arange(6.0))
        assert backend.is_cupy_array(x) and backend.array_module(x) is cp and backend.device_of(x) == "cuda"
        assert backend.to_device(np.ones(2), "cuda").__class__ is cp.ndarray
    assert {name: sys.modules.get(name) for name in before} == before
    assert not backend.is_cupy_array(x)


def test_the_stand_in_follows_cupy_rules():
    with emulated_cuda() as cp:
        x = cp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            np.asarray(x)
        with pytest.raises(TypeError, match="Unsupported type"):
            cp.exp(np.ones(3))  # a host array into a device function
        with pytest.raises(TypeError, match="Unsupported type"):
            x + np.ones(3)
        with pytest.raises(TypeError, match="Unsupported type"):
            cp.maximum(x, [1.0, 2.0, 3.0])  # ufuncs take no lists
        with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
            x[0] = np.zeros(3)
        total = x.sum()
        assert isinstance(total, cp.ndarray) and total.shape == () and float(total) == 15.0  # 0-d, not a scalar
        assert isinstance(x[1, 2], cp.ndarray) and x[1, 2].item() == 5.0
        assert isinstance(np.exp(x), cp.ndarray) and isinstance(np.sum(x, axis=0), cp.ndarray)  # NumPy dispatches
        np.testing.assert_allclose(cp.asnumpy(cp.linalg.norm(x, axis=-1)), np.linalg.norm(x.get(), axis=-1))
        out = cp.empty_like(x)
        assert cp.tanh(x, out=out) is out
        assert cp.add(x, 1.0, out=out, where=x > 2) is out and out.get()[1, 2] == 6.0
        garbage = cp.empty((4,), dtype=cp.float32).get()
        assert np.isnan(garbage).all()  # uninitialised memory is not zeros
        hits = cp.zeros((3, 2), dtype=cp.float32)
        sys.modules["cupyx"].scatter_add(hits, cp.asarray([0, 2, 0]), cp.ones((3, 2), dtype=cp.float32))
        np.testing.assert_array_equal(hits.get(), [[2, 2], [0, 0], [1, 1]])
        assert cp.cuda.Device().attributes["MultiProcessorCount"] >= 1 and cp.cuda.runtime.getDeviceCount() == 1


SOURCE = r"""
extern "C" __global__ void reverse(const float* x, float* y, int n, int shift) {
    extern __shared__ float tile[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x + shift] = i < n ? x[i] : 0.f;
    __syncthreads();
    if (i < n) y[i] = tile[blockDim.x - 1 - threadIdx.x];
}

extern "C" __global__ void divergent(float* y) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}

extern "C" __global__ void count(float* total) { atomicAdd(total, 1.f); }

extern "C" __global__ void index2d(int* out) {
    const int block = blockIdx.y * gridDim.x + blockIdx.x;
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    out[block * blockDim.x * blockDim.y + thread] = block * 1000 + thread;
}
"""


def reverse_blocks(x, threads):
    return x.reshape(-1, threads)[:, ::-1].reshape(-1)


@needs_compiler
def test_a_raw_kernel_runs_every_block_with_real_threads():
    with emulated_cuda() as cp:
        module = cp.RawModule(code=SOURCE)
        x = cp.asarray(np.arange(256, dtype=np.float32))
        y = cp.zeros(256, dtype=cp.float32)
        module.get_function("reverse")((4,), (64,), (x, y, np.int32(256), np.int32(0)), shared_mem=64 * 4)
        np.testing.assert_array_equal(y.get(), reverse_blocks(np.arange(256, dtype=np.float32), 64))
        total = cp.zeros(1, dtype=cp.float32)
        module.get_function("count")((37,), (1024,), (total,))
        assert total.get()[0] == 37 * 1024  # float atomics from many threads and blocks lose nothing
        out = cp.empty(6 * 32, dtype=cp.int32)
        module.get_function("index2d")((3, 2), (8, 4), (out,))
        np.testing.assert_array_equal(out.get(), (np.arange(6)[:, None] * 1000 + np.arange(32)).ravel())


@needs_compiler
def test_the_emulator_reports_what_a_gpu_would_fault_on():
    with emulated_cuda() as cp:
        module = cp.RawModule(code=SOURCE)
        reverse = module.get_function("reverse")
        x = cp.asarray(np.arange(64, dtype=np.float32))
        y = cp.zeros(64, dtype=cp.float32)
        with pytest.raises(KernelFault, match=r"shared memory bytes \[256, 260\).*\[0, 256\)"):
            reverse((1,), (64,), (x, y, np.int32(64), np.int32(1)), shared_mem=64 * 4)  # one past the end
        with pytest.raises(KernelFault, match="outside every array argument"):
            reverse((2,), (64,), (x, y, np.int32(128), np.int32(0)), shared_mem=64 * 4)  # n larger than x
        with pytest.raises(KernelFault, match="divergent"):
            module.get_function("divergent")((1,), (32,), (y,))
        with pytest.raises(TypeError, match="argument 2 is int .4 bytes. but the launch passed int64"):
            reverse((1,), (64,), (x, y, 64, np.int32(0)), shared_mem=256)  # CuPy passes a Python int as 8 bytes
        with pytest.raises(EmulatorError, match="shared_mem must be in"):
            reverse((1,), (64,), (x, y, np.int32(64), np.int32(0)), shared_mem=64 * 1024)
        with pytest.raises(EmulatorError, match="block .* exceeds"):
            reverse((1,), (2048,), (x, y, np.int32(64), np.int32(0)), shared_mem=256)
        with pytest.raises(TypeError, match="numpy.ndarray cannot be passed"):
            reverse((1,), (64,), (np.zeros(64, np.float32), y, np.int32(64), np.int32(0)), shared_mem=256)
        with pytest.raises(EmulatorError, match="no __global__ function named 'nope'"):
            module.get_function("nope")
        # after the faults the same module still runs cleanly
        reverse((1,), (64,), (x, y, np.int32(64), np.int32(0)), shared_mem=64 * 4)
        np.testing.assert_array_equal(y.get(), np.arange(64, dtype=np.float32)[::-1])
