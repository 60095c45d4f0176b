"""YOSO self-attention (Zeng et al., ICML 2021), as transformers' YosoSelfAttention computes it.

Queries and keys are L2-normalised per head. A key k and query q collide under tau random hyperplanes with
probability (1 - arccos(q.k)/pi)**tau (the paper's eq. 4), so

  YOSO-E (expectation):  context = W V,  W[i, j] = (1 - arccos(q_i . k_j)/pi)**tau * mask_i * mask_j      O(n^2)
  YOSO   (sampling):     the same sum estimated with num_hash LSH tables of tau-bit codes (yoso_np.lsh)  O(n)

Each context row is then L2-normalised, and with conv_window a depthwise convolution over the sequence of the
masked values is added.
"""
import math
import threading

import numpy as np

from .. import cpu_kernels, lsh
from ..backend import array_module, cpu_threads, in_pool_section, parallel_map, split_range
from .linear import linear, linear_backward
from .params import add_prefix, sub

# acos(a) ~= sqrt(1 - a) * P(a) on [0, 1] (the form of Abramowitz & Stegun 4.4.45, refitted to degree 6):
# |error| / pi < 3e-8, below float32 resolution. float32 np.arccos is scalar code (~6 ns an element) and was
# most of YOSO-E's time at n = 4096; this runs as a dozen vectorised passes over a cache-sized block.
_ACOS_POLY = (1.570796238844488, -0.21459108792891465, 0.08883587557597458, -0.04919738679888585,
              0.027762804002751745, -0.012003286380013446, 0.0026116805683848963)
_NEG_ACOS_POLY_OVER_PI = tuple(-c / math.pi for c in _ACOS_POLY)
_NEG_ACOS_POLY_OVER_PI_F32 = np.array(_NEG_ACOS_POLY_OVER_PI, dtype=np.float32)
# elements of W per matmul block (rows * n_keys, of one head or of a stack of whole heads), and per slice of its
# elementwise weights (3 slices' buffers fit L2); measured best at n = 4096 on a 2-core EPYC: 85 ms a head against
# 119 ms unsliced
BLOCK_ELEMENTS = 1 << 19
SLICE_ELEMENTS = 1 << 17
# on a GPU the blocks are sized by memory, not cache: W for all (batch, head) pairs at once up to this many bytes,
# so a layer is a few launches (a batched matmul, the fused weights kernel, a batched matmul) at any head count.
# None: an eighth of the device's memory (the backward holds two such blocks), counted in 8-byte elements so that a
# stack of heads fits whatever the dtype; 12 heads of n = 4096 at batch 8 are one block on an H200 (141 GB)
GPU_BLOCK_BYTES = None


def power_inplace(x, tau, scratch):
    """x <- x**tau for a positive int tau, by repeated squaring (a fractional-power pow is far slower)."""
    xp = array_module(x)
    if tau == 1:
        return x
    xp.multiply(x, x, out=scratch)  # x**2
    have, tau = bool(tau & 1), tau >> 1  # x holds x**1, wanted if the low bit is set
    while True:
        if tau & 1:
            if have:
                x *= scratch
            else:
                xp.copyto(x, scratch)
                have = True
        tau >>= 1
        if not tau:
            return x
        xp.multiply(scratch, scratch, out=scratch)


def collision_probability(s, tau, scratch):
    """In place: cosines s -> (1 - arccos(s)/pi)**tau; cosines a rounding error outside [-1, 1] give no NaN.
    scratch: two arrays shaped like s."""
    xp = array_module(s)
    if s.dtype != np.float32:  # float64 (gradient checks, tight parity): exact arccos
        xp.clip(s, -1.0, 1.0, out=s)
        xp.arccos(s, out=s)
        s *= -1.0 / math.pi
        s += 1.0
        return power_inplace(s, tau, scratch[0])
    a, p = scratch
    xp.abs(s, out=a)
    c = _NEG_ACOS_POLY_OVER_PI
    xp.multiply(a, c[-1], out=p)
    for coef in c[-2:0:-1]:
        p += coef
        p *= a
    p += c[0]                 # p = -P(|s|)/pi
    # sqrt(|1 - |s||) rather than a clamp: no NaN when rounding puts |s| a few ulp above 1, the same error
    # as clamping (arccos near +-1 is as sensitive as that anyway), and 4x cheaper than xp.minimum.
    xp.subtract(1.0, a, out=a)
    xp.abs(a, out=a)
    xp.sqrt(a, out=a)
    p *= a                    # -arccos(|s|)/pi
    p += 0.5                  # 1/2 - arccos(|s|)/pi >= 0
    # give it the sign of s by its sign bit (3x cheaper than copysign): +-(1/2 - arccos(|s|)/pi) + 1/2 is
    # 1 - arccos(s)/pi for both signs, as arccos(-x) = pi - arccos(x)
    sign = a.view(np.uint32)
    xp.bitwise_and(s.view(np.uint32), np.uint32(0x80000000), out=sign)
    pbits = p.view(np.uint32)
    xp.bitwise_xor(pbits, sign, out=pbits)
    xp.add(p, 0.5, out=s)
    return power_inplace(s, tau, a)


def expectation_blocking(xp):
    """(elements of W per block, fused in-place weights routine or None) for a backend. The CPU blocks by cache size
    and computes the weights with a compiled loop or NumPy passes; CuPy blocks by GPU_BLOCK_BYTES and computes
    them with one fused kernel (raw_kernels.expectation, the twin of collision_probability)."""
    if xp is np:
        return BLOCK_ELEMENTS, None
    from ..raw_kernels import _compile, expectation
    budget = GPU_BLOCK_BYTES if GPU_BLOCK_BYTES is not None else _compile.total_memory() // 8
    return budget // 8, expectation.collision_probability


def _compiled_weights(xp, dtype, tau):
    """The compiled loop for collision_probability (float32 NumPy, numba installed), or None."""
    if xp is not np or dtype != np.float32 or not 1 <= tau < 32:
        return None
    return cpu_kernels.collision_probability()


def expectation_blocks(q, k, tau):
    """Yield (start, stop, W[:, start:stop]) over row blocks of W = collision_probability(q k^T) for a stack of
    heads; q, k: (heads, n, d). Only one block of the (heads, n, n) weights exists at a time: whole heads when
    they fit BLOCK_ELEMENTS together (one batched matmul for all of them: short sequences are a few large
    products, not many small ones), else row blocks of one head at a time (then heads must be 1). The weights
    are computed by one compiled loop (cpu_kernels, bit-identical) or in L2-sized slices of NumPy passes."""
    xp = array_module(q)
    block, fused = expectation_blocking(xp)
    compiled = fused or _compiled_weights(xp, q.dtype, tau)
    heads, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    rows = max(1, min(nq, block // max(heads * nk, 1)))
    if rows < nq and heads > 1:
        raise ValueError(f"expectation_blocks: {heads} heads of {nq} x {nk} do not fit one block of "
                         f"{block} elements; pass one head at a time")
    slice_rows = max(1, min(heads * rows, SLICE_ELEMENTS // max(nk, 1)))
    s_buf = xp.empty(heads * rows * nk, dtype=q.dtype)
    scratch = None if compiled is not None else xp.empty((2, slice_rows, nk), dtype=q.dtype)
    kt = k.transpose(0, 2, 1)
    for start in range(0, nq, rows):
        stop = min(start + rows, nq)
        s = s_buf[:heads * (stop - start) * nk].reshape(heads, stop - start, nk)
        xp.matmul(q[:, start:stop], kt, out=s)
        if fused is not None:
            fused(s, tau)
        elif compiled is not None:
            compiled(s, tau, _NEG_ACOS_POLY_OVER_PI_F32)
        else:
            flat = s.reshape(-1, nk)
            for i in range(0, flat.shape[0], slice_rows):
                j = min(i + slice_rows, flat.shape[0])
                collision_probability(flat[i:j], tau, (scratch[0, :j - i], scratch[1, :j - i]))
        yield start, stop, s


def as_stack(*arrays):
    """(n, d) or (heads, n, d) arrays as (heads, n, d) views."""
    return tuple(a.reshape((-1,) + a.shape[-2:]) for a in arrays)


def expectation_cumulation(q, k, v, tau, out=None):
    """W v for one head, (n, d) arrays, or a stack of whole heads, (heads, n, d), that fit one block;
    q, k unit rows, v with masked keys zeroed. out: a C-contiguous array of the result's shape to write, or None."""
    xp = array_module(q)
    q3, k3, v3 = as_stack(q, k, v)
    shape = q3.shape[:2] + v3.shape[2:]
    out3 = xp.empty(shape, dtype=v.dtype) if out is None else out.reshape(shape)
    for start, stop, w in expectation_blocks(q3, k3, tau):
        xp.matmul(w, v3, out=out3[:, start:stop])
    return out3.reshape(q.shape[:-1] + v.shape[-1:])


def l2_normalize(x, eps=1e-12, out=None):
    """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize); returns (y, norm). y is C-contiguous
    whatever x's layout (for heads split off a (batch, n, hidden) array the division is also the transpose that
    gives every head its own block of memory), or written into ``out`` (an array of x's shape, any layout)."""
    xp = array_module(x)
    out = xp.empty(x.shape, dtype=x.dtype) if out is None else out
    norm = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)

    def rows(r):
        xp.sqrt(xp.einsum("...i,...i->...", x[r], x[r])[..., None], out=norm[r])
        xp.divide(x[r], xp.maximum(norm[r], eps), out=out[r])

    split_range(rows, x.shape[0], xp) if x.ndim > 1 else rows(Ellipsis)
    return out, norm


def depthwise_conv(v, weight):
    """Per-head convolution along the sequence, zero padding w//2 on both sides (torch's Conv2d with
    kernel (w, 1), groups = heads, no bias). v: (batch, heads, n, d); weight: (heads, 1, w, 1)."""
    xp = array_module(v)
    n, w = v.shape[2], weight.shape[2]
    out = xp.zeros_like(v)
    for j in range(w):
        shift = j - w // 2  # out[i] += weight[j] * v[i + shift]
        lo, hi = max(0, -shift), n - max(0, shift)
        if lo < hi:
            out[:, :, lo:hi] += weight[None, :, 0, j, 0, None, None] * v[:, :, lo + shift:hi + shift]
    return out


PARALLEL_MIN_ELEMENTS = 1 << 20  # n x n weights (all heads together) worth the CPU threads


def for_each_head_stack(fn, rows, n_q, n_k, xp):
    """fn(slice of the batch * heads rows) over stacks of whole heads whose n_q x n_k weights fit one block (on the
    CPU one head at a time from n = 725), on CPU threads inside a backend.pool_section, or outside one when all the
    heads' weights together are large (at n = 4096 12 heads took 0.74 s instead of 1.2 on the caller's thread)."""
    per = max(1, expectation_blocking(xp)[0] // max(n_q * n_k, 1))
    stacks = [slice(i, min(i + per, rows)) for i in range(0, rows, per)]
    if rows * n_q * n_k >= PARALLEL_MIN_ELEMENTS or in_pool_section():  # inside one, BLAS has no threads of its own
        parallel_map(fn, stacks, xp)
    else:
        for r in stacks:
            fn(r)


def split_heads(x, heads):
    b, n, hidden = x.shape
    return x.reshape(b, n, heads, hidden // heads).transpose(0, 2, 1, 3)  # (batch, heads, n, head_dim)


def merge_heads(x):
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


def by_rows(fn, rows, n, xp):
    """fn(row slice) over contiguous chunks of the (batch * heads) rows of n tokens, on CPU threads when the
    rows are long enough to pay for it; the results (an array or a tuple of arrays) joined along axis 0, each
    chunk copied into place by the thread that computed it (a join after the threads was 10% of the sampling
    attention at n = 4096)."""
    chunks = max(1, min(rows, 2 * cpu_threads())) if n >= 256 and xp is np else 1  # a GPU takes all rows at once
    slices = [slice(rows * i // chunks, rows * (i + 1) // chunks) for i in range(chunks)]
    if len(slices) == 1:
        return fn(slices[0])
    joined, lock = [], threading.Lock()

    def run(r):
        part = fn(r)
        arrays = part if isinstance(part, tuple) else (part,)
        with lock:  # the first chunk done allocates the results
            if not joined:
                joined.extend(xp.empty((rows,) + a.shape[1:], dtype=a.dtype) for a in arrays)
        for whole, a in zip(joined, arrays):
            whole[r] = a
        return isinstance(part, tuple)

    is_tuple = parallel_map(run, slices, xp)[0]
    return tuple(joined) if is_tuple else joined[0]


def sampling_cumulation(q, k, v, mask, config, rng, query_mask=None):
    """LSH estimate of W v for all heads at once; q: (batch, heads, n_q, d), k, v: (batch, heads, n, d); mask
    (batch, n) of the keys, query_mask (batch, n_q) of the queries (None: mask). The hash matrices are drawn here,
    in order, so a seed gives the same draw however the rows are split; each chunk of rows is then hashed and
    cumulated on its own thread. Returns (out, (query mask rows, key mask rows, query codes, key codes))."""
    xp = array_module(q)
    b, h, n, d = k.shape
    rows = lambda t: t.reshape(b * h, t.shape[-2], t.shape[-1])  # views: attention() gives a head per block
    q, k, v = rows(q), rows(k), rows(v)
    k_mask = xp.repeat(mask != 0, h, axis=0)  # (batch*heads, n) bool: no 0/1 check (a device sync on CuPy)
    q_mask = k_mask if query_mask is None else xp.repeat(query_mask != 0, h, axis=0)
    tau, m = config.hash_code_len, config.num_hash
    matrices = lsh.draw_hash_matrices(rng, b * h, lsh.hash_dim(d, tau, config.use_fast_hash), m, tau,
                                      config.use_fast_hash, xp)

    def hash_and_cumulate(r):
        q_codes, k_codes = lsh.hash_with(q_mask[r], q[r], k_mask[r], k[r], matrices[r], num_hash=m,
                                         hash_code_len=tau, use_fast_hash=config.use_fast_hash, check_values=False)
        out = lsh.lsh_cumulation(q_mask[r], q_codes, k_mask[r], k_codes, v[r], 2 ** tau, check_values=False)
        # the codes joined hash-major, the memory order of the CPU loops' codes (joining them as [rows, n, m]
        # would transpose them twice)
        return out, q_codes.transpose(0, 2, 1), k_codes.transpose(0, 2, 1)

    out, q_codes, k_codes = by_rows(hash_and_cumulate, b * h, n, xp)
    hashes = (q_mask, k_mask, q_codes.transpose(0, 2, 1), k_codes.transpose(0, 2, 1))
    return out.reshape(b, h, q.shape[1], v.shape[-1]), hashes


def attention(p, x, mask, config, *, training=False, rng=None, rows=None):
    """p: the "attention.self." sub-dict; x: (batch, n, hidden); mask: (batch, n) 0/1 in x's dtype; rows: None, or
    a slice of the positions whose context is wanted (the queries; every position stays a key).
    Returns (context (batch, positions, hidden), cache)."""
    xp = array_module(x)
    heads = config.num_attention_heads
    x_q, mask_q = (x, mask) if rows is None else (x[:, rows], mask[:, rows])
    q, q_lin = linear(sub(p, "query."), x_q)
    k, k_lin = linear(sub(p, "key."), x)
    v, v_lin = linear(sub(p, "value."), x)
    q, q_norm = l2_normalize(split_heads(q, heads))
    k, k_norm = l2_normalize(split_heads(k, heads))
    v = split_heads(v, heads)  # masked keys contribute nothing; a head per block of memory, as q and k
    v = xp.multiply(v, mask[:, None, :, None], out=xp.empty(v.shape, dtype=v.dtype))
    hashes = None
    if config.use_expectation:
        b, h, n_q, d = q.shape
        q3, k3, v3 = as_stack(q, k, v)  # views: a head per block of memory
        ctx = xp.empty(q.shape[:3] + v.shape[3:], dtype=v.dtype)
        ctx3 = ctx.reshape(b * h, n_q, -1)

        def stack(r):
            expectation_cumulation(q3[r], k3[r], v3[r], config.hash_code_len, out=ctx3[r])

        for_each_head_stack(stack, b * h, n_q, k.shape[2], xp)
    else:
        if rng is None:
            raise ValueError("use_expectation=False samples hash functions and needs rng (an int seed or "
                             "numpy.random.Generator), got None")
        ctx, hashes = sampling_cumulation(q, k, v, mask, config, rng, query_mask=None if rows is None else mask_q)
    ctx *= mask_q[:, None, :, None]  # masked queries give zero rows
    merged = xp.empty(x_q.shape[:-1] + (ctx.shape[1] * ctx.shape[3],), dtype=ctx.dtype)
    out, ctx_norm = l2_normalize(ctx, out=split_heads(merged, heads))  # the division writes the merged heads
    if config.conv_window is not None:
        conv = depthwise_conv(v, p["conv.weight"])
        out += conv if rows is None else conv[:, :, rows]
    return merged, (p, q_lin, k_lin, v_lin, q, q_norm, k, k_norm, v, mask, rows, ctx, ctx_norm, hashes)


# ---------------------------------------------------------------------------------------------------------------
# backward

def expectation_cumulation_backward(g, q, k, v, tau, out=None):
    """Gradients of W v for one head, (n, d) arrays, or a stack of whole heads (heads, n, d), as the paper
    (sec. 3.3) and transformers' YosoCumulation define them:

        dV = W^T G,   dQ = ((G V^T) * W) (tau/2) K,   dK = ((G V^T) * W)^T (tau/2) Q.

    This is a SURROGATE, not the derivative of arccos: d/dx (1 - arccos(x)/pi)^tau has a factor 1/sqrt(1 - x^2)
    that blows up as q.k -> +-1; the paper replaces it by tau/2 (its value's scale where the weights matter).
    W is recomputed block by block instead of cached: the backward holds one block of the n x n matrix at a
    time, like the forward. g: (n, dv) upstream gradient of the (query-masked) context; q, k unit rows.
    out: None or C-contiguous (dq, dk, dv) of the inputs' shapes to write."""
    xp = array_module(q)
    g3, q3, k3, v3 = as_stack(g, q, k, v)
    dq, dk, dv = (xp.empty_like(q3), xp.empty_like(k3), xp.empty_like(v3)) if out is None else as_stack(*out)
    vt = v3.transpose(0, 2, 1)
    gv = None
    for start, stop, w in expectation_blocks(q3, k3, tau):
        gb = g3[:, start:stop]
        if start == 0:  # the first block writes dv and dk, the others add to them
            xp.matmul(w.transpose(0, 2, 1), gb, out=dv)
        else:
            dv += w.transpose(0, 2, 1) @ gb
        if gv is None or gv.shape != w.shape:
            gv = xp.empty_like(w)
        xp.matmul(gb, vt, out=gv)
        w *= gv  # (G V^T) * W
        xp.matmul(w, k3, out=dq[:, start:stop])
        if start == 0:
            xp.matmul(w.transpose(0, 2, 1), q3[:, start:stop], out=dk)
        else:
            dk += w.transpose(0, 2, 1) @ q3[:, start:stop]
    dq *= tau / 2.0
    dk *= tau / 2.0
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def sampling_cumulation_backward(g, q, k, v, hashes, config):
    """With lsh_backward the same three products estimated from the forward's hash codes (transformers'
    YosoLSHCumulation.backward); all heads at once. g, q: (batch, heads, n_q, d); k, v: (batch, heads, n, d)."""
    xp = array_module(q)
    b, h, n, d = k.shape
    qm, km, q_codes, k_codes = hashes
    flat = lambda t: xp.ascontiguousarray(t.reshape(b * h, t.shape[-2], t.shape[-1]))
    g, q, k, v = flat(g), flat(q), flat(k), flat(v)
    capacity, half_tau = 2 ** config.hash_code_len, config.hash_code_len / 2.0
    k_scaled, q_scaled = half_tau * k, half_tau * q
    ok = {"check_values": False}  # the forward's own codes and masks
    dv = by_rows(lambda r: lsh.lsh_cumulation(km[r], k_codes[r], qm[r], q_codes[r], g[r], capacity, **ok), b * h, n,
                 xp)
    dq = by_rows(lambda r: lsh.lsh_weighted_cumulation(qm[r], q_codes[r], g[r], km[r], k_codes[r], v[r], k_scaled[r],
                                                       capacity, **ok), b * h, n, xp)
    dk = by_rows(lambda r: lsh.lsh_weighted_cumulation(km[r], k_codes[r], v[r], qm[r], q_codes[r], g[r], q_scaled[r],
                                                       capacity, **ok), b * h, n, xp)
    unflat = lambda t: t.reshape(b, h, t.shape[-2], t.shape[-1])
    return unflat(dq), unflat(dk), unflat(dv)


def l2_normalize_backward(dy, y, norm, eps=1e-12, out=None):
    """y = x / max(||x||, eps): dx = (dy - y (y . dy)) / ||x|| where ||x|| > eps, else dy / eps (y = x / eps is
    linear there). dx is a new array, or written into ``out`` (dy's shape, any layout)."""
    xp = array_module(dy)
    dx = xp.empty(dy.shape, dtype=xp.result_type(y.dtype, dy.dtype)) if out is None else out

    def rows(r):
        along = xp.einsum("...i,...i->...", y[r], dy[r])[..., None]
        along *= norm[r] > eps
        xp.multiply(y[r], along, out=dx[r])
        xp.subtract(dy[r], dx[r], out=dx[r])
        dx[r] /= xp.maximum(norm[r], eps)

    split_range(rows, dx.shape[0], xp) if dx.ndim > 1 else rows(Ellipsis)
    return dx


def depthwise_conv_backward(dout, v, weight):
    """Returns (dv, dweight) of depthwise_conv."""
    xp = array_module(dout)
    n, w = v.shape[2], weight.shape[2]
    dv = xp.zeros_like(v)
    dweight = xp.zeros_like(weight)
    for j in range(w):
        shift = j - w // 2
        lo, hi = max(0, -shift), n - max(0, shift)
        if lo < hi:
            dv[:, :, lo + shift:hi + shift] += weight[None, :, 0, j, 0, None, None] * dout[:, :, lo:hi]
            dweight[:, 0, j, 0] = (dout[:, :, lo:hi] * v[:, :, lo + shift:hi + shift]).sum(axis=(0, 2, 3))
    return dv, dweight


def attention_backward(dout, cache, config):
    """dout: (batch, positions, hidden) gradient of attention's output. Returns (dx (batch, n, hidden), grads keyed
    like p)."""
    p, q_lin, k_lin, v_lin, q, q_norm, k, k_norm, v, mask, rows, ctx, ctx_norm, hashes = cache
    xp = array_module(dout)
    heads, tau = config.num_attention_heads, config.hash_code_len
    masked_q = (mask if rows is None else mask[:, rows])[:, None, :, None]
    g = split_heads(dout, heads)
    grads = {}
    dv_conv = None
    if config.conv_window is not None:
        g_conv = g
        if rows is not None:  # over every position: zero where no query was computed
            g_conv = xp.zeros(v.shape, dtype=g.dtype)
            g_conv[:, :, rows] = g
        dv_conv, grads["conv.weight"] = depthwise_conv_backward(g_conv, v, p["conv.weight"])
    g = l2_normalize_backward(g, ctx / xp.maximum(ctx_norm, 1e-12), ctx_norm)
    g *= masked_q  # through the query mask
    if hashes is not None and config.lsh_backward:
        dq, dk, dv = sampling_cumulation_backward(g, q, k, v, hashes, config)
    else:
        b, h, n_q, d = q.shape
        dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
        g3, q3, k3, v3, dq3, dk3, dv3 = as_stack(xp.ascontiguousarray(g), q, k, v, dq, dk, dv)

        def stack(r):
            expectation_cumulation_backward(g3[r], q3[r], k3[r], v3[r], tau, out=(dq3[r], dk3[r], dv3[r]))

        for_each_head_stack(stack, b * h, n_q, k.shape[2], xp)
    del g
    if dv_conv is not None:
        dv += dv_conv
    dv *= mask[:, None, :, None]  # through the key mask of v
    # written through head-split views: no merge_heads copy
    dq_merged = xp.empty(dout.shape, dtype=dq.dtype)
    l2_normalize_backward(dq, q, q_norm, out=split_heads(dq_merged, heads))
    del dq
    dk_merged = xp.empty(dout.shape[:1] + k_lin[1].shape[1:], dtype=dk.dtype)
    l2_normalize_backward(dk, k, k_norm, out=split_heads(dk_merged, heads))
    parts = [("query.", dq_merged, q_lin), ("key.", dk_merged, k_lin), ("value.", merge_heads(dv), v_lin)]
    if rows is not None:  # the queries' dx covers only their rows: start from the keys'
        parts.append(parts.pop(0))
    dx = None
    for name, d, lin in parts:
        dxi, gi = linear_backward(d, lin)
        if dx is None:
            dx = dxi
        else:
            into = dx[:, rows] if name == "query." and rows is not None else dx
            into += dxi
        grads.update(add_prefix(gi, name))
    return dx, grads
