import warnings

import numpy as np
import pytest

from tests.gradcheck import assert_close, numerical_grad
from yoso_np.layers.losses import (bce_with_logits, bce_with_logits_backward, cross_entropy, cross_entropy_backward,
                                   mse, mse_backward)

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((6, 5)) * 3
LABELS = np.array([0, 4, -100, 2, 2, 1])
BCE_TARGETS = RNG.uniform(size=(4, 3))
PRED = RNG.standard_normal((4, 3))
MSE_TARGET = RNG.standard_normal((4, 3))


# name -> (forward, backward, logits or predictions, labels or targets, the torch.nn loss it mirrors)
CASES = {
    "cross_entropy": (cross_entropy, cross_entropy_backward, LOGITS, LABELS, "CrossEntropyLoss"),
    "bce_with_logits": (bce_with_logits, bce_with_logits_backward, LOGITS[:4, :3], BCE_TARGETS, "BCEWithLogitsLoss"),
    "mse": (mse, mse_backward, PRED, MSE_TARGET, "MSELoss"),
}


def cast(other, dtype):
    return other if other.dtype.kind in "iu" else other.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_is_a_0d_array_of_the_input_dtype(case, dtype):
    forward, backward, x, other, _ = CASES[case]
    loss, cache = forward(x.astype(dtype), cast(other, dtype))
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    grad = backward(np.float64(1.0), cache)  # a float64 dloss does not promote a float32 gradient
    assert grad.dtype == dtype and grad.shape == x.shape


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_matches_finite_differences(case):
    forward, backward, x, other, _ = CASES[case]
    grad = numerical_grad(lambda point: forward(point, other)[0], x)
    assert_close(backward(2.5, forward(x, other)[1]), 2.5 * grad, rtol=1e-7, atol=1e-8, name=case)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_backward_match_torch(case, dtype):
    torch = pytest.importorskip("torch")
    forward, backward, x, other, module = CASES[case]
    x, other = x.astype(dtype), cast(other, dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    expected = getattr(torch.nn, module)()(tx, torch.from_numpy(other))
    expected.backward(torch.tensor(0.75, dtype=tx.dtype))
    loss, cache = forward(x, other)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert_close(loss, expected.detach().numpy(), rtol=tol, atol=tol, name=case)
    assert_close(backward(0.75, cache), tx.grad.numpy(), rtol=tol, atol=tol, name=case + " backward")


@pytest.mark.torch
def test_cross_entropy_ignore_index_and_extreme_logits_match_torch():
    torch = pytest.importorskip("torch")
    logits = np.array([[1e4, -1e4, 0.0], [-50.0, 60.0, 3.0], [0.5, 0.25, -1.0], [2.0, 1.0, 0.0]], np.float32)
    labels = np.array([1, 1, 3, 3])  # 3 == C: ignored, as YosoForQuestionAnswering uses it
    tx = torch.from_numpy(logits.copy()).requires_grad_(True)
    expected = torch.nn.CrossEntropyLoss(ignore_index=3)(tx, torch.from_numpy(labels))
    expected.backward()
    loss, cache = cross_entropy(logits, labels, ignore_index=3)
    assert_close(loss, expected.detach().numpy(), rtol=1e-6, atol=1e-6, name="loss")
    assert_close(cross_entropy_backward(1.0, cache), tx.grad.numpy(), rtol=1e-6, atol=1e-7, name="dlogits")


@pytest.mark.torch
def test_bce_with_extreme_logits_matches_torch():
    torch = pytest.importorskip("torch")
    logits = np.array([[1e4, -1e4, 80.0, -80.0, 0.0]], np.float32)
    targets = np.array([[0.0, 1.0, 1.0, 0.25, 0.5]], np.float32)
    tx = torch.from_numpy(logits.copy()).requires_grad_(True)
    expected = torch.nn.BCEWithLogitsLoss()(tx, torch.from_numpy(targets))
    expected.backward()
    loss, cache = bce_with_logits(logits, targets)
    assert_close(loss, expected.detach().numpy(), rtol=1e-6, atol=1e-6, name="loss")
    assert_close(bce_with_logits_backward(1.0, cache), tx.grad.numpy(), rtol=1e-6, atol=1e-7, name="dlogits")


def test_cross_entropy_ignores_rows():
    loss, _ = cross_entropy(LOGITS, LABELS)
    kept = LABELS != -100
    rows = LOGITS[kept]
    log_probs = rows - rows.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(-log_probs[np.arange(kept.sum()), LABELS[kept]].mean(), rel=1e-13)
    _, cache = cross_entropy(LOGITS, LABELS)
    assert not cross_entropy_backward(1.0, cache)[2].any()


def test_cross_entropy_all_ignored_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, cache = cross_entropy(LOGITS[:2].astype(np.float32), np.array([-100, -100]))
        assert loss.dtype == np.float32 and np.isnan(loss)
        np.testing.assert_array_equal(cross_entropy_backward(1.0, cache), np.zeros((2, 5), np.float32))
        empty, _ = cross_entropy(np.zeros((0, 5)), np.zeros(0, np.int64))
        assert np.isnan(empty)


@pytest.mark.parametrize("bad", [5, -1, -99])
def test_cross_entropy_rejects_labels_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"\[0, 5\).*got {bad}\b"):
        cross_entropy(LOGITS, np.array([0, 1, bad, 2, -100, 3]))


def test_cross_entropy_rejects_bad_arguments():
    with pytest.raises(TypeError, match="labels must be an integer array"):
        cross_entropy(LOGITS, LABELS.astype(np.float64))
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        cross_entropy(LOGITS, LABELS[:5])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        cross_entropy(LOGITS[0], LABELS[:1])
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        cross_entropy(LABELS.reshape(2, 3), LABELS[:2])


@pytest.mark.parametrize("forward", [mse, bce_with_logits])
def test_shape_mismatch_is_an_error_not_a_broadcast(forward):
    with pytest.raises(ValueError, match=r"same shape, got \(4,\) and \(4, 1\)"):
        forward(np.zeros(4), np.zeros((4, 1)))


def test_mse_value():
    loss, _ = mse(PRED, MSE_TARGET)
    assert float(loss) == pytest.approx(np.mean((PRED - MSE_TARGET) ** 2), rel=1e-14)


def test_bce_is_stable_for_huge_logits():
    loss, cache = bce_with_logits(np.array([1e4, -1e4], np.float32), np.array([1.0, 0.0], np.float32))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(bce_with_logits_backward(1.0, cache), [0.0, 0.0])


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_cupy_matches_numpy(case, cupy):
    forward, backward, x, other, _ = CASES[case]
    x, other = x.astype(np.float32), cast(other, np.float32)
    loss, cache = forward(x, other)
    loss_gpu, cache_gpu = forward(cupy.asarray(x), cupy.asarray(other))
    grad_gpu = backward(cupy.ones((), np.float32), cache_gpu)
    assert isinstance(loss_gpu, cupy.ndarray) and loss_gpu.shape == () and loss_gpu.dtype == np.float32
    assert isinstance(grad_gpu, cupy.ndarray) and grad_gpu.dtype == np.float32
    assert_close(loss_gpu, loss, rtol=1e-6, atol=1e-6, name=case)
    assert_close(grad_gpu, backward(1.0, cache), rtol=1e-6, atol=1e-7, name=case + " backward")
