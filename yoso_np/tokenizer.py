"""The RoBERTa-style tokenizer of YOSO checkpoints, over the `tokenizers` library (no transformers).

    tok = Tokenizer.from_pretrained("uw-madison/yoso-4096")
    batch = tok(["Paris is the <mask> of France.", "Hello"])   # input_ids, attention_mask: int64 (batch, n)

A folder or hub repo holds either tokenizer.json (used as is) or RoBERTa's vocab.json + merges.txt (rebuilt as a
byte-level BPE with RoBERTa's `<s> A </s>` / `<s> A </s></s> B </s>` post-processor, as transformers'
RobertaTokenizerFast builds it). special_tokens_map.json and tokenizer_config.json, when present, name the special
tokens and model_max_length.
"""
import json
import os

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from . import checkpoint
from .backend import to_numpy
from .config import read_json_object

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
ROBERTA_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                          "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
# RoBERTa's <mask> takes the space before it: "Paris is the <mask>." has no separate " " token before the mask
LSTRIP_BY_DEFAULT = {"mask_token"}
PADDING_CHOICES = (True, False, "longest", "max_length", "do_not_pad")


def _added_token(spec, lstrip=False):
    """An AddedToken from a special-tokens entry: a string or transformers' {"content", "lstrip", ...} dict."""
    if isinstance(spec, str):
        return AddedToken(spec, lstrip=lstrip, rstrip=False, normalized=False, special=True)
    if isinstance(spec, dict) and isinstance(spec.get("content"), str):
        return AddedToken(spec["content"], lstrip=bool(spec.get("lstrip", False)),
                          rstrip=bool(spec.get("rstrip", False)), single_word=bool(spec.get("single_word", False)),
                          normalized=bool(spec.get("normalized", False)), special=True)
    raise ValueError(f"a special token must be a string or a dict with a 'content' string, got {spec!r}")


def roberta_backend(vocab_path, merges_path, special_tokens, *, add_prefix_space=False, trim_offsets=True):
    """Byte-level BPE from RoBERTa's vocab.json + merges.txt with RoBERTa's post-processor."""
    backend = BackendTokenizer(models.BPE.from_file(vocab_path, merges_path, dropout=None,
                                                    continuing_subword_prefix="", end_of_word_suffix="",
                                                    fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(special_tokens.values()))
    sep, cls = special_tokens["sep_token"].content, special_tokens["cls_token"].content
    backend.post_processor = processors.RobertaProcessing((sep, backend.token_to_id(sep)),
                                                          (cls, backend.token_to_id(cls)),
                                                          trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
    return backend


class Tokenizer:
    """Text <-> token ids for YOSO models: a `tokenizers.Tokenizer` plus the special tokens and length limit.

    ``special_tokens`` maps names (mask_token, pad_token, ...) to strings or AddedTokens; ``model_max_length``
    is the longest sequence (in tokens, specials included) the model takes, or None for no limit.
    """

    def __init__(self, backend, special_tokens=None, *, model_max_length=None, clean_up_tokenization_spaces=False,
                 config=None):
        if not isinstance(backend, BackendTokenizer):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        if model_max_length is not None and (isinstance(model_max_length, bool)
                                             or not isinstance(model_max_length, int) or model_max_length <= 0):
            raise ValueError(f"model_max_length must be a positive int or None, got {model_max_length!r}")
        self.backend = backend
        # the padding and truncation settings a tokenizer.json may carry are replaced by the arguments of __call__
        backend.no_padding()
        backend.no_truncation()
        self.special_tokens = {}
        for name, spec in (special_tokens or {}).items():
            if name not in SPECIAL_TOKEN_NAMES:
                raise ValueError(f"special_tokens keys must be among {SPECIAL_TOKEN_NAMES}, got {name!r}")
            if spec is not None:
                self.special_tokens[name] = spec if isinstance(spec, AddedToken) else _added_token(spec)
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in self.special_tokens.values() if t.content not in known]
        if missing:
            backend.add_special_tokens(missing)
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.config = dict(config or {})  # tokenizer_config.json as read, written back by save_pretrained

    # -- loading and saving ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_repo_id, *, revision=None, cache_dir=None, local_files_only=False, token=None):
        """Load from a local folder or a hub repo: tokenizer.json if present, else vocab.json + merges.txt."""
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        source = os.fspath(path_or_repo_id)

        def find(name):
            return checkpoint.resolve_file(source, name, required=False, **hub)

        config_path, map_path = find(TOKENIZER_CONFIG_FILE), find(SPECIAL_TOKENS_MAP_FILE)
        config = read_json_object(config_path) if config_path else {}
        special_map = read_json_object(map_path) if map_path else {}
        specs, named = {}, set()
        for name in SPECIAL_TOKEN_NAMES:
            # special_tokens_map.json wins over tokenizer_config.json, as in transformers
            spec = special_map.get(name, config.get(name, ROBERTA_SPECIAL_TOKENS[name]))
            if spec is not None:
                specs[name] = _added_token(spec, lstrip=name in LSTRIP_BY_DEFAULT)
            named.update([name] if name in special_map or name in config else [])

        tokenizer_path = find(TOKENIZER_FILE)
        if tokenizer_path is not None:
            try:
                backend = BackendTokenizer.from_file(tokenizer_path)
            except Exception as exc:  # the Rust library raises a bare Exception for a malformed file
                raise ValueError(f"{tokenizer_path} is not a valid tokenizer.json: {exc}") from None
            # RoBERTa's names are only a default: a tokenizer.json without them keeps its own vocabulary
            specs = {name: t for name, t in specs.items()
                     if name in named or backend.token_to_id(t.content) is not None}
        else:
            vocab_path, merges_path = find(VOCAB_FILE), find(MERGES_FILE)
            if vocab_path is None or merges_path is None:
                tried = f"{TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}"
                kind = "folder" if os.path.isdir(source) else "hub repo"
                raise FileNotFoundError(f"no tokenizer files in the {kind} {source!r}: tried {tried}")
            try:
                backend = roberta_backend(vocab_path, merges_path, specs,
                                          add_prefix_space=bool(config.get("add_prefix_space", False)),
                                          trim_offsets=bool(config.get("trim_offsets", True)))
            except Exception as exc:
                raise ValueError(f"cannot read {vocab_path} + {merges_path} as a byte-level BPE: {exc}") from None
        max_length = config.get("model_max_length")
        if isinstance(max_length, (int, float)) and max_length >= 1e20:
            max_length = None  # transformers writes int(1e30) for "no limit"
        return cls(backend, specs, model_max_length=None if max_length is None else int(max_length),
                   clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False), config=config)

    def save_pretrained(self, directory):
        """Write tokenizer.json, special_tokens_map.json and tokenizer_config.json into ``directory``, all three
        before any replaces its old copy (a full disk or read-only folder raises OSError and changes nothing)."""
        special_map = {name: {"content": t.content, "lstrip": t.lstrip, "rstrip": t.rstrip,
                              "normalized": t.normalized, "single_word": t.single_word}
                       for name, t in self.special_tokens.items()}
        config = {**self.config, **special_map, "model_max_length": self.model_max_length,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}
        config.setdefault("tokenizer_class", "RobertaTokenizer")
        if self.model_max_length is None:
            del config["model_max_length"]
        texts = {TOKENIZER_FILE: self.backend.to_str(pretty=True)}
        for name, data in ((SPECIAL_TOKENS_MAP_FILE, special_map), (TOKENIZER_CONFIG_FILE, config)):
            texts[name] = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        checkpoint.write_files({os.path.join(directory, name): (lambda f, b=text.encode("utf-8"): f.write(b))
                                for name, text in texts.items()}, what=f"the tokenizer to {os.fspath(directory)}")

    # -- vocabulary -----------------------------------------------------------------------------------------
    def _special(self, name):
        token = self.special_tokens.get(name)
        return None if token is None else token.content

    def _special_id(self, name):
        content = self._special(name)
        return None if content is None else self.backend.token_to_id(content)

    mask_token = property(lambda self: self._special("mask_token"))
    pad_token = property(lambda self: self._special("pad_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))

    @property
    def vocab_size(self):
        """Number of ids, added tokens included (RoBERTa: 50265, <mask> being the last)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self):
        return self.vocab_size

    @property
    def all_special_ids(self):
        return sorted({self.backend.token_to_id(t.content) for t in self.special_tokens.values()})

    def get_vocab(self):
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_ids_to_tokens(self, ids):
        """One id -> its token string; a sequence of ids -> a list of them."""
        if isinstance(ids, (int, np.integer)):
            return self.backend.id_to_token(self._check_id(ids))
        return [self.backend.id_to_token(self._check_id(i)) for i in self._id_list(ids)]

    def convert_tokens_to_string(self, tokens):
        """Text of a list of token strings, through the tokenizer's decoder (byte-level: "Ġ" back to " ")."""
        decoder = self.backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    def _check_id(self, i):
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"token id {int(i)} is outside the vocabulary [0, {self.vocab_size})")
        return int(i)

    @staticmethod
    def _id_list(ids):
        array = np.asarray(to_numpy(ids))
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise TypeError(f"ids must be a 1-d sequence of ints, got {array.dtype} array of shape {array.shape}")
        return [int(i) for i in array]

    # -- encoding and decoding ------------------------------------------------------------------------------
    def encode(self, text, text_pair=None, *, add_special_tokens=True):
        """The ids of one text (or pair), with `<s> ... </s>` unless add_special_tokens=False."""
        _check_text(text, "text")
        if text_pair is not None:
            _check_text(text_pair, "text_pair")
        return self.backend.encode(text, text_pair, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        """Text of a 1-d sequence of ids."""
        ids = self._id_list(ids)
        for i in ids:
            self._check_id(i)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, skip_special_tokens=False):
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def __call__(self, texts, text_pairs=None, *, padding=True, truncation=False, max_length=None,
                 return_token_type_ids=False, add_special_tokens=True):
        """Encode a text or a list of texts (with optional pairs) into NumPy int64 arrays of shape (batch, n).

        padding: True / "longest" pads to the longest sequence, "max_length" to max_length (or model_max_length),
        False / "do_not_pad" leaves them unpadded (then all sequences must have the same length).
        A sequence longer than max_length (or model_max_length) is cut when truncation=True (for pairs the
        longer of the two loses tokens first) and raises ValueError otherwise.
        """
        texts = _text_list(texts, "texts")
        if text_pairs is not None:
            text_pairs = _text_list(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs must have one entry per text ({len(texts)}), got {len(text_pairs)}")
        if padding not in PADDING_CHOICES:
            raise ValueError(f"padding must be one of {PADDING_CHOICES}, got {padding!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
                                       or max_length <= 0):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        limit = self.model_max_length if max_length is None else int(max_length)
        if (truncation or padding == "max_length") and limit is None:
            raise ValueError("truncation=True and padding='max_length' need max_length: "
                             "pass max_length= (this tokenizer has no model_max_length)")

        encodings = self.encodings(texts, text_pairs, truncation=truncation, max_length=limit,
                                   add_special_tokens=add_special_tokens)

        lengths = [len(e.ids) for e in encodings]
        if limit is not None and max(lengths) > limit:
            i = int(np.argmax(lengths))
            raise ValueError(f"text {i} has {lengths[i]} tokens, more than the limit of {limit} "
                             f"({'max_length' if max_length is not None else 'model_max_length'}); "
                             f"pass truncation=True to cut it")
        if padding in (False, "do_not_pad"):
            if len(set(lengths)) > 1:
                raise ValueError(f"padding=False needs texts of equal length in tokens, got lengths {lengths}; "
                                 f"use padding=True")
            width = lengths[0]
        else:
            width = limit if padding == "max_length" else max(lengths)
        pad_id = self.pad_token_id
        if pad_id is None and any(n < width for n in lengths):
            raise ValueError("padding needs a pad_token, and this tokenizer has none")

        input_ids = np.full((len(encodings), width), pad_id if pad_id is not None else 0, dtype=np.int64)
        attention_mask = np.zeros((len(encodings), width), dtype=np.int64)
        token_type_ids = np.zeros((len(encodings), width), dtype=np.int64)
        for row, (e, n) in enumerate(zip(encodings, lengths)):
            input_ids[row, :n] = e.ids
            attention_mask[row, :n] = 1
            token_type_ids[row, :n] = e.type_ids
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_token_type_ids:
            out["token_type_ids"] = token_type_ids
        return out

    def encodings(self, texts, text_pairs=None, *, truncation=False, max_length=None, stride=0,
                  add_special_tokens=True):
        """The `tokenizers.Encoding` of each text (or pair), unpadded: ids, type_ids, offsets (character spans
        in the text), special_tokens_mask, word_ids, sequence_ids, token_to_word / word_to_chars.

        truncation: False, True / "longest_first", "only_first" or "only_second" (cut to max_length tokens);
        the cut tokens come back as ``encoding.overflowing`` windows that overlap by ``stride`` tokens.
        """
        texts = _text_list(texts, "texts")
        if text_pairs is not None:
            text_pairs = _text_list(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs must have one entry per text ({len(texts)}), got {len(text_pairs)}")
        strategies = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
                      "only_second": "only_second"}
        truncation = truncation or False
        if truncation is not False and truncation not in strategies:
            raise ValueError(f"truncation must be False, True, 'longest_first', 'only_first' or 'only_second', "
                             f"got {truncation!r}")
        if truncation is not False and max_length is None:
            raise ValueError("truncation needs max_length")
        inputs = texts if text_pairs is None else list(zip(texts, text_pairs))
        try:
            backend = self.backend
            if truncation is not False:
                backend = self._truncating_backend(int(max_length), int(stride), strategies[truncation])
            return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as exc:  # e.g. max_length shorter than the special tokens of a pair, stride too long
            raise ValueError(f"cannot encode the texts with max_length={max_length}, stride={stride}: {exc}") \
                from None

    def _truncating_backend(self, max_length, stride, strategy):
        """A copy of the backend that truncates so, made once per setting and never changed after: truncation is
        state of a `tokenizers.Tokenizer`, and setting it on the shared one for a call would truncate (or not)
        the texts of other threads' calls at the same moment."""
        key = (max_length, stride, strategy)
        copies = self.__dict__.setdefault("_truncating", {})
        backend = copies.get(key)
        if backend is None:
            backend = BackendTokenizer.from_str(self.backend.to_str())
            backend.enable_truncation(max_length, stride=stride, strategy=strategy)  # raises for a bad setting
            if len(copies) >= 8:  # a few settings are used over and over; more is a caller's sweep
                copies.clear()
            copies[key] = backend
        return backend

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"special_tokens={ {k: t.content for k, t in self.special_tokens.items()} })")


def _check_text(text, name):
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    _check_unicode(text, name)


def _check_unicode(text, name):
    """A lone surrogate (e.g. from bytes decoded with errors='surrogateescape') is not text the tokenizer can
    encode; say where it is instead of the tokenizers library's 'TextEncodeInput must be Union[...]'."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} holds a lone surrogate {ord(text[exc.start]):#06x} at character {exc.start}, "
                             "which is not valid Unicode; decode its source with errors='replace'") from None


def _text_list(texts, name):
    """A str -> [str]; a list/tuple of str -> list; anything else -> TypeError naming the argument."""
    if isinstance(texts, str):
        _check_unicode(texts, name)
        return [texts]
    if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts):
        for i, t in enumerate(texts):
            _check_unicode(t, f"{name}[{i}]")
        return list(texts)
    if isinstance(texts, (list, tuple)) and not texts:
        raise ValueError(f"{name} must not be empty")
    raise TypeError(f"{name} must be a str or a non-empty list of str, got {type(texts).__name__}"
                    + (f" holding {sorted({type(t).__name__ for t in texts})}" if isinstance(texts, (list, tuple))
                       else ""))


def _clean_up_spaces(text):
    """transformers' clean_up_tokenization: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
