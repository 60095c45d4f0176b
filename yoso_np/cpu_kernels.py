"""Compiled CPU loops (numba) for the work NumPy runs as many passes over memory or as scattered row operations.

Optional: with numba installed (``pip install 'yoso_np[fast]'``) NumPy inputs take these loops (float32; the
cumulation also float64); without it, or with the environment variable YOSO_NP_NUMBA=0, the NumPy code they twin
runs instead, the code CuPy runs on a GPU. collision_probability, gelu and lsh_cumulation do their twin's float
operations in the same order, so both give bit-identical results; fast_hash computes the projections by Hadamard
butterflies as the CUDA kernel does, so its codes differ from the composed-matrix twin's only where a projection
is at rounding level; lsh_weighted_cumulation and layer_norm sum in another order (float32 rounding apart).
tests/test_cpu_kernels.py and tests/test_lsh.py hold them side by side. The LSH loops keep hash codes hash-major,
[batch, num_hash, n]. numba is imported on first use, never by ``import yoso_np``.
"""
import functools
import math
import os
import threading

import numpy as np


@functools.lru_cache(maxsize=None)
def _njit():
    """A function compiling a loop with numba, or None where numba is missing or switched off."""
    if os.environ.get("YOSO_NP_NUMBA", "1") == "0":
        return None
    try:
        import numba
    except ImportError:
        return None
    # nogil: the caller's threads run in parallel; error_model numpy: x / 0 is inf as in NumPy, with no
    # ZeroDivisionError check to keep the loop from vectorising
    options = dict(nogil=True, error_model="numpy")

    def compile_loop(fn):
        # Compiled once per machine and kept on disk. By default numba keeps that cache beside the source, in the
        # installed package's __pycache__, where pip's uninstall leaves it: the folder site-packages/yoso_np then
        # stays behind and shadows a later editable install (Python takes it for a namespace package). So the
        # cache goes to numba's user-wide cache folder (numba's own choice for read-only installs), unless
        # NUMBA_CACHE_DIR names one. numba reads config.CACHE_DIR when the dispatcher picks its cache location.
        with _CACHE_DIR_LOCK:
            chosen = numba.config.CACHE_DIR
            if not chosen:
                numba.config.CACHE_DIR = _user_wide_numba_cache()
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
                return numba.njit(**options)(fn)
            finally:
                numba.config.CACHE_DIR = chosen

    return compile_loop


_CACHE_DIR_LOCK = threading.Lock()


def _user_wide_numba_cache():
    from numba.misc.appdirs import AppDirs

    return AppDirs(appname="numba", appauthor=False).user_cache_dir


@functools.lru_cache(maxsize=None)
def _compiled(loop):
    """``loop`` compiled once per process (and cached on disk), or None where numba is missing or switched off."""
    njit = _njit()
    return None if njit is None else njit(loop)


def _collision_probability_loop(s, tau, neg_poly_over_pi):
    # the twin of layers.attention.collision_probability for float32 (see there for the math), then power_inplace
    flat = s.reshape(-1)
    one, half = np.float32(1.0), np.float32(0.5)
    c = neg_poly_over_pi
    for i in range(flat.size):
        x = flat[i]
        a = np.abs(x)
        p = a * c[6]
        for j in range(5, 0, -1):
            p = (p + c[j]) * a
        p = (p + c[0]) * np.sqrt(np.abs(one - a)) + half
        if math.copysign(1.0, x) < 0:  # the sign bit of x, also for -0.0: flips p's sign bit like the xor
            p = -p
        p = p + half
        # p ** tau by repeated squaring (tau <= 24 < 32), multiplied in power_inplace's order; 1 * x == x exactly,
        # so starting from one changes no bit. The conditions do not depend on i: the compiler hoists them.
        r = p if tau & 1 else one
        square = p * p
        if tau & 2:
            r = r * square
        if tau >= 4:
            square = square * square
            if tau & 4:
                r = r * square
        if tau >= 8:
            square = square * square
            if tau & 8:
                r = r * square
        if tau >= 16:
            square = square * square
            if tau & 16:
                r = r * square
        flat[i] = r


def collision_probability():
    """In place on a C-contiguous float32 array s: s <- (1 - arccos(s)/pi)**tau, called as
    ``kernel(s, tau, neg_poly_over_pi)`` (the float32 coefficients of layers.attention); None without numba."""
    return _compiled(_collision_probability_loop)


def _gelu_loop(x, out, tail_poly):
    # the twin of layers.activations._gelu_float32_into: out = max(x, 0) - |x| P(Z > |x|)
    xs, outs = x.reshape(-1), out.reshape(-1)
    zero, one = np.float32(0.0), np.float32(1.0)
    c = tail_poly
    for i in range(xs.size):
        v = xs[i]
        a = np.abs(v)
        p = a * c[7]
        for j in range(6, 0, -1):
            p = (p + c[j]) * a
        p = p + c[0]
        for _ in range(4):
            p = p * p
        outs[i] = (v if v > zero else zero) - (one / p) * a  # NaN in, NaN out through the tail as in NumPy


def gelu():
    """out <- gelu(x) for C-contiguous float32 arrays, called as ``kernel(x, out, tail_poly)`` (the float32
    coefficients of layers.activations); None without numba."""
    return _compiled(_gelu_loop)


def _gelu_grad_loop(x, dy, out, tail_poly, inv_sqrt_2pi):
    # dx = dy * (Phi(x) + x phi(x)), Phi from gelu's tail polynomial P(Z > |x|) = p(|x|)**-16 (float32 rounding
    # apart from activations._gelu_grad, which takes Phi from erfc); phi(x) = exp(-x**2 / 2) / sqrt(2 pi)
    xs, dys, outs = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
    zero, one, half, minus_half = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(-0.5)
    # exp(t) for t <= 0 as e^r 2^-m, t = r - m ln 2, |r| <= ln 2 / 2: e^r by its Taylor sum to r^7 (error below
    # 1e-8), 2^-m by the bits of m (exact); as accurate as np.exp (the rounding of t dominates). np.exp in this loop
    # is a libm call per element: the loop took 42 ms at (4096, 3072) with it, 13 ms without
    log2e, ln2_hi, ln2_lo = np.float32(1.442695), np.float32(0.693359375), np.float32(-2.1219444e-4)
    floor_t = np.float32(-87.0)  # 2^-m stays a normal number
    c = tail_poly
    for i in range(xs.size):
        v = xs[i]
        a = np.abs(v)
        p = a * c[7]
        for j in range(6, 0, -1):
            p = (p + c[j]) * a
        p = p + c[0]
        for _ in range(4):
            p = p * p
        tail = one / p
        cdf = one - tail if v > zero else tail
        t = max(minus_half * v * v, floor_t)
        m = np.floor(half - t * log2e)
        r = (t + m * ln2_hi) + m * ln2_lo
        e = (((((np.float32(1 / 5040) * r + np.float32(1 / 720)) * r + np.float32(1 / 120)) * r + np.float32(1 / 24))
              * r + np.float32(1 / 6)) * r + half) * r + one
        e = e * r + one
        bits = np.int32(m)
        e = e * (half if bits & 1 else one)  # unrolled: a loop over the bits ran 1.4x slower
        e = e * (np.float32(2.0 ** -2) if bits & 2 else one)
        e = e * (np.float32(2.0 ** -4) if bits & 4 else one)
        e = e * (np.float32(2.0 ** -8) if bits & 8 else one)
        e = e * (np.float32(2.0 ** -16) if bits & 16 else one)
        e = e * (np.float32(2.0 ** -32) if bits & 32 else one)
        e = e * (np.float32(2.0 ** -64) if bits & 64 else one)
        e = e if t > floor_t else zero
        outs[i] = dys[i] * (cdf + v * (e * inv_sqrt_2pi))


def gelu_grad():
    """out <- dy * gelu'(x) for C-contiguous float32 arrays, called as ``kernel(x, dy, out, tail_poly, inv_sqrt_2pi)``
    (float32 constants of layers.activations); None without numba."""
    return _compiled(_gelu_grad_loop)


def _layer_norm_loop(x, weight, bias, eps, out, mean, rstd):
    # the loop form of layers.norm.layer_norm on float32 rows (x, out: [rows, h]; mean, rstd: [rows, 1]): the same
    # two passes (the mean, then the mean square of x - mean) and the same float32 operations per element; only the
    # two sums' order differs (eight accumulators, which the compiler can keep in one vector). Each row is read from
    # memory once and only the output written: the loop is bound by memory bandwidth.
    rows, h = x.shape
    whole = h - h % 8
    zero = np.float32(0.0)
    for r in range(rows):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for j in range(0, whole, 8):
            a0 += x[r, j]
            a1 += x[r, j + 1]
            a2 += x[r, j + 2]
            a3 += x[r, j + 3]
            a4 += x[r, j + 4]
            a5 += x[r, j + 5]
            a6 += x[r, j + 6]
            a7 += x[r, j + 7]
        for j in range(whole, h):
            a0 += x[r, j]
        m = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / np.float32(h)
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for j in range(0, whole, 8):
            d0, d1, d2, d3 = x[r, j] - m, x[r, j + 1] - m, x[r, j + 2] - m, x[r, j + 3] - m
            d4, d5, d6, d7 = x[r, j + 4] - m, x[r, j + 5] - m, x[r, j + 6] - m, x[r, j + 7] - m
            a0 += d0 * d0
            a1 += d1 * d1
            a2 += d2 * d2
            a3 += d3 * d3
            a4 += d4 * d4
            a5 += d5 * d5
            a6 += d6 * d6
            a7 += d7 * d7
        for j in range(whole, h):
            d = x[r, j] - m
            a0 += d * d
        var = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / np.float32(h)
        s = np.float32(1.0) / np.sqrt(var + eps)
        mean[r, 0] = m
        rstd[r, 0] = s
        for j in range(h):
            out[r, j] = ((x[r, j] - m) * s) * weight[j] + bias[j]


def layer_norm():
    """``kernel(x, weight, bias, eps, out, mean, rstd)`` for C-contiguous float32 rows, see _layer_norm_loop; None
    without numba."""
    return _compiled(_layer_norm_loop)


def _layer_norm_backward_loop(x, dy, weight, mean, rstd, dx, dweight, dbias):
    # the loop form of layers.norm.layer_norm_backward on float32 rows (x, dy, dx: [rows, h]; mean, rstd: [rows, 1]):
    # xhat = (x - mean) rstd and g = dy weight recomputed per row, dx = rstd (g - mean(g) - xhat mean(g xhat));
    # dweight, dbias [h] (zeros in) get the rows' sums of dy xhat and dy added, row by row as NumPy adds them.
    # The two row sums take eight accumulators, as the forward's.
    rows, h = x.shape
    whole = h - h % 8
    zero = np.float32(0.0)
    for r in range(rows):
        m, s = mean[r, 0], rstd[r, 0]
        for j in range(h):
            xhat = (x[r, j] - m) * s
            dweight[j] += dy[r, j] * xhat
            dbias[j] += dy[r, j]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = zero
        for j in range(0, whole, 8):
            g0, g1, g2, g3 = dy[r, j] * weight[j], dy[r, j + 1] * weight[j + 1], dy[r, j + 2] * weight[j + 2], \
                dy[r, j + 3] * weight[j + 3]
            g4, g5, g6, g7 = dy[r, j + 4] * weight[j + 4], dy[r, j + 5] * weight[j + 5], dy[r, j + 6] * weight[j + 6], \
                dy[r, j + 7] * weight[j + 7]
            a0 += g0
            a1 += g1
            a2 += g2
            a3 += g3
            a4 += g4
            a5 += g5
            a6 += g6
            a7 += g7
            b0 += g0 * ((x[r, j] - m) * s)
            b1 += g1 * ((x[r, j + 1] - m) * s)
            b2 += g2 * ((x[r, j + 2] - m) * s)
            b3 += g3 * ((x[r, j + 3] - m) * s)
            b4 += g4 * ((x[r, j + 4] - m) * s)
            b5 += g5 * ((x[r, j + 5] - m) * s)
            b6 += g6 * ((x[r, j + 6] - m) * s)
            b7 += g7 * ((x[r, j + 7] - m) * s)
        for j in range(whole, h):
            g = dy[r, j] * weight[j]
            a0 += g
            b0 += g * ((x[r, j] - m) * s)
        mean_g = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / np.float32(h)
        mean_gx = (((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7))) / np.float32(h)
        for j in range(h):
            dx[r, j] = s * (dy[r, j] * weight[j] - mean_g - ((x[r, j] - m) * s) * mean_gx)


def layer_norm_backward():
    """``kernel(x, dy, weight, mean, rstd, dx, dweight, dbias)`` for C-contiguous float32 rows, see
    _layer_norm_backward_loop; None without numba."""
    return _compiled(_layer_norm_backward_loop)


def _lsh_cumulation_loop(query_hash_code, key_hash_code, key_keep, value, table, out):
    # the twin of lsh._cumulate_by_tables: out[b, q] += sum over hashes f, in order, of table_f[code_qf], where
    # table_f[c] = the sum over kept keys k, in order, of value[b, k] with code c. Codes are hash-major
    # ([batch, num_hash, n]: one hash's codes side by side, 1.3x faster at n = 4096 than a stride of num_hash);
    # table: [capacity, d_v] zeros. Between hashes the table is zeroed whole when it has no more rows than there
    # are keys (1.3x faster at n = 4096, 512 rows), else only the rows the keys touched.
    batch, num_hash, n_q = query_hash_code.shape
    n_k, d_v = value.shape[1:]
    capacity = table.shape[0]
    for b in range(batch):
        for f in range(num_hash):
            for k in range(n_k):
                if key_keep[b, k]:
                    row = key_hash_code[b, f, k]
                    for j in range(d_v):
                        table[row, j] += value[b, k, j]
            for q in range(n_q):
                row = query_hash_code[b, f, q]
                for j in range(d_v):
                    out[b, q, j] += table[row, j]
            if capacity <= n_k:
                for row in range(capacity):
                    for j in range(d_v):
                        table[row, j] = 0
            else:
                for k in range(n_k):
                    row = key_hash_code[b, f, k]
                    for j in range(d_v):
                        table[row, j] = 0


def lsh_cumulation():
    """``kernel(query_hash_code, key_hash_code, key_keep, value, table, out)`` with hash-major codes, see
    _lsh_cumulation_loop; None without numba."""
    return _compiled(_lsh_cumulation_loop)


def _lsh_weighted_cumulation_loop(query_hash_code, query_keep, query_weight, key_hash_code, key_keep, key_weight,
                                  value, capacity, out):
    # the loop form of lsh.lsh_weighted_cumulation before its division by m (float32), hash-major codes: per hash,
    # the kept keys' weights and values are counting-sorted by code, then every kept query walks its bucket, adding
    # (qw . kw) v. The dot runs on four accumulators (numba keeps a single float sum sequential, hence scalar).
    batch, num_hash, n_q = query_hash_code.shape
    n_k, d_w, d_v = key_hash_code.shape[2], query_weight.shape[2], value.shape[2]
    start = np.empty(capacity + 1, dtype=np.int64)
    fill = np.empty(capacity, dtype=np.int64)
    sorted_weight = np.empty((n_k, d_w), dtype=np.float32)
    sorted_value = np.empty((n_k, d_v), dtype=np.float32)
    zero = np.float32(0.0)
    for b in range(batch):
        for f in range(num_hash):
            start[:] = 0
            for k in range(n_k):
                if key_keep[b, k]:
                    start[key_hash_code[b, f, k] + 1] += 1
            for code in range(capacity):
                start[code + 1] += start[code]
            fill[:] = start[:capacity]
            for k in range(n_k):
                if key_keep[b, k]:
                    code = key_hash_code[b, f, k]
                    slot = fill[code]
                    fill[code] += 1
                    for j in range(d_w):  # a bucket's keys side by side: sequential reads below
                        sorted_weight[slot, j] = key_weight[b, k, j]
                    for j in range(d_v):
                        sorted_value[slot, j] = value[b, k, j]
            for q in range(n_q):
                if not query_keep[b, q]:
                    continue
                code = query_hash_code[b, f, q]
                for slot in range(start[code], start[code + 1]):
                    a0 = a1 = a2 = a3 = zero
                    whole = d_w - d_w % 4
                    for j in range(0, whole, 4):
                        a0 += query_weight[b, q, j] * sorted_weight[slot, j]
                        a1 += query_weight[b, q, j + 1] * sorted_weight[slot, j + 1]
                        a2 += query_weight[b, q, j + 2] * sorted_weight[slot, j + 2]
                        a3 += query_weight[b, q, j + 3] * sorted_weight[slot, j + 3]
                    for j in range(whole, d_w):
                        a0 += query_weight[b, q, j] * sorted_weight[slot, j]
                    w = (a0 + a1) + (a2 + a3)
                    for j in range(d_v):
                        out[b, q, j] += w * sorted_value[slot, j]


def lsh_weighted_cumulation():
    """``kernel(query_hash_code, query_keep, query_weight, key_hash_code, key_keep, key_weight, value, capacity,
    out)`` for float32 arrays and hash-major codes, see _lsh_weighted_cumulation_loop; None without numba."""
    return _compiled(_lsh_weighted_cumulation_loop)


# tokens the compiled fast_hash transforms at a time. A compile-time constant: with every vector loop running over
# exactly this many tokens the compiler can prove the rows of a butterfly apart and vectorise without alias checks
# (with two stages a pass, 1.3-1.8x faster than one stage a pass over a block size passed in at run time). Measured
# on two threads at n = 4096: 96 tokens 0.92-0.94x the time of 64 for head dims 32, 64 and 128; 32 and 48 are 2-3x
# slower, 128 and more no faster than 96. A last, shorter block costs a whole one: at n = 512, 1.02x the time of 64.
FAST_HASH_BLOCK = 96


def _fast_hash_loop(x, keep, dmat, num_hash, hash_code_len, codes):
    # the loop form of lsh.fast_hash, as the CUDA kernel computes it: per part p, y = H D3 H D2 H D1 x (x zero-
    # padded to d), hash f = p * (d // L) + g takes bits g * L .. g * L + L - 1. Blocks of tokens are transposed
    # into [d, block] so that every butterfly is a vector operation over tokens; H runs two stages per pass over
    # the rows (radix 4: half the loads and stores of one stage a pass), the same additions in the same order.
    # Codes may differ from the NumPy twin's composed-matrix projections where a projection is at rounding level.
    batch, n, dim = x.shape
    num_part, d = dmat.shape[2], dmat.shape[3]
    per_part = d // hash_code_len
    block = FAST_HASH_BLOCK
    xt = np.zeros((d, block), dtype=np.float32)  # rows dim .. d - 1 stay zero: the padding
    buf = np.zeros((d, block), dtype=np.float32)
    acc = np.zeros(block, dtype=np.int32)
    kept = np.zeros(block, dtype=np.int32)
    for b in range(batch):
        for t0 in range(0, n, block):
            tokens = min(block, n - t0)  # a last, shorter block leaves stale tokens past `tokens`, never read out
            for t in range(tokens):  # the block transposed once, not once per part
                for j in range(dim):
                    xt[j, t] = x[b, t0 + t, j]
            for t in range(tokens):  # all bits set for kept tokens, none for masked ones (code 0)
                kept[t] = np.int32(-1) if keep[b, t0 + t] else np.int32(0)
            for p in range(num_part):
                for r in range(3):
                    # D_r: D_1 on the block itself; D_2 and D_3 as the first butterfly pass loads its rows (1.1x
                    # faster than a pass of their own), unless d < 4 leaves no such pass
                    signs_in_pass = r > 0 and d >= 4
                    if not signs_in_pass:
                        for j in range(d):
                            sign = dmat[b, r, p, j]
                            if r == 0:
                                for t in range(block):
                                    buf[j, t] = xt[j, t] * sign
                            else:
                                for t in range(block):
                                    buf[j, t] *= sign
                    h = 1
                    while 4 * h <= d:  # stages h and 2h on rows j, j + h, j + 2h, j + 3h
                        for i in range(0, d, 4 * h):
                            for j in range(i, i + h):
                                r0, r1, r2, r3 = buf[j], buf[j + h], buf[j + 2 * h], buf[j + 3 * h]
                                if h == 1 and signs_in_pass:
                                    s0, s1, s2, s3 = dmat[b, r, p, j], dmat[b, r, p, j + 1], dmat[b, r, p, j + 2], \
                                        dmat[b, r, p, j + 3]
                                    for t in range(block):
                                        a0, a1, a2, a3 = r0[t] * s0, r1[t] * s1, r2[t] * s2, r3[t] * s3
                                        b0, b1, b2, b3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
                                        r0[t], r1[t], r2[t], r3[t] = b0 + b2, b1 + b3, b0 - b2, b1 - b3
                                else:
                                    for t in range(block):
                                        a0, a1, a2, a3 = r0[t], r1[t], r2[t], r3[t]
                                        b0, b1, b2, b3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
                                        r0[t], r1[t], r2[t], r3[t] = b0 + b2, b1 + b3, b0 - b2, b1 - b3
                        h *= 4
                    if h < d:  # an odd number of stages: the last one alone
                        for j in range(h):
                            for t in range(block):
                                u, v = buf[j, t], buf[j + h, t]
                                buf[j, t], buf[j + h, t] = u + v, u - v
                for g in range(per_part):
                    f = p * per_part + g
                    if f >= num_hash:
                        break
                    # bit i of the code is row g * L + i: shifted in from the top bit down, a shift by a constant
                    # (1.2x faster for the whole loop than or-ing in each bit shifted by i)
                    top = g * hash_code_len + hash_code_len - 1
                    for t in range(block):
                        acc[t] = np.int32(buf[top, t] > 0)
                    for row in range(top - 1, top - hash_code_len, -1):
                        for t in range(block):
                            acc[t] = (acc[t] << 1) | np.int32(buf[row, t] > 0)
                    for t in range(tokens):
                        codes[b, f, t0 + t] = acc[t] & kept[t]


def fast_hash():
    """``kernel(x [batch, n, dim] float32, keep [batch, n] bool, dmat [batch, 3, num_part, d] float32, num_hash,
    hash_code_len, codes [batch, num_hash, n] int32 (hash-major))`` with dim <= d; None without numba."""
    return _compiled(_fast_hash_loop)
