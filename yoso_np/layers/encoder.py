"""One YOSO encoder layer (attention, output projection, residual LayerNorm, feed-forward, residual LayerNorm)
and the stack of them (transformers' YosoLayer / YosoEncoder). transformers' YosoSelfAttention defines an
attention dropout but never applies it, so neither do we."""
from .activations import activation, activation_backward
from .attention import attention, attention_backward
from .dropout import dropout, dropout_backward
from .linear import linear, linear_backward
from .norm import layer_norm, layer_norm_backward
from .params import add_prefix, sub


def encoder_layer(p, x, mask, config, *, training=False, rng=None, keep_cache=True, rows=None):
    """p: the "encoder.layer.{i}." sub-dict; x: (batch, n, hidden); mask: (batch, n) 0/1 in x's dtype; rows: None,
    or a slice of the positions whose output is wanted (all positions are still attended to).
    Returns (y (batch, positions, hidden), attention context, cache); keep_cache=False (no backward to follow)
    returns cache None and lets the GELU and the LayerNorms write over their inputs."""
    eps, rate, over = config.layer_norm_eps, config.hidden_dropout_prob, not keep_cache
    ctx, att = attention(sub(p, "attention.self."), x, mask, config, training=training, rng=rng, rows=rows)
    h, att_dense = linear(sub(p, "attention.output.dense."), ctx)
    h, att_drop = dropout(h, rate, rng, training)
    h += x if rows is None else x[:, rows]
    a, att_ln = layer_norm(sub(p, "attention.output.LayerNorm."), h, eps, overwrite_x=over)
    i, ffn_in = linear(sub(p, "intermediate.dense."), a)
    i, act = activation(config.hidden_act, i, overwrite_x=over)
    o, ffn_out = linear(sub(p, "output.dense."), i)
    o, ffn_drop = dropout(o, rate, rng, training)
    o += a
    y, ffn_ln = layer_norm(sub(p, "output.LayerNorm."), o, eps, overwrite_x=over)
    cache = (att, att_dense, att_drop, att_ln, ffn_in, act, ffn_out, ffn_drop, ffn_ln, rows) if keep_cache else None
    return y, ctx, cache


def encoder(p, x, mask, config, *, training=False, rng=None, output_hidden_states=False,
            output_attentions=False, keep_caches=False, last_rows=None):
    """p: the "encoder." sub-dict. Returns (y, hidden_states, contexts, caches), each list None unless asked
    for: hidden_states holds the input and every layer's output; contexts every layer's attention context
    (what transformers returns as "attentions"); caches the per-layer caches for the backward. last_rows: None,
    or a slice of the positions the caller reads (a classifier's first token): the last layer computes only those,
    and y holds only those."""
    hidden_states = [x] if output_hidden_states else None
    contexts = [] if output_attentions else None
    caches = [] if keep_caches else None
    for i in range(config.num_hidden_layers):
        last = i == config.num_hidden_layers - 1
        x, ctx, cache = encoder_layer(sub(p, f"layer.{i}."), x, mask, config, training=training, rng=rng,
                                      keep_cache=keep_caches, rows=last_rows if last else None)
        for kept, value in ((hidden_states, x), (contexts, ctx), (caches, cache)):
            if kept is not None:
                kept.append(value)
    return x, hidden_states, contexts, caches


def encoder_layer_backward(dy, cache, config):
    """Returns (dx, grads keyed like the "encoder.layer.{i}." sub-dict). Each piece of the cache is let go once
    used: when the caller hands over its last reference (encoder_backward does), the layer's activations are freed
    as its backward goes."""
    att, att_dense, att_drop, att_ln, ffn_in, act, ffn_out, ffn_drop, ffn_ln, rows = cache
    del cache
    grads = {}

    def collect(prefix, g):
        grads.update(add_prefix(g, prefix))

    do, g = layer_norm_backward(dy, ffn_ln)
    collect("output.LayerNorm.", g)
    del ffn_ln
    di, g = linear_backward(dropout_backward(do, ffn_drop), ffn_out, overwrite_x=True)  # the GELU's output
    collect("output.dense.", g)
    del ffn_out, ffn_drop
    di = activation_backward(di, act, overwrite_dy=True)  # di is this function's own
    del act
    da, g = linear_backward(di, ffn_in)
    collect("intermediate.dense.", g)
    del di, ffn_in
    da += do  # residual around the feed-forward
    del do
    dh, g = layer_norm_backward(da, att_ln)
    collect("attention.output.LayerNorm.", g)
    del da, att_ln
    dctx, g = linear_backward(dropout_backward(dh, att_drop), att_dense)
    collect("attention.output.dense.", g)
    del att_dense, att_drop
    dx, g = attention_backward(dctx, att, config)
    collect("attention.self.", g)
    into = dx if rows is None else dx[:, rows]
    into += dh  # residual around the attention
    return dx, grads


def encoder_backward(dy, caches, config):
    """Returns (dx, grads keyed like the "encoder." sub-dict). Empties ``caches`` from the last layer down, so
    that each layer's activations are freed once its backward has used them (as torch frees saved tensors): with
    attention_backward's in-place work, a 2-layer step at 32 x 128 tokens peaked at 553 MiB instead of 889."""
    grads = {}
    for i in reversed(range(len(caches))):
        dy, g = encoder_layer_backward(dy, caches.pop(), config)
        grads.update(add_prefix(g, f"layer.{i}."))
    return dy, grads
