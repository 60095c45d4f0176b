"""YosoConfig: the fields and defaults of transformers' YosoConfig, validation, config.json in and out."""
import json
import math
import os
from dataclasses import dataclass, field, fields

CONFIG_NAME = "config.json"
MAX_LABELS = 1 << 20  # a bound that keeps a bad num_labels from building a huge head (or label dict)
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def read_json_object(path):
    """The JSON object in a file (config.json, tokenizer configs); ValueError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON: nested deeper than the parser follows") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


@dataclass
class YosoConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 4096
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"
    use_expectation: bool = True
    hash_code_len: int = 9
    num_hash: int = 64
    conv_window: int | None = None
    use_fast_hash: bool = True
    lsh_backward: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    num_labels: int | None = None
    id2label: dict | None = None
    label2id: dict | None = None
    problem_type: str | None = None
    # keys of config.json that are not fields above: kept and written back unchanged
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("id2label", "label2id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"config.{name} must be a dict (a JSON object) or None, got {value!r}")
        n = self.num_labels
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_LABELS):
            raise ValueError(f"config.num_labels must be an int in [1, {MAX_LABELS}] or None, got {n!r}")
        if self.id2label is not None:
            try:
                id2label = {int(k): str(v) for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"config.id2label must map class ids to names, got {self.id2label!r}") from None
            if sorted(id2label) != list(range(len(self.id2label))) or len(id2label) > MAX_LABELS:
                raise ValueError(f"config.id2label must name each class id 0, 1, ..., n - 1 once (n <= {MAX_LABELS}), "
                                 f"got the ids {list(self.id2label)!r}")
            self.id2label = id2label
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                # an explicit num_labels wins, as in transformers
                self.id2label = None
        if self.id2label is None:
            n = 2 if self.num_labels is None else self.num_labels
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.num_labels = len(self.id2label)
        if self.label2id is None or len(self.label2id) != self.num_labels:
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            if not all(type(v) is int for v in self.label2id.values()):
                raise ValueError(f"config.label2id must map names to class ids (ints), got {self.label2id!r}")
            self.label2id = {str(k): v for k, v in self.label2id.items()}
        self.validate()

    def validate(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"config.{name} must be a positive int, got {v!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "hash_code_len",
                     "num_hash", "num_labels"):
            positive_int(name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.hidden_size ({self.hidden_size}) must be a multiple of "
                f"config.num_attention_heads ({self.num_attention_heads})")
        if self.hash_code_len > 24:
            raise ValueError(f"config.hash_code_len must be at most 24 (2**L hash buckets), got {self.hash_code_len}")
        if self.conv_window is not None:
            positive_int("conv_window")
            if self.conv_window % 2 == 0:  # transformers' Conv2d(padding=w // 2) returns n + 1 rows and fails
                raise ValueError(f"config.conv_window must be odd, got {self.conv_window}")
        def number(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"config.{name} must be a finite number, got {v!r}")
            return v

        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = number(name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"config.{name} must be in [0, 1), got {p!r}")
        if not number("layer_norm_eps") > 0:  # 0 gives inf (then NaN) for a row of equal values
            raise ValueError(f"config.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not number("initializer_range") >= 0:
            raise ValueError(f"config.initializer_range must be >= 0, got {self.initializer_range!r}")
        for name in ("use_expectation", "use_fast_hash", "lsh_backward", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"config.{name} must be a token id (int) or None, got {v!r}")
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"config.position_embedding_type must be 'absolute' (the only kind YOSO uses), "
                f"got {self.position_embedding_type!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"config.problem_type must be one of {PROBLEM_TYPES} or None, got {self.problem_type!r}")
        if not isinstance(self.hidden_act, str):
            raise TypeError(f"config.hidden_act must be an activation name (str), got {self.hidden_act!r}")
        from .layers.activations import ACTIVATIONS
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"config.hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    # -- dict / JSON --------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d, **overrides):
        d = {**d, **overrides}
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        if "model_type" in extra and extra["model_type"] != "yoso":
            raise ValueError(f"config.json: model_type must be 'yoso', got {extra['model_type']!r}")
        if "num_labels" in overrides and "id2label" not in overrides:
            kwargs.pop("id2label", None)
            kwargs.pop("label2id", None)
        return cls(**kwargs, extra=extra)

    def to_dict(self):
        d = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "num_labels"):
                continue
            v = getattr(self, f.name)
            if f.name == "problem_type" and v is None:
                continue
            if f.name == "id2label":
                v = {str(k): lab for k, lab in v.items()}
            d[f.name] = v
        d["model_type"] = "yoso"
        return dict(sorted(d.items()))

    @classmethod
    def from_json_file(cls, path, **overrides):
        return cls.from_dict(read_json_object(path), **overrides)

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, directory):
        """Write config.json into ``directory`` atomically (a failure leaves the old file as it was)."""
        from .checkpoint import write_files

        text = self.to_json_string().encode("utf-8")
        write_files({os.path.join(directory, CONFIG_NAME): lambda f: f.write(text)},
                    what=f"the config to {os.fspath(directory)}")
