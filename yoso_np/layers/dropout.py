"""Inverted dropout. The keep-mask is drawn on the host from a numpy Generator, so a seed gives the same
mask on NumPy and CuPy."""
import numpy as np

from ..backend import array_module


def dropout(x, rate, rng, training):
    if not training or rate == 0.0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training mode needs rng (an int seed or numpy.random.Generator), got None")
    xp = array_module(x)
    keep = xp.asarray(rng.random(x.shape, dtype=np.float32) >= rate)
    scale = (keep * (1.0 / (1.0 - rate))).astype(x.dtype)
    return x * scale, scale


def dropout_backward(dy, scale):
    return dy if scale is None else dy * scale
