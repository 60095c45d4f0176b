import math

import numpy as np
import pytest

from tests.fixtures_io import load_activations
from tests.gradcheck import assert_close, numerical_grad
from yoso_np import cpu_kernels
from yoso_np.layers import activations as act
from yoso_np.layers.activations import ACTIVATIONS, activation, activation_backward, erf, normal_cdf

NAMES = sorted(ACTIVATIONS)
TRANSFORMERS_NAMES = {
    "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
    "gelu_accurate", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6",
    "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh", "prelu", "xielu"}

# points where the derivative jumps; finite differences across them measure nothing
KINKS = {
    "relu": [0.0], "relu2": [0.0], "relu6": [0.0, 6.0], "leaky_relu": [0.0], "prelu": [0.0],
    "hardswish": [-3.0, 3.0], "xielu": [0.0, act.XIELU_EPS], "gelu_10": [10.0],
    "mish": [20.0], "sqrtsoftplus": [20.0],  # torch's softplus switches to x above 20
}
LARGE = np.array([1e-3, 1.0, 10.0, 20.5, 50.0, 88.0, 89.0, 100.0, 1e3, 1e4])
FIXTURE_X, FIXTURE = load_activations()  # recorded from transformers' ACT2FN by tests/make_fixtures.py
FIXTURE_TOL = {"float32": dict(rtol=1e-6, atol=1e-6), "float64": dict(rtol=1e-13, atol=1e-15)}


def test_every_transformers_name_is_known():
    assert TRANSFORMERS_NAMES <= set(ACTIVATIONS)
    assert set(FIXTURE) == TRANSFORMERS_NAMES  # every name has recorded values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_forward_matches_recorded_transformers_values(name, dtype):
    x = FIXTURE_X.astype(dtype)
    y, _ = activation(name, x)
    assert y.dtype == dtype
    assert_close(y, FIXTURE[name][dtype], **FIXTURE_TOL[dtype], name=f"{name} {dtype}")


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_big_float32_arrays_match_recorded_values(name):
    """The threaded blocks (and the compiled GELU where numba is installed) on a non-contiguous array of the
    recorded inputs, tiled."""
    x = np.resize(FIXTURE_X.astype(np.float32), 300 * 250).reshape(300, 250).T
    expected = np.resize(FIXTURE[name]["float32"], 300 * 250).reshape(300, 250).T
    y, _ = activation(name, x)
    assert_close(y, expected, **FIXTURE_TOL["float32"], name=name)


@pytest.mark.torch
def test_names_match_transformers_act2cls():
    pytest.importorskip("torch")
    activations = pytest.importorskip("transformers.activations")
    assert set(activations.ACT2CLS) == set(ACTIVATIONS)


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_transformers_float32(name):
    torch = pytest.importorskip("torch")
    activations = pytest.importorskip("transformers.activations")
    x = np.concatenate([np.linspace(-12, 12, 4801), LARGE, -LARGE]).astype(np.float32)
    with torch.no_grad():
        expected = activations.ACT2FN[name](torch.from_numpy(x)).numpy()
    y, _ = activation(name, x)
    assert y.dtype == np.float32
    assert_close(y, expected, rtol=1e-6, atol=1e-6, name=name)


def away_from_kinks(name, points):
    return np.array([p for p in points if all(abs(p - k) > 1e-3 for k in KINKS.get(name, []))])


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_torch_autograd_float64(name):
    torch = pytest.importorskip("torch")
    activations = pytest.importorskip("transformers.activations")
    x = away_from_kinks(name, np.concatenate([np.linspace(-12, 12, 961), [-30.0, 19.5, 20.5, 30.0]]))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    module = activations.ACT2FN[name]
    if name == "prelu":
        module = module.double()  # its float32 weight does not promote (xielu's bfloat16 ones do, and must stay)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    module(tx).backward(torch.from_numpy(dy))
    _, cache = activation(name, x)
    assert_close(activation_backward(dy, cache), tx.grad.numpy(), rtol=1e-12, atol=1e-12, name=name)


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences_float64(name):
    x = away_from_kinks(name, np.concatenate([np.linspace(-8, 8, 129), [-30.0, -21.0, 10.0, 12.0, 19.5, 20.5, 30.0]]))
    weights = np.random.default_rng(0).standard_normal(x.shape)

    def loss(point):
        return np.sum(activation(name, point)[0] * weights)

    _, cache = activation(name, x)
    assert_close(activation_backward(weights, cache), numerical_grad(loss, x), rtol=1e-6, atol=2e-7, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_large_inputs_stay_finite(name, dtype):
    x = np.concatenate([LARGE, -LARGE, [0.0]]).astype(dtype)  # RuntimeWarnings are errors in this suite
    y, cache = activation(name, x)
    dx = activation_backward(np.ones_like(x), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all(), (y, dx)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_shape_are_preserved(name, dtype):
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(dtype)
    y, cache = activation(name, x)
    dx = activation_backward(np.ones_like(x), cache)
    assert (y.dtype, y.shape, dx.dtype, dx.shape) == (dtype, x.shape, dtype, x.shape)


@pytest.mark.parametrize("name", ["gelu", "gelu_new", "silu", "relu"])
def test_blocked_evaluation_of_big_arrays_equals_one_pass(name, monkeypatch):
    # the NumPy path's blocks; the compiled gelu' (float32 rounding apart from it) is checked in test_cpu_kernels
    monkeypatch.setattr(cpu_kernels, "gelu_grad", lambda: None)
    x = np.random.default_rng(3).standard_normal((300, 250)).astype(np.float32).T  # > one block, not contiguous
    forward, derivative = ACTIVATIONS[name]
    y, cache = activation(name, x)
    np.testing.assert_array_equal(y, forward(x))
    dy = np.ones_like(x) * 0.5
    np.testing.assert_array_equal(activation_backward(dy, cache), dy * derivative(x))


def test_gelu_tails_are_exact():
    big = np.finfo(np.float32).max
    y, _ = activation("gelu", np.array([-big, -1e7, -1e4, -40.0, 40.0, 1e4, 1e7, big], np.float32))
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 0.0, 40.0, 1e4, 1e7, big])  # and no overflow warning
    # the left tail keeps its relative precision: gelu(-10) = -10 Phi(-10)
    y64, _ = activation("gelu", np.array([-10.0]))
    assert y64[0] == pytest.approx(-10 * 0.5 * math.erfc(10 / math.sqrt(2)), rel=1e-12)


def test_float32_gelu_absolute_error():
    """The exp-free float32 GELU (the model's hot path) stays within its documented 4.3e-7 of the exact value,
    on a dense grid and on a big array that runs in threaded blocks."""
    grid = np.concatenate([np.linspace(-12, 12, 480001), np.random.default_rng(4).normal(0, 2, 300_000)])
    x = grid.astype(np.float32)
    expected = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x.astype(float)])
    y, _ = activation("gelu", x)
    assert np.abs(y - expected).max() < 4.5e-7
    near_zero = np.abs(x) < 1
    assert_close(y[near_zero], expected[near_zero], rtol=3e-6, atol=1e-30, name="gelu near 0")


def test_erf_accuracy_against_math_erf():
    grid = np.concatenate([np.linspace(-6, 6, 240001), np.geomspace(1e-30, 0.5, 301)])
    expected = np.array([math.erf(v) for v in grid])
    for dtype, rtol in [(np.float32, 4e-7), (np.float64, 4e-15)]:
        x = grid.astype(dtype)
        got = erf(x)
        assert got.dtype == dtype
        assert_close(got, [math.erf(v) for v in x.astype(float)], rtol=rtol, atol=0, name=f"erf {dtype.__name__}")
    assert np.abs(erf(grid.astype(np.float32)) - expected).max() < 3e-7


def test_normal_cdf_tails_float64():
    x = np.array([-35.0, -20.0, -5.0, 0.0, 5.0])
    expected = [0.5 * math.erfc(-v / math.sqrt(2)) for v in x]
    assert_close(normal_cdf(x), expected, rtol=1e-12, atol=0, name="Phi")


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown activation 'gelu2'.*gelu_new"):
        activation("gelu2", np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        activation("gelu", np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="array"):
        activation("gelu", [0.0, 1.0])
    _, cache = activation("relu", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        activation_backward(np.zeros((3, 2), np.float32), cache)


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cupy_matches_numpy(name, cupy):
    x = np.concatenate([np.linspace(-12, 12, 241), LARGE, -LARGE]).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    y, cache = activation(name, x)
    y_gpu, cache_gpu = activation(name, cupy.asarray(x))
    dx_gpu = activation_backward(cupy.asarray(dy), cache_gpu)
    assert isinstance(y_gpu, cupy.ndarray) and y_gpu.dtype == np.float32 and dx_gpu.dtype == np.float32
    assert_close(y_gpu, y, rtol=1e-6, atol=1e-6, name=name)
    assert_close(dx_gpu, activation_backward(dy, cache), rtol=1e-5, atol=1e-6, name=name + " backward")
