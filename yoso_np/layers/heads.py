"""The task heads of transformers' Yoso* classes, over the encoder's last hidden state (batch, n, hidden)."""
from ..backend import array_module
from .activations import activation, activation_backward
from .dropout import dropout, dropout_backward
from .linear import linear, linear_backward
from .norm import layer_norm, layer_norm_backward
from .params import add_prefix, sub


def mlm_head(p, h, word_embeddings, config):
    """p: the "cls.predictions." sub-dict. dense -> act -> LayerNorm -> decoder tied to the word embeddings,
    plus the bias "cls.predictions.bias". Returns logits (batch, n, vocab)."""
    t, dense = linear(sub(p, "transform.dense."), h)
    t, act = activation(config.hidden_act, t)
    t, ln = layer_norm(sub(p, "transform.LayerNorm."), t, config.layer_norm_eps)
    logits, decoder = linear({"weight": word_embeddings, "bias": p["bias"]}, t)
    return logits, (dense, act, ln, decoder)


def classification_head(p, h, config, *, training=False, rng=None):
    """p: the "classifier." sub-dict. First token -> dropout -> dense -> act -> dropout -> out_proj."""
    rate = config.hidden_dropout_prob
    x, drop1 = dropout(h[:, 0], rate, rng, training)
    x, dense = linear(sub(p, "dense."), x)
    x, act = activation(config.hidden_act, x)
    x, drop2 = dropout(x, rate, rng, training)
    logits, out_proj = linear(sub(p, "out_proj."), x)
    return logits, (h.shape, drop1, dense, act, drop2, out_proj)


def multiple_choice_head(p, h):
    """p: {"pre_classifier.*", "classifier.*"}; h: (batch * choices, n, hidden). First token -> pre_classifier
    -> ReLU -> classifier (no dropout, as transformers). Returns logits (batch * choices, 1)."""
    x, pre = linear(sub(p, "pre_classifier."), h[:, 0])
    x, act = activation("relu", x)
    logits, cls = linear(sub(p, "classifier."), x)
    return logits, (h.shape, pre, act, cls)


def token_classification_head(p, h, config, *, training=False, rng=None):
    """p: the "classifier." sub-dict. dropout -> linear on every token."""
    x, drop = dropout(h, config.hidden_dropout_prob, rng, training)
    logits, cls = linear(p, x)
    return logits, (drop, cls)


def qa_head(p, h):
    """p: the "qa_outputs." sub-dict (2 outputs). Returns (start_logits, end_logits), each (batch, n)."""
    logits, qa = linear(p, h)
    return (logits[..., 0], logits[..., 1]), qa


def mlm_head_backward(dlogits, cache):
    """Returns (dh, grads keyed like "cls.predictions.", d word_embeddings from the tied decoder)."""
    dense, act, ln, decoder = cache
    dt, g_dec = linear_backward(dlogits, decoder)
    dt, g_ln = layer_norm_backward(dt, ln)
    dh, g_dense = linear_backward(activation_backward(dt, act), dense)
    grads = {"bias": g_dec["bias"], **add_prefix(g_ln, "transform.LayerNorm."),
             **add_prefix(g_dense, "transform.dense.")}
    return dh, grads, g_dec["weight"]


def classification_head_backward(dlogits, cache):
    shape, drop1, dense, act, drop2, out_proj = cache
    dx, g_out = linear_backward(dlogits, out_proj)
    dx, g_dense = linear_backward(activation_backward(dropout_backward(dx, drop2), act), dense)
    return first_token_backward(dropout_backward(dx, drop1), shape), {
        **add_prefix(g_dense, "dense."), **add_prefix(g_out, "out_proj.")}


def first_token_backward(dx, shape):
    xp = array_module(dx)
    dh = xp.zeros(shape, dtype=dx.dtype)
    dh[:, 0] = dx
    return dh


def multiple_choice_head_backward(dlogits, cache):
    shape, pre, act, cls = cache
    dx, g_cls = linear_backward(dlogits, cls)
    dx, g_pre = linear_backward(activation_backward(dx, act), pre)
    return first_token_backward(dx, shape), {**add_prefix(g_pre, "pre_classifier."), **add_prefix(g_cls, "classifier.")}


def token_classification_head_backward(dlogits, cache):
    drop, cls = cache
    dx, grads = linear_backward(dlogits, cls)
    return dropout_backward(dx, drop), grads


def qa_head_backward(dstart, dend, cache):
    xp = array_module(dstart)
    return linear_backward(xp.stack([dstart, dend], axis=-1), cache)
