"""Word + token type + absolute position embeddings, then LayerNorm and dropout (transformers' YosoEmbeddings).

Position ids default to arange(n) + 2: the table has max_position_embeddings + 2 rows, and YOSO, like RoBERTa,
leaves rows 0 and 1 unused by default.
"""
from ..backend import array_module, scatter_add_rows
from .dropout import dropout, dropout_backward
from .norm import layer_norm, layer_norm_backward
from .params import add_prefix, sub

POSITION_OFFSET = 2


def check_ids(ids, name, upper):
    """Integer ids of any backend, every value in [0, upper)."""
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} must lie in [0, {upper}), got {bad}")


def embeddings(p, input_ids, token_type_ids, position_ids, inputs_embeds, *, eps, dropout_rate,
               padding_idx=None, training=False, rng=None):
    """p: the "embeddings." sub-dict; ids are (batch, n) integer arrays; inputs_embeds (batch, n, hidden).
    padding_idx: the word row that gets no gradient (torch's nn.Embedding(padding_idx=pad_token_id))."""
    words = p["word_embeddings.weight"]
    xp = array_module(words)
    if inputs_embeds is None:
        check_ids(input_ids, "input_ids", words.shape[0])
        x = words[input_ids]
    else:
        x = inputs_embeds.astype(words.dtype, copy=True)
    batch, n = x.shape[:2]
    max_positions = p["position_embeddings.weight"].shape[0]
    if position_ids is None:
        if n + POSITION_OFFSET > max_positions:
            raise ValueError(
                f"sequence length must be at most max_position_embeddings = {max_positions - POSITION_OFFSET}, "
                f"got {n}")
        position_ids = xp.arange(POSITION_OFFSET, n + POSITION_OFFSET)[None, :]
    else:
        check_ids(position_ids, "position_ids", max_positions)
    if token_type_ids is None:
        x += p["token_type_embeddings.weight"][0]
    else:
        check_ids(token_type_ids, "token_type_ids", p["token_type_embeddings.weight"].shape[0])
        x += p["token_type_embeddings.weight"][token_type_ids]
    x += p["position_embeddings.weight"][position_ids]
    y, ln_cache = layer_norm(sub(p, "LayerNorm."), x, eps)
    y, drop_cache = dropout(y, dropout_rate, rng, training)
    return y, (input_ids, token_type_ids, position_ids, inputs_embeds is not None, padding_idx, p, ln_cache,
               drop_cache)


def embeddings_backward(dy, cache):
    """Returns (d inputs_embeds or None, grads keyed like the "embeddings." sub-dict)."""
    input_ids, token_type_ids, position_ids, from_embeds, padding_idx, p, ln_cache, drop_cache = cache
    dx, grads = layer_norm_backward(dropout_backward(dy, drop_cache), ln_cache)
    grads = add_prefix(grads, "LayerNorm.")
    h = dx.shape[-1]
    flat = dx.reshape(-1, h)
    pos = p["position_embeddings.weight"]
    if position_ids.ndim == 2 and position_ids.shape[0] == 1:  # shared by the batch (the default): sum it first
        grads["position_embeddings.weight"] = scatter_add_rows(pos.shape[0], position_ids[0], dx.sum(axis=0))
    else:
        grads["position_embeddings.weight"] = scatter_add_rows(
            pos.shape[0], array_module(dx).broadcast_to(position_ids, dx.shape[:2]).reshape(-1), flat)
    types = p["token_type_embeddings.weight"]
    if token_type_ids is None:
        grads["token_type_embeddings.weight"] = array_module(dx).zeros_like(types)
        grads["token_type_embeddings.weight"][0] = flat.sum(axis=0)
    else:
        grads["token_type_embeddings.weight"] = scatter_add_rows(types.shape[0], token_type_ids.reshape(-1), flat)
    words = p["word_embeddings.weight"]
    if from_embeds:
        grads["word_embeddings.weight"] = array_module(dx).zeros_like(words)
        return dx, grads
    grads["word_embeddings.weight"] = scatter_add_rows(words.shape[0], input_ids.reshape(-1), flat)
    if padding_idx is not None and 0 <= padding_idx < words.shape[0]:
        grads["word_embeddings.weight"][padding_idx] = 0
    return None, grads
