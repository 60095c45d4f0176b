"""fast_hash on the GPU.

Math: for every token x (dim = 2**log2_dim floats) and part p,
    y = H D3 H D2 H D1 x,   D_r = diag(dmat[b, r, p]) (random signs),  H = unnormalised Sylvester-Hadamard matrix,
and hash f = p * (dim // L) + g has bit i = [y[g * L + i] > 0]. Masked tokens get code 0.
H is applied as log2(dim) in-place butterflies (a, c) -> (a + c, a - c) at distance 1, 2, 4, ...

Layout: a block takes a tile of tokens (tile * dim floats in shared memory) and walks the tiles grid-stride, so any
number of tokens works. NumPy twin: yoso_np.lsh.fast_hash (one matmul with the composed matrix D1 H D2 H D3 H;
the two differ only by float rounding, i.e. in bits whose projection is at rounding level).
"""
import numpy as np

from ._compile import check_int32, check_launch_array, get_kernel, multiprocessor_count

SOURCE = r"""
extern "C" __global__ void fast_hash(
    const int* __restrict__ mask,      // [tokens]              tokens = batch * n
    const float* __restrict__ x,       // [tokens, dim]
    const float* __restrict__ dmat,    // [batch, 3, num_part, dim]
    int* __restrict__ codes,           // [tokens, num_hash]
    int batch, int n, int log2_dim, int num_part, int num_hash, int code_len, int tile)
{
    extern __shared__ float y[];       // [tile, dim]
    const int dim = 1 << log2_dim;
    const int half = dim >> 1;
    const int per_part = dim / code_len;
    const long long tokens = (long long)batch * n;
    const long long tiles = (tokens + tile - 1) / tile;

    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        const long long first = t * tile;
        for (int p = 0; p < num_part; ++p) {
            for (int round = 0; round < 3; ++round) {
                // y <- D_round * (round == 0 ? x : y)
                for (int i = threadIdx.x; i < tile * dim; i += blockDim.x) {
                    const long long token = first + (i >> log2_dim);
                    const int j = i & (dim - 1);
                    float v = 0.f;
                    if (token < tokens) {
                        const long long b = token / n;
                        const float sign = dmat[((b * 3 + round) * num_part + p) * dim + j];
                        v = sign * (round == 0 ? x[token * dim + j] : y[i]);
                    }
                    y[i] = v;
                }
                __syncthreads();
                // y <- H y
                for (int log2_h = 0; log2_h < log2_dim; ++log2_h) {
                    const int h = 1 << log2_h;
                    for (int i = threadIdx.x; i < tile * half; i += blockDim.x) {
                        const int token = i >> (log2_dim - 1);
                        const int pair = i & (half - 1);
                        const int lo = token * dim + ((pair >> log2_h) << (log2_h + 1)) + (pair & (h - 1));
                        const float a = y[lo], c = y[lo + h];
                        y[lo] = a + c;
                        y[lo + h] = a - c;
                    }
                    __syncthreads();
                }
            }
            // bit i of hash p * per_part + g is [y[g * code_len + i] > 0]
            for (int i = threadIdx.x; i < tile * per_part; i += blockDim.x) {
                const long long token = first + i / per_part;
                const int g = i % per_part;
                const int f = p * per_part + g;
                if (token < tokens && f < num_hash) {
                    int code = 0;
                    if (mask[token]) {
                        const float* bits = y + (i / per_part) * dim + g * code_len;
                        for (int bit = 0; bit < code_len; ++bit) code |= (bits[bit] > 0.f) << bit;
                    }
                    codes[token * num_hash + f] = code;
                }
            }
            __syncthreads();
        }
    }
}
"""

THREADS = 256
TILE_FLOATS = 1024      # shared floats per block when dim <= 1024 (4 KB)
MAX_DIM = 8192          # 32 KB of shared memory for one token


def fast_hash(mask, x, dmat, num_hash, hash_code_len):
    """codes [batch, n, num_hash] int32 of x [batch, n, dim] (float32, dim a power of two <= 8192).

    mask: int32 [batch, n] (nonzero = keep); dmat: float32 [batch, 3, num_part, dim] of +-1.
    """
    import cupy

    batch, n, dim = x.shape
    if dim < 1 or dim & (dim - 1) or dim > MAX_DIM:
        raise ValueError(f"x: the last dim must be a power of two <= {MAX_DIM}, got {dim}")
    if not 1 <= hash_code_len <= min(dim, 24):
        raise ValueError(f"hash_code_len must be in [1, min(dim, 24)] = [1, {min(dim, 24)}], got {hash_code_len}")
    if num_hash < 1:
        raise ValueError(f"num_hash must be >= 1, got {num_hash}")
    num_part = max(1, -(-num_hash // (dim // hash_code_len)))
    check_launch_array("mask", mask, np.int32, (batch, n))
    check_launch_array("x", x, np.float32, (batch, n, dim))
    check_launch_array("dmat", dmat, np.float32, (batch, 3, num_part, dim))
    tile = max(1, TILE_FLOATS // dim)
    args = check_int32(batch=batch, n=n, log2_dim=dim.bit_length() - 1, num_part=num_part, num_hash=num_hash,
                       code_len=hash_code_len, tile=tile)
    codes = cupy.empty((batch, n, num_hash), dtype=cupy.int32)
    tiles = -(-batch * n // tile)
    if tiles == 0:
        return codes
    blocks = min(tiles, 16 * multiprocessor_count())
    kernel = get_kernel("fast_hash", SOURCE, "fast_hash")
    kernel((blocks,), (THREADS,), (mask, x, dmat, codes, *args), shared_mem=tile * dim * 4)
    return codes
