"""transformers-style pipelines: text in, predictions out.

    classify = pipeline("text-classification", model="run1")     # a fine-tuned YosoForSequenceClassification
    classify(["good", "bad"], batch_size=32)      # [{"label", "score"}, ...] in input order
    ner = pipeline("ner", model="run2", aggregation_strategy="simple")
    qa = pipeline("question-answering", model="run3")
    qa(question="Where?", context="...")          # {"score", "start", "end", "answer"}
    embed = pipeline("feature-extraction", model="uw-madison/yoso-4096")
    embed("Hello world", pooling="mean", normalize=True)   # one unit vector
    fill = pipeline("fill-mask", model="uw-madison/yoso-4096")

Outputs and arguments follow transformers' pipelines of the same names (question-answering: transformers 4.x's,
which 5.x removed), except that a list of inputs always gives a list of results (transformers returns the bare
result for a one-element list). Every pipeline takes a list of any length: Pipeline.run sorts its token rows by
length into batches of ``batch_size``, so each batch pads only to its own longest row, and gives the results
back in input order.
"""
import os
import warnings

import numpy as np

from . import checkpoint, models
from .backend import array_module, to_numpy
from .layers import heads, sub
from .config import CONFIG_NAME, YosoConfig
from .models import (YosoForMaskedLM, YosoForQuestionAnswering, YosoForSequenceClassification,
                     YosoForTokenClassification, YosoModel, YosoPreTrainedModel)
from .tokenizer import Tokenizer

HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token")
MODEL_CLASSES = {name: getattr(models, name) for name in ("YosoModel", "YosoForMaskedLM", "YosoForMultipleChoice",
                                                           "YosoForQuestionAnswering", "YosoForSequenceClassification",
                                                           "YosoForTokenClassification")}
DEFAULT_BATCH_SIZE = 16
_UNSET = object()  # text-classification tells "top_k not given" (one dict per text) from top_k=None (all labels)


class InputTooLong(ValueError):
    """An input with more tokens than the model takes: ``index`` is its place in the call's list, ``detail``
    what is too long (for messages that name the row another way, as `yoso-np predict` does)."""

    def __init__(self, index, detail, hint):
        super().__init__(f"text {index} {detail}; {hint}")
        self.index, self.detail = index, detail


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class Pipeline:
    """A model, its tokenizer and the length limit they share; subclasses define __call__ and forward."""

    task = None
    model_class = None
    sort_by_length = True  # run()'s default; False keeps the input order in the batches (to measure sorting)

    def __init__(self, model, tokenizer, *, batch_size=DEFAULT_BATCH_SIZE):
        if not isinstance(model, YosoPreTrainedModel):
            raise TypeError(f"model must be a yoso_np model, got {type(model).__name__}")
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a yoso_np.Tokenizer, got {type(tokenizer).__name__}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size} (config.vocab_size): they do not belong together")
        if self.model_class is not None and not isinstance(model, self.model_class):
            raise TypeError(f"{self.task} needs a {self.model_class.__name__}, got {type(model).__name__}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = _positive_int(batch_size, "batch_size")

    @property
    def max_length(self):
        """Longest input in tokens: the model's position embeddings, or the tokenizer's limit if lower."""
        limits = [self.model.config.max_position_embeddings, self.tokenizer.model_max_length]
        return min(n for n in limits if n is not None)

    def tokenize(self, texts, pairs=None, *, truncation=False, max_length=None):
        """Unpadded encodings of texts (and their pairs, entries None where a text has none), one per text.

        A text longer than max_length (default: the model's limit) is cut with truncation=True and refused with
        ValueError naming it otherwise.
        """
        limit = self.max_length if max_length is None else min(_positive_int(max_length, "max_length"),
                                                                self.max_length)
        if not texts:
            return []
        pairs = [None] * len(texts) if pairs is None else pairs
        encodings = [None] * len(texts)
        single = [i for i, p in enumerate(pairs) if p is None]
        paired = [i for i, p in enumerate(pairs) if p is not None]
        cut = "longest_first" if truncation else False
        for rows, second in ((single, None), (paired, [pairs[i] for i in paired])):
            if rows:
                out = self.tokenizer.encodings([texts[i] for i in rows], second, truncation=cut, max_length=limit)
                for i, e in zip(rows, out):
                    encodings[i] = e
        for i, e in enumerate(encodings):
            if len(e.ids) > limit:
                raise InputTooLong(i, f"has {len(e.ids)} tokens, more than the limit of {limit}",
                                   "pass truncation=True to cut it")
        return encodings

    def run(self, encodings, *, batch_size=None, sort=None, **options):
        """The model's outputs for each encoding, in input order (see forward).

        The rows are sorted by length (stable) and cut into batches of batch_size, so each batch pads only to its
        own longest row; sort=False keeps the input order in the batches (default: self.sort_by_length).
        """
        batch_size = self.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
        sort = self.sort_by_length if sort is None else sort
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        order = np.argsort(lengths, kind="stable") if sort else np.arange(len(encodings))
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None and len(set(lengths.tolist())) > 1:
            raise ValueError("batching texts of different lengths needs a pad_token, and this tokenizer has none")
        results = [None] * len(encodings)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.full((len(rows), width), pad_id or 0, dtype=np.int64)
            attention_mask = np.zeros((len(rows), width), dtype=np.int64)
            token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
            for b, i in enumerate(rows):
                n = lengths[i]
                input_ids[b, :n] = encodings[i].ids
                attention_mask[b, :n] = 1
                token_type_ids[b, :n] = encodings[i].type_ids
            if not token_type_ids.any():
                token_type_ids = None
            out = self.forward({"input_ids": input_ids, "attention_mask": attention_mask,
                                "token_type_ids": token_type_ids}, lengths[rows], **options)
            for i, row in zip(rows, out):
                results[i] = row
        return results

    def forward(self, batch, lengths, **options):
        """One padded batch -> one result per row (NumPy arrays cut to the row's length where per token);
        options: those given to run."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(model={type(self.model).__name__}, device={self.model.device!r})"


def _inputs_list(inputs, name, kinds=(str,)):
    """(list of inputs, whether one bare input came); a list may be empty."""
    if isinstance(inputs, kinds):
        return [inputs], True
    if isinstance(inputs, (list, tuple)):
        bad = next((i for i, x in enumerate(inputs) if not isinstance(x, kinds)), None)
        if bad is None:
            return list(inputs), False
        raise TypeError(f"{name}[{bad}] must be {' or '.join(k.__name__ for k in kinds)}, "
                        f"got {type(inputs[bad]).__name__}")
    raise TypeError(f"{name} must be {' or '.join(k.__name__ for k in kinds)} or a list of them, "
                    f"got {type(inputs).__name__}")


# ------------------------------------------------------------------------------------------------ fill-mask
class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    model_class = YosoForMaskedLM

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
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

    def __call__(self, inputs, top_k=5, targets=None, *, batch_size=None, truncation=False, max_length=None):
        """Predictions for each mask token of a text (or of each text of a list).

        One text with one mask -> a list of top_k dicts {"score", "token", "token_str", "sequence"}, best first;
        several masks -> one such list per mask; a list of texts -> a list of those results.
        """
        texts, single = _inputs_list(inputs, "inputs")
        top_k = _positive_int(top_k, "top_k")
        target_ids = None if targets is None else self.target_ids(targets)
        encodings = self.tokenize(texts, truncation=truncation, max_length=max_length)
        mask_id = self.tokenizer.mask_token_id
        for i, e in enumerate(encodings):
            if mask_id not in e.ids:
                raise ValueError(f"no mask token {self.tokenizer.mask_token!r} in the input "
                                 f"{'text' if single else f'texts[{i}]'}: {texts[i]!r}")
        probs = self.run(encodings, batch_size=batch_size)
        results = [self._fill(np.array(e.ids), p, top_k, target_ids) for e, p in zip(encodings, probs)]
        return results[0] if single else results

    def forward(self, batch, lengths):
        # the MLM head on the mask tokens alone: its decoder (hidden x vocab) is the largest product of a short
        # text (a 16-token sentence on the base model: 1.2 of 3.9 GFLOP) and the other rows' logits are never read
        model = self.model
        hidden = YosoModel(model.config, model.base_weights)(**batch).last_hidden_state  # (batch, n, hidden)
        rows, cols = np.nonzero(batch["input_ids"] == self.tokenizer.mask_token_id)
        xp = array_module(hidden)
        masked = hidden[xp.asarray(rows), xp.asarray(cols)][None]  # (1, masks, hidden)
        logits, _ = heads.mlm_head(sub(model.weights, "cls.predictions."), masked,
                                   model.weights["yoso.embeddings.word_embeddings.weight"], model.config)
        probs = _softmax(to_numpy(logits[0]))
        return np.split(probs, np.cumsum(np.bincount(rows, minlength=len(lengths)))[:-1])

    def _fill(self, ids, scores, top_k, target_ids):
        positions = np.flatnonzero(ids == self.tokenizer.mask_token_id)
        candidates = np.arange(scores.shape[-1]) if target_ids is None else target_ids
        scores = scores[:, candidates]  # (masks, candidates)
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


# ------------------------------------------------------------------------------------------------ feature-extraction
POOLINGS = (None, "mean", "cls")


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    model_class = None  # any Yoso* checkpoint: its base model gives the features

    def __init__(self, model, tokenizer, **kwargs):
        if isinstance(model, YosoPreTrainedModel) and not isinstance(model, YosoModel):
            model = YosoModel(model.config, model.base_weights)  # the same arrays, without the head
        super().__init__(model, tokenizer, **kwargs)

    def __call__(self, inputs, return_tensors=False, *, pooling=None, normalize=False, batch_size=None,
                 truncation=False, max_length=None):
        """Features of each text: the last hidden state, (1, n, hidden); with pooling="mean" (over the real
        tokens, special ones included) or "cls" (the first token) one vector (hidden,); normalize=True scales
        each vector to unit L2 norm. Nested lists, or NumPy arrays with return_tensors."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        texts, single = _inputs_list(inputs, "inputs")
        results = self.run(self.tokenize(texts, truncation=truncation, max_length=max_length),
                           batch_size=batch_size, pooling=pooling, normalize=bool(normalize))
        if not return_tensors:
            results = [r.tolist() for r in results]
        return results[0] if single else results

    def forward(self, batch, lengths, pooling=None, normalize=False):
        hidden = to_numpy(self.model(**batch).last_hidden_state)  # (batch, n, hidden)
        out = []
        for h, n in zip(hidden, lengths):
            h = h[:n]
            v = h.mean(axis=0) if pooling == "mean" else h[0] if pooling == "cls" else h[None]
            if normalize:
                norm = np.linalg.norm(v, axis=-1, keepdims=True)
                v = v / np.maximum(norm, np.finfo(v.dtype).tiny)
            out.append(v)
        return out


# ------------------------------------------------------------------------------------------------ text-classification
FUNCTIONS = {"softmax": _softmax, "sigmoid": _sigmoid, "none": lambda x: np.asarray(x, dtype=np.float64)}


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    model_class = YosoForSequenceClassification

    def default_function(self):
        """transformers' choice: none for regression, sigmoid for multi-label or one label, else softmax."""
        config = self.model.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def __call__(self, inputs, top_k=_UNSET, function_to_apply=None, *, batch_size=None, truncation=False,
                 max_length=None):
        """Labels and scores of a text, a {"text", "text_pair"} dict, or a list of them.

        Without top_k: {"label", "score"} of the best label per input (a bare text gives a one-element list, as in
        transformers); with top_k (None = all labels): a list of such dicts per input, best first.
        """
        items, single = _inputs_list(inputs, "inputs", (str, dict))
        legacy = top_k is _UNSET
        if not legacy and top_k is not None:
            top_k = _positive_int(top_k, "top_k")
        name = self.default_function() if function_to_apply is None else str(function_to_apply).lower()
        if name not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {sorted(FUNCTIONS)}, got {function_to_apply!r}")
        texts, pairs = [], []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if "text" not in item or set(item) - {"text", "text_pair"}:
                    raise ValueError(f"inputs[{i}] must be a dict with a 'text' and optionally a 'text_pair', "
                                     f"got keys {sorted(item)}")
                texts.append(item["text"])
                pairs.append(item.get("text_pair"))
            else:
                texts.append(item)
                pairs.append(None)
        for i, (t, p) in enumerate(zip(texts, pairs)):
            for value, what in ((t, "text"), (p, "text_pair")):
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"inputs[{i}]: {what} must be a str, got {type(value).__name__}")
        logits = self.run(self.tokenize(texts, pairs, truncation=truncation, max_length=max_length),
                          batch_size=batch_size)
        id2label = self.model.config.id2label
        results = []
        for row in logits:
            scores = FUNCTIONS[name](row)
            if legacy:
                best = int(scores.argmax())
                results.append({"label": id2label[best], "score": float(scores[best])})
                continue
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append([{"label": id2label[int(j)], "score": float(scores[j])} for j in order])
        if single:
            return [results[0]] if legacy and isinstance(inputs, str) else results[0]
        return results

    def forward(self, batch, lengths):
        return list(to_numpy(self.model(**batch).logits))


# ------------------------------------------------------------------------------------------------ token-classification
AGGREGATIONS = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline(Pipeline):
    """Entities as transformers' TokenClassificationPipeline finds them (gather, aggregate words, group)."""

    task = "token-classification"
    model_class = YosoForTokenClassification

    def __init__(self, model, tokenizer, *, aggregation_strategy="none", ignore_labels=None, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.aggregation_strategy = self._strategy(aggregation_strategy)
        self.ignore_labels = ignore_labels

    @staticmethod
    def _strategy(value):
        name = str(getattr(value, "value", value)).lower()
        if name not in AGGREGATIONS:
            raise ValueError(f"aggregation_strategy must be one of {AGGREGATIONS}, got {value!r}")
        return name

    def __call__(self, inputs, *, aggregation_strategy=None, ignore_labels=None, batch_size=None, truncation=False,
                 max_length=None):
        """The entities of a text (a list of dicts), or of each text of a list."""
        texts, single = _inputs_list(inputs, "inputs")
        strategy = self.aggregation_strategy if aggregation_strategy is None else self._strategy(aggregation_strategy)
        ignore = ignore_labels if ignore_labels is not None else self.ignore_labels
        ignore = ["O"] if ignore is None else list(ignore)
        encodings = self.tokenize(texts, truncation=truncation, max_length=max_length)
        logits = self.run(encodings, batch_size=batch_size)
        results = []
        for text, e, row in zip(texts, encodings, logits):
            pre = self.gather(text, e, _softmax(row))
            entities = self.aggregate(pre, strategy)
            results.append([x for x in entities
                            if x.get("entity") not in ignore and x.get("entity_group") not in ignore])
        return results[0] if single else results

    def forward(self, batch, lengths):
        logits = to_numpy(self.model(**batch).logits)  # (batch, n, labels)
        return [row[:n] for row, n in zip(logits, lengths)]

    def gather(self, text, encoding, scores):
        """One entry per non-special token: its token string, scores, character span and whether it continues
        the word before it (by the subword prefix where the tokenizer has one, else by the spaces around it)."""
        prefix = getattr(self.tokenizer.backend.model, "continuing_subword_prefix", None)
        unk = self.tokenizer.unk_token_id
        pre = []
        for index, (id_, special, (start, end)) in enumerate(zip(encoding.ids, encoding.special_tokens_mask,
                                                                 encoding.offsets)):
            if special:
                continue
            word = self.tokenizer.convert_ids_to_tokens(id_)
            if prefix:
                is_subword = len(word) != len(text[start:end])
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if id_ == unk:
                word, is_subword = text[start:end], False
            pre.append({"word": word, "scores": scores[index], "start": start, "end": end, "index": index,
                        "is_subword": is_subword})
        return pre

    def aggregate(self, pre, strategy):
        id2label = self.model.config.id2label
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": id2label[best], "score": float(p["scores"][best]), "index": p["index"],
                                 "word": p["word"], "start": p["start"], "end": p["end"]})
            if strategy == "none":
                return entities
        else:
            words, group = [], []
            for p in pre:
                if group and not p["is_subword"]:
                    words.append(self.aggregate_word(group, strategy))
                    group = []
                group.append(p)
            if group:
                words.append(self.aggregate_word(group, strategy))
            entities = words
        return self.group_entities(entities)

    def aggregate_word(self, tokens, strategy):
        """One entity for the tokens of one word: the first token's label, the most confident token's, or the
        label of the averaged scores."""
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": self.model.config.id2label[best], "score": float(scores[best]),
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    @staticmethod
    def _tag(label):
        """("B" or "I", type): B-/I- prefixes split off; a label without one continues (I)."""
        if label.startswith(("B-", "I-")):
            return label[0], label[2:]
        return "I", label

    def group_entities(self, entities):
        """Adjacent entities of one type (a B- label starts a new group) become one {"entity_group", ...}."""
        groups, current = [], []
        for entity in entities:
            bi, tag = self._tag(entity["entity"])
            if current and not (tag == self._tag(current[-1]["entity"])[1] and bi != "B"):
                groups.append(self._group(current))
                current = []
            current.append(entity)
        if current:
            groups.append(self._group(current))
        return groups

    def _group(self, entities):
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in entities])),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


# ------------------------------------------------------------------------------------------------ question-answering
class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA as transformers 4.x computed it: the context cut into windows of max_seq_len tokens that
    overlap by doc_stride, softmax of the start and end logits over each window's context tokens (and <s>),
    the best spans start <= end < start + max_answer_len scored p_start * p_end, character spans widened to
    whole words, equal answers from several windows merged with their scores summed."""

    task = "question-answering"
    model_class = YosoForQuestionAnswering

    def __call__(self, inputs=None, *, question=None, context=None, top_k=1, doc_stride=None, max_answer_len=15,
                 max_seq_len=None, handle_impossible_answer=False, align_to_words=True, batch_size=None):
        """{"score", "start", "end", "answer"} (a list of top_k of them when top_k > 1) for a question and its
        context, given as question=/context= (strings, or lists of equal length) or as {"question", "context"}
        dicts; a list of examples gives a list of results."""
        examples, single = self._examples(inputs, question, context)
        top_k = _positive_int(top_k, "top_k")
        max_answer_len = _positive_int(max_answer_len, "max_answer_len")
        max_seq_len, doc_stride = self.windows(max_seq_len, doc_stride)
        self.check_questions([q for q, _ in examples], max_seq_len, doc_stride)
        encodings = self.tokenizer.encodings([q for q, _ in examples], [c for _, c in examples],
                                             truncation="only_second", max_length=max_seq_len, stride=doc_stride)
        windows, owner = [], []
        for i, e in enumerate(encodings):
            for w in [e, *e.overflowing]:
                windows.append(w)
                owner.append(i)
        outputs = self.run(windows, batch_size=batch_size)
        per_example = [[] for _ in examples]
        for i, w, out in zip(owner, windows, outputs):
            per_example[i].append((w, out))
        results = [self._answers(context, spans, top_k, max_answer_len, handle_impossible_answer, align_to_words)
                   for (_, context), spans in zip(examples, per_example)]
        return results[0] if single else results

    def windows(self, max_seq_len=None, doc_stride=None):
        """(max_seq_len, doc_stride), checked, with transformers' defaults: min(384, the model's limit) tokens a
        window, windows overlapping by min(max_seq_len // 2, 128) tokens."""
        max_seq_len = min(self.max_length, 384) if max_seq_len is None else _positive_int(max_seq_len, "max_seq_len")
        doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else int(doc_stride)
        if doc_stride < 0 or doc_stride > max_seq_len:
            raise ValueError(f"doc_stride must be in [0, max_seq_len={max_seq_len}], got {doc_stride}")
        if max_seq_len > self.max_length:
            raise ValueError(f"max_seq_len must be at most the model's limit of {self.max_length}, got {max_seq_len}")
        return max_seq_len, doc_stride

    def check_questions(self, questions, max_seq_len, doc_stride):
        """InputTooLong for a question that leaves the context no more than doc_stride tokens of a window (the
        windows could not advance through the context)."""
        room = max_seq_len - self.tokenizer.backend.num_special_tokens_to_add(True)
        for i, q in enumerate(self.tokenizer.encodings(questions, add_special_tokens=False) if questions else []):
            if room - len(q.ids) <= doc_stride:
                raise InputTooLong(i, f"has a question of {len(q.ids)} tokens, which leaves {room - len(q.ids)} "
                                      f"of the {max_seq_len}-token window to the context, not more than "
                                      f"doc_stride={doc_stride}", "shorten it, or raise max_seq_len")

    @staticmethod
    def _examples(inputs, question, context):
        if inputs is not None and (question is not None or context is not None):
            raise ValueError("pass the examples either as inputs or as question=/context=, not both")
        if inputs is None:
            if question is None or context is None:
                raise ValueError("question-answering needs question= and context= (or {'question', 'context'} "
                                 "dicts)")
            if isinstance(question, str) and isinstance(context, str):
                inputs = {"question": question, "context": context}
            else:
                questions, _ = _inputs_list(question, "question")
                contexts, _ = _inputs_list(context, "context")
                if len(contexts) == 1 and isinstance(context, str):
                    contexts = contexts * len(questions)
                if len(questions) != len(contexts):
                    raise ValueError(f"question and context must have the same length, got {len(questions)} and "
                                     f"{len(contexts)}")
                inputs = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
        items, single = _inputs_list(inputs, "inputs", (dict,))
        examples = []
        for i, item in enumerate(items):
            for key in ("question", "context"):
                value = item.get(key)
                if not isinstance(value, str):
                    raise TypeError(f"inputs[{i}][{key!r}] must be a str, got {type(value).__name__}")
                if not value:
                    raise ValueError(f"inputs[{i}][{key!r}] must not be empty")
            examples.append((item["question"], item["context"]))
        return examples, single

    def forward(self, batch, lengths):
        out = self.model(**batch)
        start, end = to_numpy(out.start_logits), to_numpy(out.end_logits)  # (batch, n)
        return [(s[:n], e[:n]) for s, e, n in zip(start, end, lengths)]

    def _answers(self, context, spans, top_k, max_answer_len, handle_impossible_answer, align_to_words):
        null_score, answers = 1e6, []
        cls_id = self.tokenizer.cls_token_id
        for w, (start_logits, end_logits) in spans:
            allowed = np.array([s == 1 for s in w.sequence_ids])  # context tokens
            if cls_id is not None:
                allowed |= np.array(w.ids) == cls_id  # kept in the softmax: some models answer "none" there
            p_start = _softmax(np.where(allowed, start_logits, -10000.0))
            p_end = _softmax(np.where(allowed, end_logits, -10000.0))
            if handle_impossible_answer:
                null_score = min(null_score, float(p_start[0] * p_end[0]))
            p_start[0] = p_end[0] = 0.0
            for s, e, score in _best_spans(p_start, p_end, top_k, max_answer_len, allowed):
                if align_to_words:
                    try:
                        begin = w.word_to_chars(w.token_to_word(s), sequence_index=1)[0]
                        finish = w.word_to_chars(w.token_to_word(e), sequence_index=1)[1]
                    except Exception:  # a tokenizer without word ids: keep to the token offsets
                        begin, finish = w.offsets[s][0], w.offsets[e][1]
                else:
                    begin, finish = w.offsets[s][0], w.offsets[e][1]
                text = context[begin:finish]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:
                    same["score"] += score
                else:
                    answers.append({"score": score, "start": begin, "end": finish, "answer": text})
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers


def _best_spans(p_start, p_end, top_k, max_answer_len, allowed):
    """The top_k (start, end, score) with start <= end < start + max_answer_len by score p_start * p_end, both
    ends on allowed tokens, best first."""
    scores = np.triu(np.tril(np.outer(p_start, p_end), max_answer_len - 1))  # (n, n): start rows, end columns
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    starts, ends = np.unravel_index(order, scores.shape)
    return [(int(s), int(e), float(scores[s, e])) for s, e in zip(starts, ends) if allowed[s] and allowed[e]]


# ------------------------------------------------------------------------------------------------ pipeline()
def checkpoint_class(path_or_repo_id, **hub):
    """The yoso_np class named by config.json's "architectures" (YosoModel when it names none we know)."""
    config = YosoConfig.from_json_file(checkpoint.resolve_file(path_or_repo_id, CONFIG_NAME, **hub))
    for name in config.extra.get("architectures") or ():
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    return YosoModel


TASKS = {cls.task: cls for cls in (FillMaskPipeline, FeatureExtractionPipeline, TextClassificationPipeline,
                                   TokenClassificationPipeline, QuestionAnsweringPipeline)}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
PIPELINE_KEYS = {"token-classification": ("aggregation_strategy", "ignore_labels")}


def pipeline(task, model, tokenizer=None, device=None, batch_size=DEFAULT_BATCH_SIZE, **kwargs):
    """A ready pipeline for ``task``: "fill-mask", "feature-extraction", "text-classification" (alias
    "sentiment-analysis"), "token-classification" (alias "ner") or "question-answering".

    ``model`` is a local folder or hub repo id (its weights and tokenizer are loaded; the other keyword
    arguments go to from_pretrained: revision, cache_dir, local_files_only, token, dtype, config overrides) or a
    yoso_np model object, which then needs ``tokenizer`` (a Tokenizer, or a folder / repo id to load one from).
    A checkpoint whose config.json names another head than the task needs is refused (no silent random head).
    ``device`` ("cpu" or "cuda") is where the model runs; None keeps a model object where it is (loaded models
    go to "cpu"). ``batch_size`` is the default of every call; token-classification also takes
    aggregation_strategy= and ignore_labels= here.
    """
    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted([*TASKS, *ALIASES])}, got {task!r}")
    cls = TASKS[task]
    options = {k: kwargs.pop(k) for k in PIPELINE_KEYS.get(task, ()) if k in kwargs}
    hub = {k: kwargs[k] for k in HUB_KEYS if k in kwargs}
    if isinstance(model, (str, os.PathLike)):
        found = checkpoint_class(model, **hub)
        if cls.model_class is not None and found is not YosoModel and found is not cls.model_class:
            raise TypeError(f"{task} needs a {cls.model_class.__name__} checkpoint, but {os.fspath(model)} "
                            f"holds a {found.__name__} (config.json architectures)")
        # feature-extraction loads the checkpoint's own class and drops its head (FeatureExtractionPipeline)
        loaded = (cls.model_class or found).from_pretrained(model, device=device or "cpu", **kwargs)
        if tokenizer is None:
            tokenizer = model
        model = loaded
    elif isinstance(model, YosoPreTrainedModel):
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} only apply when model is a folder or "
                             f"repo id, not a model object")
        if tokenizer is None:
            raise ValueError("a model object needs tokenizer= (a yoso_np.Tokenizer or a folder / repo id)")
        if device is not None:
            model.to(device)
    else:
        raise TypeError(f"model must be a folder, a hub repo id or a yoso_np model, got {type(model).__name__}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.from_pretrained(tokenizer, **hub)
    return cls(model, tokenizer, batch_size=batch_size, **options)
