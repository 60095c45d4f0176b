"""Dense layer y = x W^T + b, with W stored (out_features, in_features) as torch saves it."""


def linear(p, x):
    """p: {"weight": (out, in), "bias": (out,) optional}; x: (..., in) -> (..., out)."""
    y = x @ p["weight"].T
    if p.get("bias") is not None:
        y += p["bias"]
    return y, (p, x)


def linear_backward(dy, cache):
    p, x = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    grads = {"weight": dy2.T @ x2}
    if p.get("bias") is not None:
        grads["bias"] = dy2.sum(axis=0)
    return dy @ p["weight"], grads
