"""YOSO-E's weights on the GPU, one fused elementwise pass.

Math: for the cosines s = q . k of unit rows, in place
    w = (1 - arccos(s) / pi) ** tau       (tau a positive int: repeated squaring, no pow)
the collision probability of q and k under tau random hyperplanes (the paper's eq. 4). One launch whatever the
size, instead of the ~25 elementwise passes (a launch each on CuPy) of the NumPy twin,
yoso_np.layers.attention.collision_probability (a polynomial arccos in float32: the two agree to float32 rounding).
A cosine a rounding error outside [-1, 1] gives no NaN, as in the twin: float64 clamps it to +-1, float32 reflects
it (|s| = 1 + e is read as 1 - e, which is what the twin's sqrt(|1 - |s||) computes).

Layout: a grid-stride loop over the flat array; a float and a double kernel of one template.
"""
import numpy as np

from ._compile import check_launch_array, get_kernel, multiprocessor_count

SOURCE = r"""
// NVRTC and nvcc have the math functions built in; a host compiler (the emulator) needs them declared
#ifndef __CUDACC__
#include <math.h>
#endif

__device__ inline float arccos(float x) { return acosf(x); }
__device__ inline double arccos(double x) { return acos(x); }

template <typename T, bool reflect>
__device__ void collision_probability(T* __restrict__ s, long long size, int tau)
{
    const T inv_pi = (T)0.318309886183790671537767526745028724;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        const T x = s[i];
        const T c = reflect ? (x > (T)1 ? (T)2 - x : (x < (T)-1 ? (T)-2 - x : x))
                            : (x > (T)1 ? (T)1 : (x < (T)-1 ? (T)-1 : x));
        T base = (T)1 - arccos(c) * inv_pi, w = (T)1;
        for (int t = tau; t; t >>= 1) {
            if (t & 1) w *= base;
            base *= base;
        }
        s[i] = w;
    }
}

extern "C" __global__ void collision_probability_f32(float* s, long long size, int tau)
{
    collision_probability<float, true>(s, size, tau);
}

extern "C" __global__ void collision_probability_f64(double* s, long long size, int tau)
{
    collision_probability<double, false>(s, size, tau);
}
"""

THREADS = 256
BLOCKS_PER_MULTIPROCESSOR = 8  # 2048 resident threads per SM: full occupancy, and a grid-stride loop beyond
_FUNCTIONS = {np.dtype(np.float32): "collision_probability_f32", np.dtype(np.float64): "collision_probability_f64"}


def collision_probability(s, tau):
    """In place: cosines s (a C-contiguous float32 or float64 CuPy array) -> (1 - arccos(s)/pi)**tau. Returns s."""
    if s.dtype not in _FUNCTIONS:
        raise TypeError(f"s must be float32 or float64, got dtype {s.dtype}")
    check_launch_array("s", s, s.dtype, s.shape)
    if isinstance(tau, (bool, np.bool_)) or not isinstance(tau, (int, np.integer)) or not 1 <= tau < 2**31:
        raise ValueError(f"tau must be a positive int, got {tau!r}")
    if s.size == 0:
        return s
    blocks = min(-(-s.size // THREADS), BLOCKS_PER_MULTIPROCESSOR * multiprocessor_count())
    kernel = get_kernel("expectation", SOURCE, _FUNCTIONS[s.dtype])
    kernel((blocks,), (THREADS,), (s, np.int64(s.size), np.int32(tau)))
    return s
