"""Every layer's hand-written backward against float64 central finite differences.

The YOSO-E backward is the paper's surrogate (dW/ds = tau/2 W instead of the derivative of arccos), so it cannot
match finite differences of the real weights. It is the exact derivative of W(s) = exp(tau (s - 1) / 2), though:
the tests swap that weight in, which checks everything around the surrogate (normalisations, masks, conv,
projections, heads, losses) exactly; test_surrogate_formula checks the surrogate products themselves.

Finite differences of a layer's own forward cannot see a bug in that forward (a backward that follows a wrong
forward passes), so each layer's forward is also checked here against its formula written out plainly."""
import importlib
import math

import numpy as np
import pytest

import yoso_np
from yoso_np import layers
from yoso_np.layers.attention import (attention_backward, depthwise_conv, depthwise_conv_backward,
                                      expectation_cumulation_backward, l2_normalize, l2_normalize_backward)
from yoso_np.layers.dropout import dropout, dropout_backward
from yoso_np.layers.embeddings import embeddings, embeddings_backward
from yoso_np.layers.encoder import encoder_layer, encoder_layer_backward
from yoso_np.layers.linear import linear, linear_backward
from yoso_np.layers.norm import layer_norm, layer_norm_backward
from tests.gradcheck import assert_close, numerical_grad

RTOL, ATOL = 1e-6, 1e-8
attention_module = importlib.import_module("yoso_np.layers.attention")  # layers.attention is the function


@pytest.fixture
def exp_weights(monkeypatch):
    def weights(s, tau, scratch):
        s -= 1.0
        s *= tau / 2.0
        np.exp(s, out=s)
        return s
    monkeypatch.setattr(attention_module, "collision_probability", weights)


def rand(rng, *shape):
    return rng.standard_normal(shape)


def check_layer(forward, backward, x, params, rng, name):
    """forward(params, x) -> (y, cache); backward(dy, cache) -> (dx, grads). Checks dx and every grad."""
    y, cache = forward(params, x)
    r = rand(rng, *y.shape)
    dx, grads = backward(r, cache)
    loss = lambda: float((forward(params, x)[0] * r).sum())
    if dx is not None:
        def f(v):
            return float((forward(params, v)[0] * r).sum())
        assert_close(dx, numerical_grad(f, x), RTOL, ATOL, f"{name} dx")
    for key, g in grads.items():
        def f(v, key=key):
            saved = params[key]
            params[key] = v
            try:
                return loss()
            finally:
                params[key] = saved
        assert_close(g, numerical_grad(f, params[key]), RTOL, ATOL, f"{name} d{key}")


def test_linear():
    rng = np.random.default_rng(0)
    p = {"weight": rand(rng, 5, 3), "bias": rand(rng, 5)}
    x = rand(rng, 2, 4, 3)
    check_layer(linear, linear_backward, x, p, rng, "linear")
    expected = np.einsum("bni,oi->bno", x, p["weight"]) + p["bias"]
    assert_close(linear(p, x)[0], expected, 1e-13, 1e-13, "linear forward")


def layer_norm_formula(x, weight, bias, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps) * weight + bias


@pytest.mark.parametrize("eps, scale", [(1e-12, 1.0), (1e-5, 3e-3), (1e-6, 1e-3)])
def test_layer_norm(eps, scale):
    """scale: the rows' standard deviation; 3e-3 and 1e-3 put their variance near eps, where eps inside or outside
    the square root differ by percents."""
    rng = np.random.default_rng(1)
    p = {"weight": rand(rng, 7), "bias": rand(rng, 7)}
    x = 0.5 + scale * rand(rng, 3, 7)
    check_layer(lambda p, x: layer_norm(p, x, eps), layer_norm_backward, x, p, rng, "layer_norm")
    assert_close(layer_norm(p, x, eps)[0], layer_norm_formula(x, p["weight"], p["bias"], eps), 1e-10, 1e-12,
                 f"layer_norm forward, eps {eps}")


def test_l2_normalize_and_zero_rows():
    rng = np.random.default_rng(2)
    x = rand(rng, 4, 6)
    check_layer(lambda p, x: (l2_normalize(x)[0], l2_normalize(x)),
                lambda dy, c: (l2_normalize_backward(dy, *c), {}), x, {}, rng, "l2_normalize")
    assert_close(l2_normalize(x)[0], x / np.sqrt((x ** 2).sum(-1, keepdims=True)), 1e-14, 1e-14, "l2 forward")
    zero = np.zeros((1, 3))
    y, norm = l2_normalize(zero)
    assert np.all(y == 0) and np.all(np.isfinite(l2_normalize_backward(np.ones((1, 3)), y, norm)))


def test_depthwise_conv():
    rng = np.random.default_rng(3)
    for window in (1, 3, 5):
        p = {"w": rand(rng, 3, 1, window, 1)}
        v = rand(rng, 2, 3, 4, 2)
        check_layer(lambda p, v: (depthwise_conv(v, p["w"]), v),
                    lambda dy, v: (lambda dv, dw: (dv, {"w": dw}))(*depthwise_conv_backward(dy, v, p["w"])),
                    v, p, rng, f"conv{window}")
        # torch's Conv2d (a cross-correlation) with zero padding window // 2, position by position
        expected = np.zeros_like(v)
        for b, h, i, d in np.ndindex(v.shape):
            for t in range(window):
                j = i + t - window // 2
                if 0 <= j < v.shape[2]:
                    expected[b, h, i, d] += p["w"][h, 0, t, 0] * v[b, h, j, d]
        assert_close(depthwise_conv(v, p["w"]), expected, 1e-13, 1e-13, f"conv{window} forward")


def test_dropout_uses_the_forward_mask():
    x = np.random.default_rng(4).standard_normal((50, 40))
    y, scale = dropout(x, 0.25, np.random.default_rng(5), training=True)
    dropped = y == 0
    assert 0.15 < dropped.mean() < 0.35
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75)
    assert np.all(dropout_backward(np.ones_like(x), scale)[dropped] == 0)
    assert dropout(x, 0.25, None, training=False)[0] is x


@pytest.mark.parametrize("with_ids", [True, False])
def test_embeddings(with_ids):
    rng = np.random.default_rng(6)
    p = {"word_embeddings.weight": rand(rng, 11, 4), "position_embeddings.weight": rand(rng, 9, 4),
         "token_type_embeddings.weight": rand(rng, 2, 4), "LayerNorm.weight": rand(rng, 4),
         "LayerNorm.bias": rand(rng, 4)}
    ids = np.array([[3, 1, 5, 3, 1], [0, 10, 10, 2, 1]])
    types = np.array([[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]])
    embeds = rand(rng, 2, 5, 4)

    def forward(p, x, padding_idx=None):
        return embeddings(p, ids if with_ids else None, types, None, None if with_ids else x,
                          eps=1e-12, dropout_rate=0.1, padding_idx=padding_idx)

    check_layer(forward, embeddings_backward, embeds, p, rng, "embeddings")
    # positions 2, 3, ... as transformers' YosoEmbeddings (rows 0 and 1 unused)
    summed = (p["word_embeddings.weight"][ids] if with_ids else embeds) + p["token_type_embeddings.weight"][types] \
        + p["position_embeddings.weight"][2:7]
    expected = layer_norm_formula(summed, p["LayerNorm.weight"], p["LayerNorm.bias"], 1e-12)
    assert_close(forward(p, embeds)[0], expected, 1e-12, 1e-12, "embeddings forward")
    if with_ids:  # the padding row gets no gradient, as torch's nn.Embedding(padding_idx=...); others keep theirs
        dy = rand(rng, 2, 5, 4)
        _, plain = embeddings_backward(dy, forward(p, embeds)[1])
        _, padded = embeddings_backward(dy, forward(p, embeds, padding_idx=1)[1])
        assert np.all(padded["word_embeddings.weight"][1] == 0) and np.any(plain["word_embeddings.weight"][1] != 0)
        rows = np.arange(11) != 1
        assert np.array_equal(padded["word_embeddings.weight"][rows], plain["word_embeddings.weight"][rows])


class Config:
    num_attention_heads, hash_code_len, use_expectation, conv_window = 2, 9, True, 3
    num_hash, use_fast_hash, lsh_backward = 8, True, True
    layer_norm_eps, hidden_dropout_prob, hidden_act, num_hidden_layers = 1e-12, 0.1, "gelu_new", 1


def attention_params(rng, hidden=6, heads=2, window=3):
    p = {}
    for name in ("query", "key", "value"):
        p[f"{name}.weight"], p[f"{name}.bias"] = rand(rng, hidden, hidden), rand(rng, hidden)
    p["conv.weight"] = rand(rng, heads, 1, window, 1)
    return p


@pytest.mark.parametrize("rows", [None, slice(0, 1), slice(3, 5)])  # the last: a masked query among them
def test_attention_around_the_surrogate(exp_weights, rows):
    rng = np.random.default_rng(7)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=np.float64)
    check_layer(lambda p, x: layers.attention(p, x, mask, Config, rows=rows),
                lambda dy, c: attention_backward(dy, c, Config), rand(rng, 2, 5, 6), attention_params(rng), rng,
                "attention")


@pytest.mark.parametrize("rows", [None, slice(0, 1), slice(2, 4)])
def test_encoder_layer(exp_weights, rows):
    rng = np.random.default_rng(8)
    hidden, inter = 6, 7
    p = {"attention.self." + k: v for k, v in attention_params(rng).items()}
    for name, (o, i) in {"attention.output.dense": (hidden, hidden), "intermediate.dense": (inter, hidden),
                         "output.dense": (hidden, inter)}.items():
        p[f"{name}.weight"], p[f"{name}.bias"] = rand(rng, o, i), rand(rng, o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        p[f"{name}.weight"], p[f"{name}.bias"] = 1 + 0.1 * rand(rng, hidden), rand(rng, hidden)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.float64)
    check_layer(lambda p, x: (lambda y, ctx, c: (y, c))(*encoder_layer(p, x, mask, Config, rows=rows)),
                lambda dy, c: encoder_layer_backward(dy, c, Config), rand(rng, 2, 4, hidden), p, rng, "encoder")


def test_surrogate_formula():
    """dV = W^T G, dQ = ((G V^T) * W) tau/2 K, dK = ((G V^T) * W)^T tau/2 Q, with W from the forward."""
    rng = np.random.default_rng(9)
    n, d, tau = 300, 5, 9  # n large enough for several row blocks
    old = attention_module.BLOCK_ELEMENTS
    attention_module.BLOCK_ELEMENTS = 64 * n
    try:
        q, _ = l2_normalize(rand(rng, n, d))
        k, _ = l2_normalize(rand(rng, n, d))
        v, g = rand(rng, n, d), rand(rng, n, d)
        w = (1 - np.arccos(np.clip(q @ k.T, -1, 1)) / math.pi) ** tau
        dq, dk, dv = expectation_cumulation_backward(g, q, k, v, tau)
    finally:
        attention_module.BLOCK_ELEMENTS = old
    t = (g @ v.T) * w
    assert_close(dv, w.T @ g, 1e-12, 1e-12, "dV")
    assert_close(dq, t @ k * tau / 2, 1e-12, 1e-12, "dQ")
    assert_close(dk, t.T @ q * tau / 2, 1e-12, 1e-12, "dK")


def tiny_config(**kw):
    return yoso_np.YosoConfig(vocab_size=13, hidden_size=8, num_attention_heads=2, num_hidden_layers=2,
                              intermediate_size=5, max_position_embeddings=12, type_vocab_size=2, conv_window=3,
                              hidden_act="gelu", **kw)


CLASSES = {
    "YosoModel": {},
    "YosoForMaskedLM": {"labels": [[-100, 3, 4, -100, 7, 1], [2, -100, -100, 5, -100, 6]]},
    "YosoForSequenceClassification": {"labels": [0, 2]},
    "YosoForTokenClassification": {"labels": [[0, 1, 2, -100, 1, 0], [2, 2, -100, 1, 0, 1]]},
    "YosoForQuestionAnswering": {"start_positions": [1, 99], "end_positions": [4, 2]},
    "YosoForMultipleChoice": {"labels": [1, 0]},
}


@pytest.mark.parametrize("cls_name", sorted(CLASSES))
def test_model_gradients(cls_name, exp_weights):
    """Whole-model forward_backward against finite differences on sampled entries of every weight."""
    rng = np.random.default_rng(10)
    cls = getattr(yoso_np, cls_name)
    model = cls(tiny_config(num_labels=3), seed=1)
    model.weights = {k: v.astype(np.float64) + 0.3 * rand(rng, *v.shape) for k, v in model.weights.items()}
    shape = (2, 3, 6) if cls_name == "YosoForMultipleChoice" else (2, 6)
    inputs = {"input_ids": rng.integers(0, 13, shape), "token_type_ids": rng.integers(0, 2, shape),
              "attention_mask": np.ones(shape, np.int64)}
    inputs["attention_mask"][..., 0, -2:] = 0
    targets = {k: np.array(v) for k, v in CLASSES[cls_name].items()}
    if cls_name == "YosoModel":
        targets["grad_last_hidden_state"] = rand(rng, 2, 6, 8)

    def loss():
        out = model(**inputs, **{k: v for k, v in targets.items() if k != "grad_last_hidden_state"})
        if cls_name == "YosoModel":
            return float((out.last_hidden_state * targets["grad_last_hidden_state"]).sum())
        return float(out.loss)

    _, grads = model.forward_backward(**inputs, **targets)
    for key in sorted(model.weights):
        w = model.weights[key].reshape(-1)
        for i in rng.choice(w.size, size=min(3, w.size), replace=False):
            saved = w[i]
            w[i] = saved + 1e-6
            up = loss()
            w[i] = saved - 1e-6
            down = loss()
            w[i] = saved
            assert_close(grads[key].reshape(-1)[i], (up - down) / 2e-6, 1e-5, 1e-7, f"{cls_name} {key}[{i}]")
