"""Inverted dropout. The keep-mask is drawn where x lives: on the CPU from the call's numpy Generator, on a GPU by
CuPy's generator seeded from it (no mask crosses from the host), so a seed reproduces a run on the same backend but
CPU and GPU draw different masks."""
import numpy as np

from ..backend import array_module


def dropout(x, rate, rng, training):
    if not training or rate == 0.0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training mode needs rng (an int seed or numpy.random.Generator), got None")
    xp = array_module(x)
    if xp is np:
        keep = rng.random(x.shape, dtype=np.float32) >= rate
    else:
        uniform = xp.random.RandomState(int(rng.integers(2**63))).random_sample(x.shape, dtype=np.float32)
        keep = uniform >= rate
    scale = (keep * (1.0 / (1.0 - rate))).astype(x.dtype)
    return x * scale, scale


def dropout_backward(dy, scale):
    return dy if scale is None else dy * scale
