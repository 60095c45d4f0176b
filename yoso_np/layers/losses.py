"""The three losses transformers' YOSO heads use, as torch.nn defines them (mean reduction), with backwards.

Each forward returns (loss, cache) with loss a 0-d array of the input's backend and dtype; each backward takes
(dloss, cache) and returns the gradient with respect to the logits/predictions only.
"""
import math

from ..backend import array_module


def _check_float(x, argument):
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{argument} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{argument} must be a floating-point array, got dtype {x.dtype}")


def _check_same_shape(a, b, names):
    if not hasattr(b, "shape"):
        raise TypeError(f"{names[1]} must be a NumPy or CuPy array, got {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}")


def _mean(total, count, xp):
    """total / count as a 0-d array of total's dtype; nan (as torch) and no warning when count is 0."""
    count = xp.asarray(count).astype(total.dtype)
    return xp.where(count > 0, total / xp.maximum(count, 1), math.nan).astype(total.dtype)


def _scalar_like(dloss, x):
    """dloss (a number or 0-d array) as a 0-d array of x's backend and dtype, so it never promotes x."""
    return array_module(x).asarray(dloss, dtype=x.dtype)


# ---- cross entropy -----------------------------------------------------------------------------------------------

def cross_entropy(logits, labels, ignore_index=-100):
    """torch.nn.CrossEntropyLoss(ignore_index=...): mean over the rows whose label is not ignore_index.

    logits (N, C) float, labels (N,) integer in [0, C) or ignore_index. Returns (loss, cache).
    """
    _check_float(logits, "logits")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {logits.shape}")
    if not hasattr(labels, "dtype") or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape {logits.shape[:1]} to match logits {logits.shape}, "
                         f"got {labels.shape}")
    xp = array_module(logits)
    labels = xp.asarray(labels)
    n, classes = logits.shape
    kept = labels != ignore_index
    bad = kept & ((labels < 0) | (labels >= classes))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {classes}) or ignore_index={ignore_index}, "
                         f"got {int(labels[bad][0])}")
    targets = xp.where(kept, labels, 0)
    rows = xp.arange(n)

    # log softmax = shifted - log(sum(exp(shifted))), shifted = logits - row max
    shifted = logits - logits.max(axis=1, keepdims=True)
    picked = shifted[rows, targets]
    probs = xp.exp(shifted, out=shifted)
    row_sums = probs.sum(axis=1)
    nll = xp.log(row_sums) - picked
    count = kept.sum()
    loss = _mean(xp.where(kept, nll, 0.0).sum(), count, xp)
    probs /= row_sums[:, None]
    return loss, (probs, targets, kept, count)


def cross_entropy_backward(dloss, cache):
    """dlogits = (softmax - onehot) * dloss / count on kept rows, 0 on ignored rows (all zero if all ignored)."""
    probs, targets, kept, count = cache
    xp = array_module(probs)
    dlogits = probs.copy()
    dlogits[xp.arange(probs.shape[0]), targets] -= 1.0
    row_scale = kept.astype(probs.dtype) * (_scalar_like(dloss, probs) / xp.maximum(count, 1).astype(probs.dtype))
    dlogits *= row_scale[:, None]
    return dlogits


# ---- binary cross entropy with logits ----------------------------------------------------------------------------

def bce_with_logits(logits, targets):
    """torch.nn.BCEWithLogitsLoss(): mean of max(x, 0) - x t + log1p(exp(-|x|)), stable for any x."""
    _check_float(logits, "logits")
    _check_same_shape(logits, targets, ("logits", "targets"))
    xp = array_module(logits)
    targets = xp.asarray(targets).astype(logits.dtype, copy=False)
    elementwise = xp.exp(-xp.abs(logits))
    xp.log1p(elementwise, out=elementwise)
    elementwise += xp.maximum(logits, 0.0)
    elementwise -= logits * targets
    return _mean(elementwise.sum(), logits.size, xp), (logits, targets)


def bce_with_logits_backward(dloss, cache):
    """dlogits = (sigmoid(x) - t) * dloss / numel."""
    logits, targets = cache
    xp = array_module(logits)
    e = xp.exp(-xp.abs(logits))  # sigmoid without overflow: 1/(1+e) for x >= 0, e/(1+e) for x < 0
    sigmoid = xp.where(logits >= 0, 1.0, e) / (1.0 + e)
    sigmoid -= targets
    sigmoid *= _scalar_like(dloss, logits) / max(logits.size, 1)
    return sigmoid


# ---- mean squared error ------------------------------------------------------------------------------------------

def mse(pred, target):
    """torch.nn.MSELoss(): mean((pred - target)^2). Shapes must match exactly (no broadcasting)."""
    _check_float(pred, "pred")
    _check_same_shape(pred, target, ("pred", "target"))
    xp = array_module(pred)
    diff = pred - xp.asarray(target).astype(pred.dtype, copy=False)
    return _mean((diff * diff).sum(), pred.size, xp), (diff,)


def mse_backward(dloss, cache):
    """dpred = 2 (pred - target) * dloss / numel."""
    (diff,) = cache
    return diff * (2.0 * _scalar_like(dloss, diff) / max(diff.size, 1))
