"""Write the reference fixtures under tests/fixtures/ref/ from transformers' YOSO models.

Run by hand (needs torch and transformers; the tests that read the fixtures do not):

    python tests/make_fixtures.py                        # every fixture anew
    python tests/make_fixtures.py activations optimizer mlm_basic   # only these

It also writes tests/fixtures/activations.npz (every ACT2FN activation on a grid, float32 and float64) and
tests/fixtures/optimizer.npz (SGD trajectories: momentum, Nesterov, decay groups, clipping, both schedules).

Each case folder holds what `save_pretrained` writes (config.json, model.safetensors), reference.npz (inputs,
outputs, hidden states), grads.safetensors (the gradient of every weight, keyed like model.safetensors) and
case.json (class, description, notes). tests/fixtures_io.py reads them back without torch.

Two things make the padded cases need care, because transformers' YOSO attention reads its mask as an
*additive* mask (0 keep, -10000 drop) although its docs and its other heads speak of 0/1 masks:
  * with a 0/1 mask the attention masks nothing (int(1 + m / 10000) is 1 for both 0 and 1), so transformers is
    given the additive mask (1 - m) * -10000 while the fixture stores the 0/1 mask;
  * the conv branch multiplies V by the raw mask argument and YosoForTokenClassification selects loss positions
    with `attention_mask == 1`; both assume a 0/1 mask, so for padded cases the script corrects them
    (see conv_sees_masked_values and token_classification_loss).
The corrected reference is then checked two ways: appending extra padding changes no real-token output, loss or
gradient, and each padded row run alone, unpadded, through plain transformers gives the same hidden states.
"""

import contextlib
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file
from torch import nn
from transformers import YosoConfig
from transformers.models.yoso.modeling_yoso import YosoSelfAttention

REF_DIR = Path(__file__).parent / "fixtures" / "ref"
PAD_ID = 1
BOS_ID = 0
EXTRA_PAD = 3  # columns of padding appended for the padding-invariance check

BASE_CONFIG = dict(
    vocab_size=97,
    hidden_size=32,
    num_attention_heads=4,
    num_hidden_layers=2,
    intermediate_size=37,
    max_position_embeddings=40,
    hash_code_len=9,
)
SMALL_CONFIG = dict(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=24,
                    max_position_embeddings=20)


@dataclasses.dataclass
class Spec:
    name: str
    cls: str
    description: str
    seed: int
    batch: int = 2
    seq: int = 8
    lengths: tuple | None = None  # real length of each row (each row x choice for multiple choice); None: unpadded
    choices: int | None = None  # multiple choice only
    config: dict = dataclasses.field(default_factory=dict)
    token_type_ids: bool = False
    position_ids: bool = False
    inputs_embeds: bool = False
    float64: bool = False
    embedding_std: float | None = None  # std of the embedding tables (default: 0.2 as every other weight)
    transformers_init: bool = False  # keep the weights transformers' own init drew (initializer_range)


CASES = [
    Spec("model_basic", "YosoModel", "base model, gelu, batch 2 x 9, no padding", seed=101, seq=9),
    Spec("model_padded_hash5", "YosoModel", "base model, relu, hash_code_len 5, second row padded (11 and 6 real)",
         seed=102, seq=11, lengths=(11, 6), config=dict(hash_code_len=5, hidden_act="relu")),
    Spec("model_float64_padded_conv3", "YosoModel",
         "base model in float64, gelu_new, conv_window 3, type_vocab_size 2 with token_type_ids, padded (10 and 7)",
         seed=103, seq=10, lengths=(10, 7), float64=True, token_type_ids=True,
         config=dict(conv_window=3, hidden_act="gelu_new", type_vocab_size=2)),
    Spec("model_position_ids_silu", "YosoModel", "base model, silu, explicit random position_ids in [0, 42)",
         seed=104, seq=8, position_ids=True, config=dict(hidden_act="silu")),
    Spec("mlm_basic", "YosoForMaskedLM", "masked LM (tied decoder), gelu, labels with -100", seed=201, seq=8),
    Spec("mlm_padded_conv3", "YosoForMaskedLM", "masked LM, silu, conv_window 3, padded (9 and 5)",
         seed=202, seq=9, lengths=(9, 5), config=dict(conv_window=3, hidden_act="silu")),
    Spec("seqcls_single_token_types", "YosoForSequenceClassification",
         "single_label_classification, 3 labels, gelu_new, type_vocab_size 2 with token_type_ids",
         seed=301, seq=8, token_type_ids=True,
         config=dict(problem_type="single_label_classification", num_labels=3, hidden_act="gelu_new",
                     type_vocab_size=2)),
    Spec("seqcls_multi_padded", "YosoForSequenceClassification",
         "multi_label_classification, 4 labels (float 0/1), relu, padded (8 and 4)",
         seed=302, seq=8, lengths=(8, 4),
         config=dict(problem_type="multi_label_classification", num_labels=4, hidden_act="relu")),
    Spec("seqcls_regression_inputs_embeds", "YosoForSequenceClassification",
         "regression, 1 label, silu, inputs_embeds instead of input_ids (gradient w.r.t. inputs_embeds stored)",
         seed=303, seq=7, inputs_embeds=True,
         config=dict(problem_type="regression", num_labels=1, hidden_act="silu")),
    Spec("multiple_choice_padded", "YosoForMultipleChoice", "multiple choice, batch 2 x 3 choices x 7, gelu, "
         "some choices padded", seed=401, seq=7, choices=3, lengths=(7, 5, 6, 3, 7, 4)),
    Spec("multiple_choice_conv3_token_types", "YosoForMultipleChoice",
         "multiple choice, batch 2 x 3 choices x 7, gelu_new, conv_window 3, type_vocab_size 2 with token_type_ids",
         seed=402, seq=7, choices=3, token_type_ids=True,
         config=dict(conv_window=3, hidden_act="gelu_new", type_vocab_size=2)),
    Spec("tokcls_padded", "YosoForTokenClassification",
         "token classification, 5 labels, gelu_new, padded (9 and 6); padded positions carry real labels that the "
         "mask must drop, some real positions -100", seed=501, seq=9, lengths=(9, 6),
         config=dict(num_labels=5, hidden_act="gelu_new")),
    Spec("tokcls_conv3", "YosoForTokenClassification", "token classification, 5 labels, relu, conv_window 3, "
         "some labels -100", seed=502, seq=8, config=dict(num_labels=5, conv_window=3, hidden_act="relu")),
    Spec("qa_position_ids_hash5", "YosoForQuestionAnswering",
         "question answering, gelu, hash_code_len 5, explicit position_ids; one start and one end position is 100 "
         "(out of range: clamped to seq_len and ignored)", seed=601, seq=10, position_ids=True,
         config=dict(hash_code_len=5)),
    Spec("qa_padded_token_types", "YosoForQuestionAnswering",
         "question answering, silu, type_vocab_size 2 with token_type_ids, padded (9 and 6); one end position 100",
         seed=602, seq=9, lengths=(9, 6), token_type_ids=True,
         config=dict(hidden_act="silu", type_vocab_size=2)),
    # eps matters only where a row's variance is near it: embeddings of std 0.004 give the embedding LayerNorm a
    # variance of ~5e-5, where eps 1e-5 inside or outside the square root moves the outputs by several percent
    Spec("mlm_eps1e-5_small_embeddings", "YosoForMaskedLM",
         "masked LM, small (hidden 16, 1 layer), layer_norm_eps 1e-5, embeddings of std 0.004 (eps matters)",
         seed=203, seq=8, embedding_std=0.004, config=dict(SMALL_CONFIG, layer_norm_eps=1e-5)),
    Spec("model_float64_eps1e-6_small_embeddings", "YosoModel",
         "base model in float64, small (hidden 16, 1 layer), layer_norm_eps 1e-6, embeddings of std 0.001",
         seed=105, seq=9, float64=True, embedding_std=0.001, config=dict(SMALL_CONFIG, layer_norm_eps=1e-6)),
    Spec("seqcls_type_vocab3_init_range0.5", "YosoForSequenceClassification",
         "single label, 3 labels, 1 layer, type_vocab_size 3 (token types 0, 1, 2), initializer_range 0.5 with the "
         "weights transformers' own init drew", seed=303, seq=9, token_type_ids=True, transformers_init=True,
         config=dict(problem_type="single_label_classification", num_labels=3, num_hidden_layers=1,
                     type_vocab_size=3, initializer_range=0.5)),
]


# ----------------------------------------------------------------------------------------------------------------
# inputs


def make_inputs(spec, config, dtype):
    """All inputs of a case as numpy arrays; the leading shape is (batch,) or (batch, choices)."""
    rng = np.random.default_rng(spec.seed)
    lead = (spec.batch,) if spec.choices is None else (spec.batch, spec.choices)
    rows = int(np.prod(lead))
    n = spec.seq
    lengths = spec.lengths if spec.lengths is not None else (n,) * rows
    assert len(lengths) == rows, spec.name
    mask = (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype(np.int64)  # (rows, n)

    ids = rng.integers(3, config.vocab_size, size=(rows, n))
    ids[:, 0] = BOS_ID
    ids = np.where(mask == 1, ids, PAD_ID).astype(np.int64)
    inputs = {"attention_mask": mask.reshape(lead + (n,))}
    if spec.inputs_embeds:
        inputs["inputs_embeds"] = rng.normal(0.0, 1.0, size=lead + (n, config.hidden_size)).astype(dtype)
    else:
        inputs["input_ids"] = ids.reshape(lead + (n,))
    if spec.token_type_ids and config.type_vocab_size > 2:  # segments 0, 1, 2, ... of random lengths
        splits = np.sort(rng.integers(1, n, size=(rows, config.type_vocab_size - 1)), axis=1)
        types = (np.arange(n)[None, :, None] >= splits[:, None, :]).sum(-1).astype(np.int64) * mask
        inputs["token_type_ids"] = types.reshape(lead + (n,))
    elif spec.token_type_ids:
        split = rng.integers(2, n - 1, size=(rows, 1))
        types = (np.arange(n)[None, :] >= split).astype(np.int64) * mask
        inputs["token_type_ids"] = types.reshape(lead + (n,))
    if spec.position_ids:
        inputs["position_ids"] = rng.integers(0, config.max_position_embeddings + 2, size=lead + (n,)).astype(np.int64)

    if spec.cls == "YosoForMaskedLM":
        labels = rng.integers(3, config.vocab_size, size=(rows, n))
        keep = (rng.random((rows, n)) < 0.5) & (mask == 1)
        keep[:, 1] = True  # at least one labelled position per row
        inputs["labels"] = np.where(keep, labels, -100).astype(np.int64).reshape(lead + (n,))
    elif spec.cls == "YosoForSequenceClassification":
        if config.problem_type == "single_label_classification":
            inputs["labels"] = rng.integers(0, config.num_labels, size=lead).astype(np.int64)
        elif config.problem_type == "multi_label_classification":
            inputs["labels"] = rng.integers(0, 2, size=lead + (config.num_labels,)).astype(dtype)
        else:
            inputs["labels"] = rng.normal(0.0, 1.0, size=lead).astype(dtype)
    elif spec.cls == "YosoForMultipleChoice":
        inputs["labels"] = rng.integers(0, spec.choices, size=(spec.batch,)).astype(np.int64)
    elif spec.cls == "YosoForTokenClassification":
        labels = rng.integers(0, config.num_labels, size=(rows, n))
        labels[rng.random((rows, n)) < 0.25] = -100
        labels[:, 0] = -100
        labels[:, 1] = rng.integers(0, config.num_labels, size=rows)
        inputs["labels"] = labels.astype(np.int64).reshape(lead + (n,))
    elif spec.cls == "YosoForQuestionAnswering":
        start = rng.integers(0, np.array(lengths)).astype(np.int64)
        end = np.minimum(start + rng.integers(0, 3, size=rows), np.array(lengths) - 1).astype(np.int64)
        end[-1] = 100
        if spec.lengths is None:
            start[0] = 100
        inputs["start_positions"], inputs["end_positions"] = start, end
    elif spec.cls == "YosoModel":
        grad = rng.normal(0.0, 1.0, size=lead + (n, config.hidden_size)).astype(dtype)
        # zero on padding, so the gradients depend on real tokens only
        inputs["grad_last_hidden_state"] = grad * mask[..., None].astype(dtype)
    return inputs


def with_extra_padding(spec, inputs):
    """The same inputs with EXTRA_PAD padded positions appended to every sequence."""
    rng = np.random.default_rng(spec.seed + 7)
    fills = {"input_ids": PAD_ID, "attention_mask": 0, "token_type_ids": 0, "position_ids": 2}
    if spec.cls == "YosoForMaskedLM":
        fills["labels"] = -100
    if spec.cls == "YosoForTokenClassification":
        fills["labels"] = 0  # a real label on padding: the mask has to drop it
    out = dict(inputs)
    for key, fill in fills.items():
        if key in inputs:
            value = inputs[key]
            extra = np.full(value.shape[:-1] + (EXTRA_PAD,), fill, dtype=value.dtype)
            out[key] = np.concatenate([value, extra], axis=-1)
    for key in ("inputs_embeds", "grad_last_hidden_state"):
        if key in inputs:
            value = inputs[key]
            extra = rng.normal(0.0, 1.0, size=value.shape[:-2] + (EXTRA_PAD, value.shape[-1])).astype(value.dtype)
            if key == "grad_last_hidden_state":
                extra[...] = 0
            out[key] = np.concatenate([value, extra], axis=-2)
    return out


# ----------------------------------------------------------------------------------------------------------------
# transformers with the corrections for 0/1 masks


@contextlib.contextmanager
def conv_sees_masked_values():
    """Within this block the conv branch of every YosoSelfAttention convolves V * mask01.

    transformers computes conv(V * attention_mask) with the raw mask argument. Given the additive mask (0 real,
    -10000 padding) that is conv(0) on real tokens and conv(-10000 V) on padding: garbage. A 0/1 mask there would
    give conv(V * mask01), which is the masked model. The wrapper recomputes V from the same `value` Linear (so the
    gradient of the value weights is the same sum over both branches) and hands the conv V * mask01, where
    mask01 = (additive == 0). Without a mask argument, or without a conv, nothing changes.
    """
    original = YosoSelfAttention.forward

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        if not self.use_conv or attention_mask is None:
            return original(self, hidden_states, attention_mask, output_attentions)
        batch, n, _ = hidden_states.shape
        mask01 = (attention_mask == 0).to(hidden_states.dtype)
        value = self.value(hidden_states).reshape(batch, n, self.num_attention_heads, self.attention_head_size)
        masked_value = value.transpose(1, 2) * mask01[:, None, :, None]  # (batch, heads, n, head_dim)
        conv = self.conv
        conv.forward = lambda _garbled: nn.Conv2d.forward(conv, masked_value)
        try:
            return original(self, hidden_states, attention_mask, output_attentions)
        finally:
            del conv.forward

    YosoSelfAttention.forward = forward
    try:
        yield
    finally:
        YosoSelfAttention.forward = original


def token_classification_loss(logits, labels, mask01):
    """transformers' YosoForTokenClassification loss for a 0/1 attention mask: cross entropy over the positions with
    mask == 1 (others set to ignore_index -100), mean over the positions that remain."""
    num_labels = logits.shape[-1]
    active = mask01.reshape(-1) == 1
    targets = torch.where(active, labels.reshape(-1), torch.full_like(labels.reshape(-1), -100))
    return nn.CrossEntropyLoss()(logits.reshape(-1, num_labels), targets)


def run(model, spec, inputs, padded):
    """Forward with output_hidden_states, the loss, and the backward. Returns (outputs, grads) as numpy."""
    dtype = next(model.parameters()).dtype
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    kwargs = {k: t[k] for k in ("input_ids", "token_type_ids", "position_ids", "start_positions", "end_positions")
              if k in t}
    if "inputs_embeds" in t:
        kwargs["inputs_embeds"] = t["inputs_embeds"].clone().requires_grad_(True)
    mask01 = t["attention_mask"]
    if padded:
        kwargs["attention_mask"] = (1.0 - mask01.to(dtype)) * -10000.0  # the form transformers' YOSO masks with
    # unpadded: no mask, transformers then uses ones (the same as an all-ones 0/1 mask)
    script_token_loss = spec.cls == "YosoForTokenClassification" and padded
    if "labels" in t and not script_token_loss:
        kwargs["labels"] = t["labels"]

    model.zero_grad(set_to_none=True)
    # only with the additive mask: unpadded runs pass no mask, and transformers then hands the layers a ones
    # mask, which the wrapper's (additive == 0) test would read as "everything padded"
    with conv_sees_masked_values() if padded else contextlib.nullcontext():
        result = model(**kwargs, output_hidden_states=True, return_dict=True)

    outputs = {}
    if spec.cls == "YosoModel":
        outputs["last_hidden_state"] = result.last_hidden_state
        loss = (result.last_hidden_state * t["grad_last_hidden_state"]).sum()
    elif spec.cls == "YosoForQuestionAnswering":
        outputs["start_logits"], outputs["end_logits"] = result.start_logits, result.end_logits
        outputs["loss"] = loss = result.loss
    else:
        outputs["logits"] = result.logits
        loss = token_classification_loss(result.logits, t["labels"], mask01) if script_token_loss else result.loss
        outputs["loss"] = loss
    for i, h in enumerate(result.hidden_states):
        outputs[f"hidden_states_{i}"] = h
    loss.backward()

    grads = {}
    for name, p in model.named_parameters():
        if p.grad is None:  # unused: only the word embeddings, when inputs_embeds replaces input_ids
            assert name.endswith("word_embeddings.weight") and "inputs_embeds" in t, f"{spec.name}: {name} unused"
            grads[name] = torch.zeros_like(p).numpy()
        else:
            grads[name] = p.grad.detach().numpy().copy()
    out = {k: v.detach().numpy().copy() for k, v in outputs.items()}
    if "inputs_embeds" in t:
        out["grad_inputs_embeds"] = kwargs["inputs_embeds"].grad.numpy().copy()
    return out, grads


# ----------------------------------------------------------------------------------------------------------------
# checks of the corrected reference


def assert_close(a, b, what, dtype):
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    if not np.allclose(a, b, **tol):
        raise AssertionError(f"{what}: max abs diff {np.max(np.abs(a - b))}")


def check_padding_invariance(model, spec, inputs, outputs, grads, dtype):
    """Extra padding must change no real-token output and, except for QA (whose loss has no mask), no loss/grad."""
    padded_out, padded_grads = run(model, spec, with_extra_padding(spec, inputs), padded=True)
    n = spec.seq
    mask = inputs["attention_mask"].reshape(-1, n).astype(bool)
    for key, ref in outputs.items():
        if key == "loss" and spec.cls == "YosoForQuestionAnswering":
            continue
        got = padded_out[key]
        if got.shape != ref.shape:  # a token-level output: keep the real tokens of both
            seq_axis = ref.ndim - 1 if key in ("start_logits", "end_logits") else ref.ndim - 2
            width = ref.shape[seq_axis + 1:]
            got = np.take(got, np.arange(n), axis=seq_axis).reshape((-1, n) + width)[mask]
            ref = ref.reshape((-1, n) + width)[mask]
        assert_close(got, ref, f"{spec.name}: {key} with extra padding", dtype)
    if spec.cls != "YosoForQuestionAnswering":
        for key in grads:
            assert_close(padded_grads[key], grads[key], f"{spec.name}: grad {key} with extra padding", dtype)


def check_rows_alone(model, spec, inputs, outputs, dtype):
    """Each padded row, cut to its real length and run alone through unpatched transformers without a mask, gives
    the same encoder hidden states on its real tokens."""
    base = model.base_model
    n = spec.seq
    mask = inputs["attention_mask"].reshape(-1, n)
    flat = {k: torch.from_numpy(inputs[k].reshape(-1, n)) for k in ("input_ids", "token_type_ids", "position_ids")
            if k in inputs}
    for row, length in enumerate(mask.sum(axis=1)):
        kwargs = {k: v[row:row + 1, :length] for k, v in flat.items()}
        with torch.no_grad():
            hidden = base(**kwargs, output_hidden_states=True).hidden_states
        for i, h in enumerate(hidden):
            ref = outputs[f"hidden_states_{i}"].reshape(-1, n, model.config.hidden_size)[row, :length]
            assert_close(h[0].numpy(), ref, f"{spec.name}: row {row} alone, hidden_states_{i}", dtype)


def check_token_loss_matches_transformers(model, spec, inputs, dtype):
    """With a 0/1 mask handed to transformers (which its attention ignores, but its loss uses), the script's token
    classification loss equals transformers' own, on the same logits."""
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        result = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], labels=t["labels"])
        mine = token_classification_loss(result.logits, t["labels"], t["attention_mask"])
    assert_close(mine.numpy(), result.loss.numpy(), f"{spec.name}: script token loss vs transformers", dtype)


def check_reload(folder, spec, inputs, outputs, padded, dtype):
    """from_pretrained(folder) reproduces the stored outputs."""
    cls = getattr(transformers, spec.cls)
    reloaded = cls.from_pretrained(folder, dtype=dtype).eval()
    again, _ = run(reloaded, spec, inputs, padded)
    for key, ref in outputs.items():
        assert_close(again[key], ref, f"{spec.name}: {key} after reload", dtype)


# ----------------------------------------------------------------------------------------------------------------


def build_model(spec):
    config = YosoConfig(**{**BASE_CONFIG, **spec.config})
    torch.manual_seed(spec.seed)
    model = getattr(transformers, spec.cls)(config).eval()
    # Larger-than-default weights so that outputs are far from zero; LayerNorm scales stay near 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if spec.transformers_init:
                break
            if name.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.1)
            elif spec.embedding_std is not None and "embeddings" in name and name.endswith(".weight"):
                p.normal_(0.0, spec.embedding_std)
            else:
                p.normal_(0.0, 0.2)
    if spec.float64:
        model = model.double()
    return model


def make_case(spec):
    model = build_model(spec)
    config = model.config
    dtype = torch.float64 if spec.float64 else torch.float32
    np_dtype = np.float64 if spec.float64 else np.float32
    padded = spec.lengths is not None and min(spec.lengths) < spec.seq
    inputs = make_inputs(spec, config, np_dtype)
    outputs, grads = run(model, spec, inputs, padded)
    for key, value in {**outputs, **grads}.items():
        assert np.all(np.isfinite(value)), f"{spec.name}: {key} not finite"

    notes = []
    if padded:
        notes.append("transformers was given the additive mask (1 - mask) * -10000 (its YOSO attention ignores a "
                     "0/1 mask); attention_mask here is the 0/1 mask the model means")
        notes.append("outputs at padded positions are transformers' own (padded query rows get attention context 0); "
                     "compare real tokens only unless yoso_np mirrors that")
        if config.conv_window is not None:
            notes.append("conv branch computed on value * mask01 (transformers would multiply V by the raw additive "
                         "mask)")
        if spec.cls == "YosoForTokenClassification":
            notes.append("loss computed in the script as transformers does for a 0/1 mask: cross entropy over "
                         "positions with attention_mask == 1 (others ignored), mean over remaining positions")
        if spec.cls == "YosoForQuestionAnswering":
            notes.append("transformers' QA loss has no mask: padded positions take part in the softmax, so the loss "
                         "and gradients depend on padded-position logits")
        check_padding_invariance(model, spec, inputs, outputs, grads, dtype)
        check_rows_alone(model, spec, inputs, outputs, dtype)
        if spec.cls == "YosoForTokenClassification":
            check_token_loss_matches_transformers(model, spec, inputs, dtype)
    else:
        notes.append("no padding: transformers ran with attention_mask=None; the stored mask is all ones")
    if spec.inputs_embeds:
        notes.append("inputs_embeds replace input_ids: the word embeddings are unused and their stored gradient is "
                     "zero (torch leaves it None); grad_inputs_embeds is the gradient of the loss w.r.t. inputs_embeds")
    if spec.cls == "YosoForQuestionAnswering":
        notes.append("start/end positions outside [0, seq_len) are clamped to seq_len and ignored by the loss")
    if spec.cls == "YosoModel":
        notes.append("loss for the gradients is sum(last_hidden_state * grad_last_hidden_state)")
    if spec.cls == "YosoForMaskedLM":
        notes.append("decoder weight tied to the word embeddings (its gradient is included in the embedding's); "
                     "decoder bias tied to cls.predictions.bias")
    notes.append("gradients are transformers' YosoCumulation backward (the YOSO approximation, not autograd of acos)")

    folder = REF_DIR / spec.name
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    with safe_open(folder / "model.safetensors", "np") as f:
        keys = set(f.keys())
    assert keys == set(grads), f"{spec.name}: grads {sorted(set(grads) ^ keys)} differ from model.safetensors"
    save_file(grads, folder / "grads.safetensors")
    np.savez(folder / "reference.npz", **inputs, **outputs)
    case = {
        "class": spec.cls,
        "description": spec.description,
        "notes": notes,
        "dtype": "float64" if spec.float64 else "float32",
        "padded": padded,
        "seed": spec.seed,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (folder / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    check_reload(folder, spec, inputs, outputs, padded, dtype)
    return folder


def check_even_window_crashes():
    """An even conv_window makes Conv2d(padding=w // 2) return n + 1 positions, and transformers fails adding it."""
    config = YosoConfig(**{**BASE_CONFIG, "conv_window": 4})
    model = transformers.YosoModel(config).eval()
    try:
        model(input_ids=torch.tensor([[0, 5, 6, 7, 8]]))
    except RuntimeError as error:
        return str(error)
    raise AssertionError("an even conv_window ran; add a case for it")


# ----------------------------------------------------------------------------------------------------------------
# activations and optimizer trajectories (tests/fixtures/activations.npz, tests/fixtures/optimizer.npz)


def activation_inputs():
    """A 0.1 grid over [-12, 12] and the points where some activation changes branch or threshold: 0, tiny values
    (xielu's eps -1e-6), hardswish's +-3, relu6's 6, gelu_10's 10, softplus' 20, and large magnitudes."""
    special = [1e-7, 5e-7, 1e-6, 2e-6, 1e-3, 0.5, 2.999, 3.001, 5.999, 6.001, 9.999, 10.001, 19.5, 19.999, 20.001,
               20.5, 30.0, 50.0, 88.0, 89.0, 100.0, 1e3, 1e4]
    x = np.concatenate([np.linspace(-12.0, 12.0, 241), special, -np.array(special)])
    return np.unique(x)


def make_activations():
    from transformers.activations import ACT2CLS, ACT2FN

    x = activation_inputs()
    arrays = {"x": x}
    for name in sorted(ACT2CLS):
        module = ACT2FN[name]
        with torch.no_grad():
            arrays[f"{name}/float32"] = module(torch.from_numpy(x.astype(np.float32))).numpy()
            # prelu's float32 weight does not promote a float64 input
            module64 = module.double() if name == "prelu" else module
            arrays[f"{name}/float64"] = module64(torch.from_numpy(x.copy())).numpy()
        assert arrays[f"{name}/float32"].dtype == np.float32 and arrays[f"{name}/float64"].dtype == np.float64, name
    arrays["versions"] = np.array(f"transformers {transformers.__version__}, torch {torch.__version__}")
    path = REF_DIR.parent / "activations.npz"
    np.savez_compressed(path, **arrays)
    return path


OPTIMIZER_STEPS = 6
# checkpoint-like names: weight decay applies to the first and last only (transformers' Trainer groups)
OPTIMIZER_PARAMS = {"yoso.encoder.layer.0.attention.self.query.weight": (4, 3),
                    "yoso.encoder.layer.0.attention.self.query.bias": (4,),
                    "yoso.embeddings.LayerNorm.weight": (3,), "yoso.embeddings.LayerNorm.bias": (3,),
                    "classifier.weight": (2, 3)}
GRAD_SCALES = (0.2, 1.5, 0.3, 2.0, 0.1, 1.0)  # global norms of about 0.9 to 9: clipping acts on some steps only
OPTIMIZER_CASES = {
    "plain_constant_warmup": dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, max_grad_norm=None,
                                  schedule="constant", warmup_steps=2),
    "momentum_decay_linear_warmup_clip": dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01,
                                              max_grad_norm=1.0, schedule="linear", warmup_steps=2),
    "nesterov_decay_linear_clip": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, max_grad_norm=2.0,
                                       schedule="linear", warmup_steps=0),
    "momentum_decay_constant": dict(lr=0.2, momentum=0.5, nesterov=False, weight_decay=0.05, max_grad_norm=100.0,
                                    schedule="constant", warmup_steps=0),
}


def trajectory(settings, seed):
    """torch.optim.SGD over two parameter groups (decay / no decay), clip_grad_norm_ and transformers' schedule, for
    OPTIMIZER_STEPS steps with fixed random gradients. Returns arrays keyed '<what>/<param name>'."""
    rng = np.random.default_rng(seed)
    initial = {k: rng.normal(0.0, 1.0, s).astype(np.float32) for k, s in OPTIMIZER_PARAMS.items()}
    grads = {k: np.stack([scale * rng.normal(0.0, 1.0, s) for scale in GRAD_SCALES]).astype(np.float32)
             for k, s in OPTIMIZER_PARAMS.items()}
    params = {k: nn.Parameter(torch.tensor(v)) for k, v in initial.items()}
    no_decay = [k for k in params if k.endswith("bias") or "LayerNorm.weight" in k]
    groups = [{"params": [p for k, p in params.items() if k not in no_decay], "weight_decay": settings["weight_decay"]},
              {"params": [params[k] for k in no_decay], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=settings["lr"], momentum=settings["momentum"], nesterov=settings["nesterov"])
    if settings["schedule"] == "linear":
        scheduler = transformers.get_linear_schedule_with_warmup(opt, settings["warmup_steps"], OPTIMIZER_STEPS)
    else:
        scheduler = transformers.get_constant_schedule_with_warmup(opt, settings["warmup_steps"])
    weights = {k: [] for k in params}
    norms, lrs = [], []
    for step in range(OPTIMIZER_STEPS):
        for k, p in params.items():
            p.grad = torch.tensor(grads[k][step])
        if settings["max_grad_norm"]:
            norm = nn.utils.clip_grad_norm_(list(params.values()), settings["max_grad_norm"])
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params.values()]))
        norms.append(float(norm))
        lrs.append(opt.param_groups[0]["lr"])
        assert all(group["lr"] == lrs[-1] for group in opt.param_groups)
        opt.step()
        scheduler.step()
        for k, p in params.items():
            weights[k].append(p.detach().numpy().copy())
    out = {"settings": np.array(json.dumps({**settings, "steps": OPTIMIZER_STEPS, "no_decay": no_decay})),
           "grad_norm": np.array(norms), "lr": np.array(lrs)}
    for k in params:
        out[f"initial/{k}"], out[f"grads/{k}"] = initial[k], grads[k]
        out[f"weights/{k}"] = np.stack(weights[k])
        if settings["momentum"]:
            out[f"momentum/{k}"] = opt.state[params[k]]["momentum_buffer"].numpy().copy()
    return out


def make_optimizer():
    arrays = {"versions": np.array(f"transformers {transformers.__version__}, torch {torch.__version__}")}
    for i, (name, settings) in enumerate(OPTIMIZER_CASES.items()):
        arrays.update({f"{name}/{k}": v for k, v in trajectory(settings, seed=700 + i).items()})
    path = REF_DIR.parent / "optimizer.npz"
    np.savez_compressed(path, **arrays)
    return path


def main(argv):
    """No arguments: every fixture anew. Otherwise only the named cases, and 'activations' / 'optimizer'."""
    torch.set_num_threads(1)
    names = set(argv) or {spec.name for spec in CASES} | {"activations", "optimizer"}
    unknown = names - {spec.name for spec in CASES} - {"activations", "optimizer"}
    if unknown:
        raise SystemExit(f"unknown fixtures {sorted(unknown)}")
    if not argv and REF_DIR.exists():
        shutil.rmtree(REF_DIR)
    REF_DIR.mkdir(parents=True, exist_ok=True)
    for spec in CASES:
        if spec.name in names:
            if (REF_DIR / spec.name).exists():
                shutil.rmtree(REF_DIR / spec.name)
            folder = make_case(spec)
            size = sum(p.stat().st_size for p in folder.iterdir())
            print(f"{spec.name:40s} {spec.cls:32s} {size / 1024:7.1f} KiB")
    for name, make in (("activations", make_activations), ("optimizer", make_optimizer)):
        if name in names:
            path = make()
            print(f"{path.name:73s} {path.stat().st_size / 1024:7.1f} KiB")
    if not argv:
        print("even conv_window:", check_even_window_crashes())
    total = sum(p.stat().st_size for p in REF_DIR.parent.rglob("*") if p.is_file())
    print(f"tests/fixtures in total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
