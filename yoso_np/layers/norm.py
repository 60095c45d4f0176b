"""LayerNorm over the last axis (biased variance, eps inside the square root, as torch.nn.LayerNorm).
The cache keeps the input itself with each row's mean and 1/std, not the normalised input: a forward then writes
only its output (the compiled loop reads each row once), and the backward recomputes xhat with the same operations.
"""
import numpy as np

from .. import cpu_kernels
from ..backend import array_module


def layer_norm(p, x, eps):
    """p: {"weight": (h,), "bias": (h,)}; x: (..., h), which the cache keeps (do not modify it before the backward)."""
    xp = array_module(x)
    float32_numpy = xp is np and x.dtype == p["weight"].dtype == p["bias"].dtype == np.float32
    kernel = cpu_kernels.layer_norm() if float32_numpy else None
    if kernel is not None:
        return _compiled_layer_norm(kernel, p, x, eps)
    mean = x.mean(axis=-1, keepdims=True)
    xhat = x - mean
    # the sum of squares by einsum: one pass and no temporary (1.8x faster than (xc * xc).mean at (4096, 768))
    var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] / x.shape[-1]
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat *= rstd
    y = xhat * p["weight"]
    y += p["bias"]
    return y, (p, x, mean, rstd)


def _compiled_layer_norm(kernel, p, x, eps):
    """The NumPy path's results from one read of each row (the cpu_kernels.layer_norm kernel); only the order of the
    mean's and variance's sums differs. At (4096, 768): 2.8 ms against 14-15 ms. On the caller's thread, like the
    activations (layers/activations.py says why)."""
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = np.empty_like(rows)
    mean, rstd = np.empty((2, rows.shape[0], 1), dtype=np.float32)
    weight, bias, eps = np.ascontiguousarray(p["weight"]), np.ascontiguousarray(p["bias"]), np.float32(eps)
    kernel(rows, weight, bias, eps, y, mean, rstd)
    stats_shape = x.shape[:-1] + (1,)
    return y.reshape(x.shape), (p, x, mean.reshape(stats_shape), rstd.reshape(stats_shape))


def layer_norm_backward(dy, cache):
    p, x, mean, rstd = cache
    xhat = x - mean
    xhat *= rstd
    h = xhat.shape[-1]
    lead = tuple(range(dy.ndim - 1))
    grads = {"weight": (dy * xhat).sum(axis=lead), "bias": dy.sum(axis=lead)}
    g = dy * p["weight"]
    # d xhat -> dx: rstd * (g - mean(g) - xhat * mean(g * xhat))
    dx = rstd * (g - g.sum(axis=-1, keepdims=True) / h - xhat * ((g * xhat).sum(axis=-1, keepdims=True) / h))
    return dx, grads
