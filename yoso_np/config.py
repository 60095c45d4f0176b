"""YosoConfig: the fields and defaults of transformers' YosoConfig, validation, config.json in and out."""
import json
import os
from dataclasses import dataclass, field, fields

CONFIG_NAME = "config.json"
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def read_json_object(path):
    """The JSON object in a file (config.json, tokenizer configs); ValueError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
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
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
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
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
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
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"config.{name} must be in [0, 1), got {p!r}")
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
