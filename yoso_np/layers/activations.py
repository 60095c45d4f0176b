"""The activations transformers' ``ACT2FN`` knows, each as a forward and its exact derivative.

``activation(name, x) -> (y, cache)`` and ``activation_backward(dy, cache) -> dx``: elementwise, no weights,
computed in the input's dtype (float16 inputs are computed in float32 and rounded back, as torch does).

The erf-based GELU needs erf, which NumPy lacks. ``erfc`` on |x| is computed per dtype:
- float32: erfc(v) = exp(-v^2) * erfcx(v), with erfcx(v) = P4(v) / Q5(v) our own minimax rational fit on [0, 10]
  (relative fit error 5.6e-9; inputs are clamped to 10.5, where exp(-v^2) is 0 in float32).
- float64: erf(v) by its everywhere-positive series exp(-v^2) * sum_n v (2v^2)^n / (2n+1)!! * 2/sqrt(pi) for
  v <= 2.5 and erfc(v) by its continued fraction for v > 2.5, 40 terms each (~1e-15).
Measured against math.erf on 1.2M points of [-6, 6] plus tiny |x|: float32 max abs error 1.8e-7, max relative
3.1e-7; float64 1.5e-15 relative. Working from erfc of |x| keeps the tail of the normal cdf accurate (no
1 + erf(-big) cancellation) and makes erf exactly +-1 far out, so gelu(-1e4) is exactly 0. The derivatives use
the same erfc. The one exception is the float32 GELU forward, the hot path of every YOSO checkpoint: it uses an
exp-free form accurate to 4.3e-7 absolute (see _gelu_float32_into), 2.6x faster.
"""
import math

import numpy as np

from .. import cpu_kernels
from ..backend import array_module, is_cupy_array, split_range

SQRT_HALF = math.sqrt(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erfcx(v) = exp(v^2) erfc(v) ~ P(v) / Q(v) on [0, 10]; lowest power first, Q monic.
_ERFCX_P = (17.24812466964037, 21.346144328438555, 12.604010131549664, 3.9465415764622676, 0.5641965232372529)
_ERFCX_Q = (17.248124572682656, 40.808578563629226, 41.403276973770254, 22.83251338234276, 6.995525226764174)
_SERIES_CF_SPLIT = 2.5
_SERIES_CF_TERMS = 40


def _polyval(coeffs, v, monic=False):
    """coeffs[0] + coeffs[1] v + ... (+ v^len if monic), by Horner into one fresh array."""
    if monic:
        acc = v + coeffs[-1]
        rest = coeffs[-2::-1]
    else:
        acc = v * coeffs[-1]
        acc += coeffs[-2]
        rest = coeffs[-3::-1]
    for c in rest:
        acc *= v
        acc += c
    return acc


def _erfc_rational(v):
    """float32 erfc on [0, 10.5]; overwrites v."""
    xp = array_module(v)
    out = _polyval(_ERFCX_P, v)
    out /= _polyval(_ERFCX_Q, v, monic=True)
    v *= v
    xp.negative(v, out=v)
    out *= xp.exp(v, out=v)
    return out


def _erfc_series_cf(v):
    xp = array_module(v)
    # series for small v: erf(v) = 2/sqrt(pi) exp(-v^2) sum_n v (2 v^2)^n / (1*3*...*(2n+1))
    small = xp.minimum(v, _SERIES_CF_SPLIT)
    sq = small * small
    term = small.copy()
    total = small.copy()
    for n in range(1, _SERIES_CF_TERMS):
        term *= sq
        term *= 2.0 / (2 * n + 1)
        total += term
    total *= xp.exp(-sq)
    erfc_small = 1.0 - (2.0 / math.sqrt(math.pi)) * total
    # continued fraction for large v: erfc(v) = exp(-v^2)/sqrt(pi) / (v + (1/2)/(v + 1/(v + (3/2)/(v + ...))))
    large = xp.maximum(v, _SERIES_CF_SPLIT)
    frac = large.copy()
    for k in range(_SERIES_CF_TERMS, 0, -1):
        frac = large + (0.5 * k) / frac
    erfc_large = xp.exp(-large * large) / (math.sqrt(math.pi) * frac)
    return xp.where(v <= _SERIES_CF_SPLIT, erfc_small, erfc_large)


def erfc_nonneg(v):
    """erfc(v) for v >= 0 as a fresh array, accurate to the dtype (see the module docstring); v is not modified."""
    if v.dtype == np.float64:
        return _erfc_series_cf(v)
    # exp(-10.5^2) is 0 in float32, so the clamp makes erfc exactly 0 far out and keeps P, Q finite for any input
    return _erfc_rational(array_module(v).clip(v, 0.0, 10.5))


# Maclaurin series of erf(x) * sqrt(pi) / (2 x) in x^2: (-1)^n / (n! (2n + 1)); 13 terms reach 1e-18 for |x| < 0.5.
_ERF_MACLAURIN = tuple((-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(13))


def erf(x):
    """Vectorised erf for NumPy/CuPy floating arrays; relative error ~2e-7 in float32 and ~2e-15 in float64."""
    xp = array_module(x)
    near_zero = _polyval(_ERF_MACLAURIN, x * x)
    near_zero *= x * (2.0 / math.sqrt(math.pi))
    far = erfc_nonneg(xp.abs(x))
    xp.subtract(1.0, far, out=far)
    xp.copysign(far, x, out=far)
    return xp.where(xp.abs(x) < 0.5, near_zero, far)


def normal_cdf(x):
    """Phi(x) = P(Z <= x) = 0.5 (1 + erf(x / sqrt 2)), the tail taken from erfc so that it keeps its precision."""
    xp = array_module(x)
    tail = xp.abs(x)
    tail *= SQRT_HALF
    tail = erfc_nonneg(tail)
    tail *= 0.5  # P(Z > |x|)
    # x < 0: tail; x >= 0: 1 - tail (the sign bit also sends -0.0 to the left), without a slow where
    xp.copysign(tail, x, out=tail)
    xp.negative(tail, out=tail)
    tail += ~xp.signbit(x)
    return tail


def _normal_pdf(x):
    xp = array_module(x)
    out = x * x
    out *= -0.5
    xp.exp(out, out=out)
    out *= INV_SQRT_2PI
    return out


def _sigmoid(x):
    """1 / (1 + exp(-x)), as torch computes it, with x clipped where exp(-x) would overflow the dtype."""
    xp = array_module(x)
    limit = math.floor(math.log(np.finfo(x.dtype).max))
    out = xp.clip(x, -limit, limit)
    xp.negative(out, out=out)
    xp.exp(out, out=out)
    out += 1.0
    return xp.reciprocal(out, out=out)


def _softplus(x):
    """torch's softplus (beta 1, threshold 20): x above 20, else log1p(exp(x))."""
    xp = array_module(x)
    out = xp.minimum(x, 20.0)
    xp.exp(out, out=out)
    xp.log1p(out, out=out)
    return xp.where(x > 20.0, x, out)


def _softplus_grad(x):
    return array_module(x).where(x > 20.0, 1.0, _sigmoid(x))


# ---- erf GELU and the names built on it -------------------------------------------------------------------------

# float32 GELU without exp: P(Z > a) ~= 0.5 (1 + c1 a + ... + c7 a^7)^-16 for a >= 0, the form of Abramowitz &
# Stegun 7.1.28 with our own coefficients (Lawson's weighted minimax fit of the absolute error, 4.3e-8 for all
# a >= 0; all positive, so no root and no NaN). The 0.5 is folded in as 2**(1/16). It takes 23 NumPy passes
# where exp(-a^2/2) times a rational erfcx took ~35 (float32 np.exp is scalar code here, ~10 passes' time).
_GELU_TAIL_POLY = (1.0442737824274138, 0.05207585929127293, 0.022070571597057585, 0.0034417081946954606,
                   1.4974180303625985e-05, 6.669975187002615e-05, 9.304312676136549e-07, 5.30466569073586e-07)
_GELU_TAIL_POLY_F32 = np.array(_GELU_TAIL_POLY, dtype=np.float32)


def _gelu_float32_into(x, out, scratch):
    """out <- x Phi(x) = max(x, 0) - |x| P(Z > |x|) for float32 x; scratch: an array like x.

    Measured against float64 over [-12, 12] and N(0, 4) samples: |error| < 4.3e-7 (torch's own float32 gelu, via
    1 + erf, loses the left tail's relative precision to cancellation the same way). The 16th power amplifies
    the rounding of the polynomial, so near 0 the relative error is ~2e-6. Far out p**16 overflows to inf and
    the tail is exactly 0."""
    xp = array_module(x)
    a, c = scratch, _GELU_TAIL_POLY
    xp.abs(x, out=a)
    with np.errstate(over="ignore"):  # |x| beyond ~15 overflows p**16, beyond ~2e6 p itself: both give Q = 0
        xp.multiply(a, c[-1], out=out)
        for coef in c[-2:0:-1]:
            out += coef
            out *= a
        out += c[0]
        for _ in range(4):
            xp.multiply(out, out, out=out)
    xp.reciprocal(out, out=out)  # P(Z > |x|)
    out *= a
    xp.maximum(x, 0.0, out=a)
    xp.subtract(a, out, out=out)
    return out


def _gelu(x):
    # x Phi(x) = max(x, 0) - |x| P(Z > |x|): exact tails on both sides
    xp = array_module(x)
    if x.dtype == np.float32:
        return _gelu_float32_into(x, xp.empty_like(x), xp.empty_like(x))
    abs_x = xp.abs(x)
    tail = abs_x * SQRT_HALF
    tail = erfc_nonneg(tail)
    tail *= 0.5
    tail *= abs_x
    out = xp.maximum(x, 0.0)
    out -= tail
    return out


def _gelu_grad(x):
    out = _normal_pdf(x)
    out *= x
    out += normal_cdf(x)
    return out


def _gelu_10(x):
    return array_module(x).clip(_gelu(x), -10.0, 10.0)


def _gelu_10_grad(x):
    y = _gelu(x)
    return _gelu_grad(x) * ((y >= -10.0) & (y <= 10.0))


# laplace (MEGA): 0.5 (1 + erf((x - mu) / (sigma sqrt 2))) = Phi((x - mu) / sigma)
LAPLACE_MU = 0.707107
LAPLACE_SIGMA = 0.282095


def _laplace(x):
    return normal_cdf((x - LAPLACE_MU) * (1.0 / LAPLACE_SIGMA))


def _laplace_grad(x):
    out = _normal_pdf((x - LAPLACE_MU) * (1.0 / LAPLACE_SIGMA))
    out *= 1.0 / LAPLACE_SIGMA
    return out


# ---- tanh GELU: 0.5 x (1 + tanh(c (x + k x^3))) ------------------------------------------------------------------

def _tanh_gelu_pair(c, k=0.044715):
    def inner_tanh(x):
        t = x * x
        t *= k
        t += 1.0
        t *= x
        t *= c
        return array_module(x).tanh(t, out=t)

    def forward(x):
        out = inner_tanh(x)
        out += 1.0
        out *= x
        out *= 0.5
        return out

    def grad(x):
        # 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 k x^2)
        t = inner_tanh(x)
        slope = x * x
        slope *= 3.0 * k
        slope += 1.0
        slope *= c * 0.5
        slope *= x
        slope *= 1.0 - t * t
        t += 1.0
        t *= 0.5
        t += slope
        return t

    return forward, grad


# ---- sigmoid family ------------------------------------------------------------------------------------------------

def _silu(x):
    out = _sigmoid(x)
    out *= x
    return out


def _silu_grad(x):
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))  # s + x s (1 - s)


QUICK_GELU_SCALE = 1.702


def _quick_gelu(x):
    out = _sigmoid(QUICK_GELU_SCALE * x)
    out *= x
    return out


def _quick_gelu_grad(x):
    s = _sigmoid(QUICK_GELU_SCALE * x)
    return s * (1.0 + QUICK_GELU_SCALE * x * (1.0 - s))


def _sigmoid_grad(x):
    s = _sigmoid(x)
    return s * (1.0 - s)


def _tanh(x):
    return array_module(x).tanh(x)


def _tanh_grad(x):
    t = array_module(x).tanh(x)
    return 1.0 - t * t


def _mish(x):
    out = array_module(x).tanh(_softplus(x))
    out *= x
    return out


def _mish_grad(x):
    t = array_module(x).tanh(_softplus(x))
    return t + x * (1.0 - t * t) * _sigmoid(x)


def _sqrtsoftplus(x):
    return array_module(x).sqrt(_softplus(x))


def _sqrtsoftplus_grad(x):
    # softplus'(x) / (2 sqrt(softplus(x))); far left softplus ~ exp(x) underflows, there the ratio is exp(x/2)/2
    xp = array_module(x)
    bounded = xp.maximum(x, -20.0)
    ratio = _softplus_grad(bounded) / (2.0 * xp.sqrt(_softplus(bounded)))
    return xp.where(x < -20.0, 0.5 * xp.exp(0.5 * xp.minimum(x, -20.0)), ratio)


# ---- piecewise-linear and polynomial -------------------------------------------------------------------------------

def _linear(x):
    return x.copy()


def _linear_grad(x):
    return array_module(x).ones_like(x)


def _relu(x):
    return array_module(x).maximum(x, 0.0)


def _relu_grad(x):
    return (x > 0).astype(x.dtype)


def _relu2(x):
    out = array_module(x).maximum(x, 0.0)
    out *= out
    return out


def _relu2_grad(x):
    out = array_module(x).maximum(x, 0.0)
    out *= 2.0
    return out


def _relu6(x):
    return array_module(x).clip(x, 0.0, 6.0)


def _relu6_grad(x):
    return ((x > 0) & (x < 6.0)).astype(x.dtype)


def _hardswish(x):
    out = array_module(x).clip(x + 3.0, 0.0, 6.0)
    out *= x
    out *= 1.0 / 6.0
    return out


def _hardswish_grad(x):
    xp = array_module(x)
    return xp.where(x < -3.0, 0.0, xp.where(x <= 3.0, x * (1.0 / 3.0) + 0.5, 1.0))


def _leaky_pair(negative_slope):
    def forward(x):
        return array_module(x).where(x > 0, x, x * negative_slope)

    def grad(x):
        return array_module(x).where(x > 0, 1.0, negative_slope).astype(x.dtype)

    return forward, grad


# xielu with the initial parameters ACT2FN gives a fresh XIELUActivation(): alpha_p_init = alpha_n_init = 0.8,
# beta = 0.5, eps = -1e-6, held in bfloat16, so the effective values are softplus(bf16(log(expm1(0.8)))) and
# beta + softplus(bf16(log(expm1(0.8 - 0.5)))), both 0.80078125 after bfloat16 rounding, and eps = bf16(-1e-6).
XIELU_ALPHA_P = 0.80078125
XIELU_ALPHA_N = 0.80078125
XIELU_BETA = 0.5
XIELU_EPS = -9.98377799987793e-07


def _xielu(x):
    xp = array_module(x)
    positive = x * x * XIELU_ALPHA_P + XIELU_BETA * x
    negative = (xp.expm1(xp.minimum(x, XIELU_EPS)) - x) * XIELU_ALPHA_N + XIELU_BETA * x
    return xp.where(x > 0, positive, negative)


def _xielu_grad(x):
    xp = array_module(x)
    positive = 2.0 * XIELU_ALPHA_P * x + XIELU_BETA
    expm1_grad = xp.where(x < XIELU_EPS, xp.exp(xp.minimum(x, XIELU_EPS)), 0.0)
    negative = (expm1_grad - 1.0) * XIELU_ALPHA_N + XIELU_BETA
    return xp.where(x > 0, positive, negative)


# nn.PReLU() as ACT2FN builds it: one weight initialised to 0.25.
PRELU_WEIGHT = 0.25

_GELU = (_gelu, _gelu_grad)
_GELU_TANH = _tanh_gelu_pair(SQRT_2_OVER_PI)
_SILU = (_silu, _silu_grad)

# name -> (forward, derivative); both map an array x to a fresh array of x's shape and dtype.
ACTIVATIONS = {
    "gelu": _GELU,
    "gelu_10": (_gelu_10, _gelu_10_grad),
    "gelu_fast": _tanh_gelu_pair(0.7978845608),
    "gelu_new": _GELU_TANH,
    "gelu_python": _GELU,
    "gelu_pytorch_tanh": _GELU_TANH,
    "gelu_python_tanh": _GELU_TANH,
    "gelu_accurate": _GELU_TANH,
    "hardswish": (_hardswish, _hardswish_grad),
    "laplace": (_laplace, _laplace_grad),
    "leaky_relu": _leaky_pair(0.01),
    "linear": (_linear, _linear_grad),
    "mish": (_mish, _mish_grad),
    "quick_gelu": (_quick_gelu, _quick_gelu_grad),
    "relu": (_relu, _relu_grad),
    "relu2": (_relu2, _relu2_grad),
    "relu6": (_relu6, _relu6_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "silu": _SILU,
    "sqrtsoftplus": (_sqrtsoftplus, _sqrtsoftplus_grad),
    "swish": _SILU,
    "tanh": (_tanh, _tanh_grad),
    "prelu": _leaky_pair(PRELU_WEIGHT),
    "xielu": (_xielu, _xielu_grad),
}

# A few float32 temporaries of this many elements stay in a core's L2 cache; NumPy walks big arrays in such blocks
# (4x faster for gelu). 64 KiB temporaries also stay below glibc's mmap threshold (128 KiB): with 1 << 15 each
# temporary was a fresh mmap, and the erf GELU of a (4096, 3072) array took 233 ms instead of 120 ms. This only
# schedules the work: the math above is the same for both backends, and CuPy gets whole arrays, one kernel per
# operation.
_BLOCK_ELEMENTS = 1 << 14
# Activations written in place (fn(x, out, scratch)) allocate nothing, so their blocks can be 4x bigger: 256 KiB
# arrays, still L2-resident (gelu of (4096, 3072): 93 ms allocating, 53 ms in place). They run on the caller's thread
# except inside a backend.pool_section: elsewhere each follows a product on OpenBLAS's threads, whose workers then spin
# on the other core for ~0.1 s, so a hand-off to yoso_np's threads waited for a core (a 32 x 128 forward took 0.96x
# the time without them).
_INPLACE_BLOCK_ELEMENTS = 1 << 16
_INPLACE_FLOAT32 = {"gelu": _gelu_float32_into}


def _float32_into(name):
    """The float32 routine of ``name`` as fn(x, out, scratch) for _elementwise_inplace: its compiled twin (cpu_kernels)
    where numba is installed, else the NumPy passes."""
    kernel = cpu_kernels.gelu() if name == "gelu" else None
    if kernel is None:
        return _INPLACE_FLOAT32[name]
    return lambda x, out, scratch: kernel(x, out, _GELU_TAIL_POLY_F32)


def _elementwise(fn, *arrays):
    """fn over same-shaped arrays, in cache-sized blocks for NumPy arrays."""
    first = arrays[0]
    if is_cupy_array(first) or first.size <= _BLOCK_ELEMENTS:
        return fn(*arrays)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = np.empty(first.size, dtype=np.result_type(*arrays))
    for start in range(0, first.size, _BLOCK_ELEMENTS):
        block = slice(start, start + _BLOCK_ELEMENTS)
        out[block] = fn(*(a[block] for a in flat))
    return out.reshape(first.shape)


def _elementwise_inplace(fn_into, inputs, out):
    """fn_into(*input blocks, out block, scratch block) over flat NumPy arrays in L2-sized blocks; ``out`` may be one
    of the inputs: each block is then computed into scratch and copied back (the NumPy passes read x after writing
    out, and the compiled loop over aliased arrays runs unvectorised: 47 ms for gelu of (4096, 3072) in place, 6.8 ms
    by blocks, 9.1 ms into a fresh array, whose page faults cost 5 ms)."""
    block = _INPLACE_BLOCK_ELEMENTS
    scratch = np.empty((2, min(block, out.size)), dtype=out.dtype)
    aliased = any(np.may_share_memory(x, out) for x in inputs)
    for start in range(0, out.size, block):
        stop = min(start + block, out.size)
        blocks = [x[start:stop] for x in inputs]
        if aliased:
            fn_into(*blocks, scratch[0, :stop - start], scratch[1, :stop - start])
            out[start:stop] = scratch[0, :stop - start]
        else:
            fn_into(*blocks, out[start:stop], scratch[0, :stop - start])


def _compiled_gelu_grad(kernel, x, dy, overwrite_dy):
    """dy * gelu'(x) by the compiled loop, into a new array or over dy."""
    xs, dys = np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1)
    out = dys if overwrite_dy else np.empty_like(xs)
    constants = _GELU_TAIL_POLY_F32, np.float32(INV_SQRT_2PI)

    def fn_into(xb, dyb, outb, scratch):
        kernel(xb, dyb, outb, *constants)

    split_range(lambda r: _elementwise_inplace(fn_into, (xs[r], dys[r]), out[r]), xs.size, np,
                min_chunk=_INPLACE_BLOCK_ELEMENTS)
    return out.reshape(x.shape)


def _check_input(x, argument):
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{argument} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{argument} must be a floating-point array, got dtype {x.dtype}")


def _working_precision(x):
    """Half-precision inputs are computed in float32 (their Horner sums would overflow float16)."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def activation(name, x, *, overwrite_x=False):
    """y = act(x) for ``name`` in ACTIVATIONS; returns (y, cache) with y of x's shape and dtype.
    overwrite_x=True lets y take x's memory where it can (a forward that no backward follows: the cache is then
    None); a fresh (4096, 3072) array costs 4 ms of page faults before its first write."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    _check_input(x, "x")
    forward, _ = ACTIVATIONS[name]
    cache = None if overwrite_x else (name, x)
    if name in _INPLACE_FLOAT32 and x.dtype == np.float32 and isinstance(x, np.ndarray):
        flat = np.ascontiguousarray(x).reshape(-1)
        out = flat if overwrite_x else np.empty_like(flat)
        into = _float32_into(name)
        split_range(lambda r: _elementwise_inplace(into, (flat[r],), out[r]), flat.size, np,
                    min_chunk=_INPLACE_BLOCK_ELEMENTS)
        return out.reshape(x.shape), cache
    y = _elementwise(forward, _working_precision(x))
    return y.astype(x.dtype, copy=False), cache


def activation_backward(dy, cache, *, overwrite_dy=False):
    """dx = dy * act'(x), from the cache ``activation`` returned; overwrite_dy=True lets dx take dy's memory where it
    can (a fresh (4096, 3072) array costs 4-5 ms of page faults)."""
    name, x = cache
    _check_input(dy, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the activation input's shape {x.shape}, got {dy.shape}")
    if name == "gelu" and x.dtype == dy.dtype == np.float32 and isinstance(x, np.ndarray):
        kernel = cpu_kernels.gelu_grad()
        if kernel is not None:  # 16x the NumPy passes' speed at (4096, 3072)
            return _compiled_gelu_grad(kernel, x, dy, overwrite_dy)
    _, derivative = ACTIVATIONS[name]
    dx = _elementwise(lambda xb, dyb: dyb * derivative(xb), _working_precision(x), _working_precision(dy))
    return dx.astype(np.result_type(x.dtype, dy.dtype), copy=False)
