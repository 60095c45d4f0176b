"""LayerNorm over the last axis (biased variance, eps inside the square root, as torch.nn.LayerNorm).
The cache keeps the input itself with each row's mean and 1/std, not the normalised input: a forward then writes
only its output (the compiled loop reads each row once), and the backward recomputes xhat with the same operations.
"""
import numpy as np

from .. import cpu_kernels
from ..backend import array_module, split_range


def layer_norm(p, x, eps, *, overwrite_x=False):
    """p: {"weight": (h,), "bias": (h,)}; x: (..., h), which the cache keeps (do not modify it before the backward).
    overwrite_x=True lets y take x's memory where it can (a forward that no backward follows: the cache is then
    None)."""
    xp = array_module(x)
    float32_numpy = xp is np and x.dtype == p["weight"].dtype == p["bias"].dtype == np.float32
    kernel = cpu_kernels.layer_norm() if float32_numpy else None
    if kernel is not None:
        y, cache = _compiled_layer_norm(kernel, p, x, eps, overwrite_x)
        return y, None if overwrite_x else cache
    mean = x.mean(axis=-1, keepdims=True)
    xhat = x - mean
    # the sum of squares by einsum: one pass and no temporary (1.8x faster than (xc * xc).mean at (4096, 768))
    var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] / x.shape[-1]
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat *= rstd
    y = xhat * p["weight"]
    y += p["bias"]
    return y, None if overwrite_x else (p, x, mean, rstd)


def _compiled_layer_norm(kernel, p, x, eps, overwrite_x):
    """The NumPy path's results from one read of each row (the cpu_kernels.layer_norm kernel); only the order of the
    mean's and variance's sums differs. At (4096, 768): 2.8 ms against 14-15 ms. Split over the pool only inside a
    backend.pool_section, like the activations (layers/activations.py says why)."""
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = rows if overwrite_x else np.empty_like(rows)  # the loop reads a row whole before it writes it
    mean, rstd = np.empty((2, rows.shape[0], 1), dtype=np.float32)
    weight, bias, eps = np.ascontiguousarray(p["weight"]), np.ascontiguousarray(p["bias"]), np.float32(eps)
    split_range(lambda r: kernel(rows[r], weight, bias, eps, y[r], mean[r], rstd[r]), rows.shape[0], np)
    stats_shape = x.shape[:-1] + (1,)
    return y.reshape(x.shape), (p, x, mean.reshape(stats_shape), rstd.reshape(stats_shape))


def layer_norm_backward(dy, cache):
    p, x, mean, rstd = cache
    xp = array_module(dy)
    h = x.shape[-1]
    x2, dy2 = x.reshape(-1, h), dy.reshape(-1, h)
    mean2, rstd2 = mean.reshape(-1, 1), rstd.reshape(-1, 1)
    dx = xp.empty(dy2.shape, dtype=xp.result_type(dy2.dtype, x2.dtype, p["weight"].dtype))
    float32_numpy = xp is np and dx.dtype == x2.dtype == dy2.dtype == mean2.dtype == np.float32
    kernel = cpu_kernels.layer_norm_backward() if float32_numpy else None
    weight = np.ascontiguousarray(p["weight"]) if kernel is not None else p["weight"]

    def rows(r):  # dx of rows r, and their sums for the weight's and the bias's gradients
        if kernel is not None:  # rows read from memory once, not a dozen NumPy passes: 3.4 ms against 20 at (4096, 768)
            dweight, dbias = np.zeros((2, h), dtype=np.float32)
            kernel(np.ascontiguousarray(x2[r]), np.ascontiguousarray(dy2[r]), weight, mean2[r], rstd2[r], dx[r],
                   dweight, dbias)
            return dweight, dbias
        xhat = x2[r] - mean2[r]
        xhat *= rstd2[r]
        g = dy2[r] * weight
        # d xhat -> dx: rstd * (g - mean(g) - xhat * mean(g * xhat))
        dx[r] = rstd2[r] * (g - g.sum(axis=-1, keepdims=True) / h - xhat * ((g * xhat).sum(axis=-1, keepdims=True) / h))
        return (dy2[r] * xhat).sum(axis=0), dy2[r].sum(axis=0)

    dweight, dbias = zip(*split_range(rows, x2.shape[0], xp))  # the sums of each chunk of rows
    return dx.reshape(dy.shape), {"weight": sum(dweight[1:], dweight[0]), "bias": sum(dbias[1:], dbias[0])}
