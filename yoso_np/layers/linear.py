"""Dense layer y = x W^T + b, with W stored (out_features, in_features) as torch saves it.

All tokens of the batch go through one 2-D product ((batch, n, in) @ W^T would be batch separate products)."""
from ..backend import array_module

# below this many tokens x W^T is computed as (W x^T)^T: OpenBLAS runs a short x against the transposed W at half
# speed (16 tokens: 0.5x the time at widths 768 and 3072, 64 tokens: 0.8x, a wash at 128, slower from 256)
TRANSPOSED_BELOW_TOKENS = 128


def linear(p, x):
    """p: {"weight": (out, in), "bias": (out,) optional}; x: (..., in) -> (..., out), C-contiguous."""
    w, b = p["weight"], p.get("bias")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] < TRANSPOSED_BELOW_TOKENS:
        xp = array_module(x)
        yt = (w @ x2.T).T
        y = xp.empty(yt.shape, dtype=yt.dtype)
        if b is None:
            y[...] = yt
        else:
            xp.add(yt, b, out=y)
    else:
        y = x2 @ w.T
        if b is not None:
            y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],)), (p, x)


def linear_backward(dy, cache):
    p, x = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    grads = {"weight": dy2.T @ x2}
    if p.get("bias") is not None:
        grads["bias"] = dy2.sum(axis=0)
    return (dy2 @ p["weight"]).reshape(x.shape), grads
