"""Dense layer y = x W^T + b, with W stored (out_features, in_features) as torch saves it.

All tokens of the batch go through one 2-D product ((batch, n, in) @ W^T would be batch separate products); inside
a backend.pool_section each product is split over the CPU threads (by tokens, or by output features when few)."""
from ..backend import array_module, split_range

# below this many tokens x W^T is computed as (W x^T)^T: OpenBLAS runs a short x against the transposed W at half
# speed (16 tokens: 0.5x the time at widths 768 and 3072, 64 tokens: 0.8x, a wash at 128, slower from 256)
TRANSPOSED_BELOW_TOKENS = 128


def linear(p, x):
    """p: {"weight": (out, in), "bias": (out,) optional}; x: (..., in) -> (..., out), C-contiguous."""
    xp = array_module(x)
    w, b = p["weight"], p.get("bias")
    x2 = x.reshape(-1, x.shape[-1])
    tokens, features = x2.shape[0], w.shape[0]
    if tokens < TRANSPOSED_BELOW_TOKENS:
        yt = xp.empty((features, tokens), dtype=xp.result_type(x2.dtype, w.dtype))

        def rows_of_yt(o):
            xp.matmul(w[o], x2.T, out=yt[o])

        split_range(rows_of_yt, features, xp, min_chunk=TRANSPOSED_BELOW_TOKENS)
        y = xp.empty(yt.T.shape, dtype=yt.dtype)
        if b is None:
            y[...] = yt.T
        else:
            xp.add(yt.T, b, out=y)
    else:
        y = xp.empty((tokens, features), dtype=xp.result_type(x2.dtype, w.dtype))

        def rows_of_y(r):
            xp.matmul(x2[r], w.T, out=y[r])
            if b is not None:
                y[r] += b

        split_range(rows_of_y, tokens, xp, min_chunk=TRANSPOSED_BELOW_TOKENS)
    return y.reshape(x.shape[:-1] + (features,)), (p, x)


def linear_backward(dy, cache, *, overwrite_x=False):
    """Returns (dx, grads). overwrite_x=True lets dx take the cached input's memory once the weight's gradient has
    read it (for a caller that uses the cache for the last time; a fresh (4096, 3072) array costs 4-5 ms of page
    faults)."""
    p, x = cache
    xp = array_module(dy)
    w = p["weight"]
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    grads = {"weight": xp.empty(w.shape, dtype=xp.result_type(dy2.dtype, x2.dtype))}
    if p.get("bias") is not None:
        grads["bias"] = xp.empty(w.shape[0], dtype=dy2.dtype)

    def rows_of_grads(o):  # the weight's rows o, and the bias's
        xp.matmul(dy2[:, o].T, x2, out=grads["weight"][o])
        if "bias" in grads:
            dy2[:, o].sum(axis=0, out=grads["bias"][o])

    split_range(rows_of_grads, w.shape[0], xp, min_chunk=TRANSPOSED_BELOW_TOKENS)  # before dx: it reads x
    dtype = xp.result_type(dy2.dtype, w.dtype)
    reuse = overwrite_x and x2.dtype == dtype and x2.flags.c_contiguous
    dx = x2 if reuse else xp.empty(x2.shape, dtype=dtype)

    def rows_of_dx(r):
        xp.matmul(dy2[r], w, out=dx[r])

    split_range(rows_of_dx, dx.shape[0], xp, min_chunk=TRANSPOSED_BELOW_TOKENS)
    return dx.reshape(x.shape), grads
