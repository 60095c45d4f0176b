"""transformers-style pipelines: text in, predictions out.

    fill = pipeline("fill-mask", model="uw-madison/yoso-4096")
    fill("Paris is the <mask> of France.")   # [{"score", "token", "token_str", "sequence"}, ...] best first
    embed = pipeline("feature-extraction", model="uw-madison/yoso-4096")
    embed("Hello world")                      # last hidden state as nested lists, shape (1, n, hidden)

The outputs follow transformers' FillMaskPipeline and FeatureExtractionPipeline, except that a list of texts
always gives a list of results (transformers returns the bare result for a one-element list).
"""
import os
import warnings

import numpy as np

from . import checkpoint, models
from .backend import to_numpy
from .config import CONFIG_NAME, YosoConfig
from .models import YosoForMaskedLM, YosoModel, YosoPreTrainedModel
from .tokenizer import Tokenizer

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token")
MODEL_CLASSES = {name: getattr(models, name) for name in ("YosoModel", "YosoForMaskedLM", "YosoForMultipleChoice",
                                                           "YosoForQuestionAnswering", "YosoForSequenceClassification",
                                                           "YosoForTokenClassification")}


class Pipeline:
    """A model, its tokenizer and the length limit they share; subclasses define __call__."""

    task = None
    model_class = None

    def __init__(self, model, tokenizer):
        if not isinstance(model, YosoPreTrainedModel):
            raise TypeError(f"model must be a yoso_np model, got {type(model).__name__}")
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a yoso_np.Tokenizer, got {type(tokenizer).__name__}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size} (config.vocab_size): they do not belong together")
        self.model, self.tokenizer = model, tokenizer

    @property
    def max_length(self):
        """Longest input in tokens: the model's position embeddings, or the tokenizer's limit if lower."""
        limits = [self.model.config.max_position_embeddings, self.tokenizer.model_max_length]
        return min(n for n in limits if n is not None)

    def encode(self, texts):
        """Padded batch of NumPy int64 inputs; a text longer than max_length raises ValueError."""
        return self.tokenizer(texts, padding=True, truncation=False, max_length=self.max_length)

    def __repr__(self):
        return f"{type(self).__name__}(model={type(self.model).__name__}, device={self.model.device!r})"


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    model_class = YosoForMaskedLM

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        if not isinstance(model, YosoForMaskedLM):
            raise TypeError(f"fill-mask needs a YosoForMaskedLM, got {type(model).__name__}")
        if tokenizer.mask_token_id is None:
            raise ValueError("fill-mask needs a tokenizer with a mask_token; this one has none")

    def target_ids(self, targets):
        """Vocabulary ids of the target words; a word outside the vocabulary stands for its first token."""
        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise TypeError(f"targets must be a str or a list of str, got {targets!r}")
        vocab, ids = self.tokenizer.get_vocab(), []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer.encode(target, add_special_tokens=False)
                if not pieces:
                    warnings.warn(f"target {target!r} gives no token; ignored", stacklevel=3)
                    continue
                id_ = pieces[0]
                warnings.warn(f"target {target!r} is not in the vocabulary; using its first token "
                              f"{self.tokenizer.convert_ids_to_tokens(id_)!r}", stacklevel=3)
            if id_ not in ids:
                ids.append(id_)
        if not ids:
            raise ValueError(f"targets must name at least one token, got {targets!r}")
        return np.array(ids, dtype=np.int64)

    def __call__(self, inputs, top_k=5, targets=None):
        """Predictions for each mask token of a text (or of each text of a list).

        One text with one mask -> a list of top_k dicts {"score", "token", "token_str", "sequence"}, best first;
        several masks -> one such list per mask; a list of texts -> a list of those results.
        """
        texts = [inputs] if isinstance(inputs, str) else inputs
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        target_ids = None if targets is None else self.target_ids(targets)
        batch = self.encode(texts)
        mask_id = self.tokenizer.mask_token_id
        for i, row in enumerate(batch["input_ids"]):
            if not (row == mask_id).any():
                raise ValueError(f"no mask token {self.tokenizer.mask_token!r} in the input "
                                 f"{'text' if isinstance(inputs, str) else f'texts[{i}]'}: {texts[i]!r}")
        logits = to_numpy(self.model(**batch).logits)  # (batch, n, vocab)

        results = []
        for row, length, row_logits in zip(batch["input_ids"], batch["attention_mask"].sum(axis=1), logits):
            ids = row[:length]
            results.append(self._fill(ids, row_logits[:length], top_k, target_ids))
        return results[0] if isinstance(inputs, str) else results

    def _fill(self, ids, logits, top_k, target_ids):
        positions = np.flatnonzero(ids == self.tokenizer.mask_token_id)
        scores = logits[positions].astype(np.float64)  # (masks, vocab)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        candidates = np.arange(scores.shape[-1]) if target_ids is None else target_ids
        scores = scores[:, candidates]
        single = len(positions) == 1
        per_mask = []
        for position, mask_scores in zip(positions, scores):
            order = np.argsort(-mask_scores, kind="stable")[:top_k]
            row = []
            for j in order:
                token = int(candidates[j])
                filled = ids.copy()
                filled[position] = token
                # with several masks the other masks stay visible in the sequence, as in transformers
                sequence = self.tokenizer.decode(filled, skip_special_tokens=single)
                row.append({"score": float(mask_scores[j]), "token": token,
                            "token_str": self.tokenizer.decode([token]), "sequence": sequence})
            per_mask.append(row)
        return per_mask[0] if single else per_mask


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    model_class = None  # any Yoso* checkpoint: its base model gives the features

    def __init__(self, model, tokenizer):
        if isinstance(model, YosoPreTrainedModel) and not isinstance(model, YosoModel):
            model = YosoModel(model.config, model.base_weights)  # the same arrays, without the head
        super().__init__(model, tokenizer)

    def __call__(self, inputs, return_tensors=False):
        """Last hidden state of each text, (1, n, hidden): nested lists, or NumPy arrays with return_tensors."""
        texts = [inputs] if isinstance(inputs, str) else inputs
        batch = self.encode(texts)
        hidden = to_numpy(self.model(**batch).last_hidden_state)  # (batch, n, hidden)
        results = [h[None, :length] for h, length in zip(hidden, batch["attention_mask"].sum(axis=1))]
        if not return_tensors:
            results = [h.tolist() for h in results]
        return results[0] if isinstance(inputs, str) else results


def checkpoint_class(path_or_repo_id, **hub):
    """The yoso_np class named by config.json's "architectures" (YosoModel when it names none we know)."""
    config = YosoConfig.from_json_file(checkpoint.resolve_file(path_or_repo_id, CONFIG_NAME, **hub))
    for name in config.extra.get("architectures") or ():
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    return YosoModel


TASKS = {cls.task: cls for cls in (FillMaskPipeline, FeatureExtractionPipeline)}


def pipeline(task, model, tokenizer=None, device=None, **model_kwargs):
    """A ready pipeline for ``task`` ("fill-mask" or "feature-extraction").

    ``model`` is a local folder or hub repo id (its weights and tokenizer are loaded; ``model_kwargs`` go to
    from_pretrained: revision, cache_dir, local_files_only, token, dtype, config overrides) or a yoso_np model
    object, which then needs ``tokenizer`` (a Tokenizer, or a folder / repo id to load one from).
    ``device`` ("cpu" or "cuda") is where the model runs; None keeps a model object where it is (loaded models
    go to "cpu").
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    cls = TASKS[task]
    hub = {k: model_kwargs[k] for k in HUB_KEYS if k in model_kwargs}
    if isinstance(model, (str, os.PathLike)):
        # feature-extraction loads the checkpoint's own class and drops its head (FeatureExtractionPipeline)
        model_class = cls.model_class or checkpoint_class(model, **hub)
        loaded = model_class.from_pretrained(model, device=device or "cpu", **model_kwargs)
        if tokenizer is None:
            tokenizer = model
        model = loaded
    elif isinstance(model, YosoPreTrainedModel):
        if model_kwargs:
            raise ValueError(f"keyword arguments {sorted(model_kwargs)} only apply when model is a folder or "
                             f"repo id, not a model object")
        if tokenizer is None:
            raise ValueError("a model object needs tokenizer= (a yoso_np.Tokenizer or a folder / repo id)")
        if device is not None:
            model.to(device)
    else:
        raise TypeError(f"model must be a folder, a hub repo id or a yoso_np model, got {type(model).__name__}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.from_pretrained(tokenizer, **hub)
    return cls(model, tokenizer)
