"""Finite-difference helpers for checking backward passes (float64, NumPy).

    grad = numerical_grad(lambda w: float(loss_of(w)), w)        # d loss / d w, central differences
    assert_close(analytic, grad, rtol=1e-6, atol=1e-8, name="dW")

A layer check usually contracts the layer output with a fixed random array r, loss(x) = sum(layer(x) * r), whose
gradient is the layer's backward applied to dout = r.
"""
import numpy as np

from yoso_np.backend import to_numpy


def numerical_grad(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function f at the float64 array x (x itself is left unchanged).

    f is called with a perturbed copy of x, 2 * x.size times.
    """
    x = to_numpy(x)
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"numerical_grad needs a float64 array, got {getattr(x, 'dtype', type(x).__name__)}")
    point = x.copy()
    flat = point.reshape(-1)
    grad = np.empty(flat.size)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        up = float(f(point))
        flat[i] = original - eps
        down = float(f(point))
        flat[i] = original
        grad[i] = (up - down) / (2 * eps)
    return grad.reshape(x.shape)


def assert_close(actual, expected, rtol, atol, name="value"):
    """|actual - expected| <= atol + rtol |expected| everywhere (NumPy or CuPy arrays); equal infinities and NaN
    against NaN pass. The message names the worst element."""
    a = np.asarray(to_numpy(actual)).astype(np.float64)
    e = np.asarray(to_numpy(expected)).astype(np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - e)
        ok = (a == e) | (np.isnan(a) & np.isnan(e)) | (diff <= atol + rtol * np.abs(e))
    if not ok.all():
        diff = np.where(ok, -1.0, np.nan_to_num(diff, nan=np.inf))
        worst = np.unravel_index(np.argmax(diff), a.shape)
        raise AssertionError(
            f"{name}: {int((~ok).sum())} of {a.size} elements differ beyond rtol={rtol}, atol={atol}; "
            f"worst at {tuple(int(i) for i in worst)}: got {a[worst]!r}, expected {e[worst]!r}")
