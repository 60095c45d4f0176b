"""Dense layer y = x W^T + b, with W stored (out_features, in_features) as torch saves it."""
from ..backend import OWN_THREADS_MIN_TOKENS, matmul


def linear(p, x):
    """p: {"weight": (out, in), "bias": (out,) optional}; x: (..., in) -> (..., out)."""
    x2 = x.reshape(-1, x.shape[-1])
    y = matmul(x2, p["weight"].T, p.get("bias"), split=x2.shape[0] >= OWN_THREADS_MIN_TOKENS)
    return y.reshape(x.shape[:-1] + y.shape[-1:]), (p, x)


def linear_backward(dy, cache):
    p, x = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    split = x2.shape[0] >= OWN_THREADS_MIN_TOKENS
    grads = {"weight": matmul(dy2.T, x2, split=split)}
    if p.get("bias") is not None:
        grads["bias"] = dy2.sum(axis=0)
    return matmul(dy2, p["weight"], split=split).reshape(x.shape), grads
