"""Property-based tests (hypothesis) of the public surface: model inputs, tokenizer inputs, config.json contents,
safetensors and .bin files, and the fine-tuner's data files. Whatever comes in, the answer is a result or one of
the documented errors (ValueError and its subclasses CheckpointError / DataError, TypeError, OSError) — never
another exception, a hang, a huge allocation, or a NaN from valid input.

Example counts are bounded (see SETTINGS) so that each property runs in a few seconds; the cases hypothesis once
found failing are kept as explicit @example()s. `pytest --hypothesis-show-statistics` prints how many ran."""
import json
import os
import struct
import tempfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from yoso_np import Tokenizer, YosoConfig, YosoForMaskedLM, YosoForSequenceClassification
from yoso_np.checkpoint import CheckpointError, read_safetensors, read_torch_bin, save_safetensors
from yoso_np.data import DataError, LabelSpec, extract_fields, is_table, read_records
from tests.test_checkpoint import torch_pickle, torch_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTED = (ValueError, TypeError, OSError)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.function_scoped_fixture],
                database=None, derandomize=True)


def tiny_config(**kw):
    return YosoConfig(**{**dict(vocab_size=40, hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                intermediate_size=12, max_position_embeddings=24, num_hash=4, hash_code_len=3),
                         **kw})


MODELS = {mode: YosoForMaskedLM(tiny_config(use_expectation=mode == "expectation"), seed=0)
          for mode in ("expectation", "sampling")}


# ------------------------------------------------------------------------------------------------ model inputs
def valid_inputs(draw, batch=st.integers(1, 6), length=st.integers(1, 24)):
    b, n = draw(batch), draw(length)
    ids = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16])), (b, n),
                          elements=st.integers(0, 39)))
    mask = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.bool_, np.float32, np.float64])), (b, n),
                           elements=st.sampled_from([0, 1])))
    return ids, mask


@st.composite
def valid_model_inputs(draw):
    return valid_inputs(draw)


@settings(max_examples=120, **SETTINGS)
@given(inputs=valid_model_inputs(), mode=st.sampled_from(["expectation", "sampling"]), seed=st.integers(0, 2 ** 32))
@example(inputs=(np.full((1, 24), 7), np.zeros((1, 24), np.int64)), mode="expectation", seed=0)  # all padding
@example(inputs=(np.full((1, 24), 7), np.zeros((1, 24), np.int64)), mode="sampling", seed=0)
def test_valid_inputs_give_finite_outputs_of_the_right_shape(inputs, mode, seed):
    ids, mask = inputs
    out = MODELS[mode](input_ids=ids, attention_mask=mask, rng=seed)
    assert out.logits.shape == ids.shape + (40,)
    assert np.isfinite(out.logits).all()


@pytest.mark.parametrize("shape", [(0, 5), (2, 0), (0, 0)])
@pytest.mark.parametrize("mode", ["expectation", "sampling"])
def test_an_empty_batch_or_sequence_is_refused_by_name(shape, mode):
    """hypothesis found these crashing inside the attention (a reshape of 0 elements, an LSH table of 0 rows)."""
    with pytest.raises(ValueError, match=rf"input_ids must hold at least one sequence .* got shape \({shape[0]}, "):
        MODELS[mode](input_ids=np.zeros(shape, np.int64), rng=0)


def test_a_huge_batch_of_short_rows():
    ids = np.random.default_rng(0).integers(0, 40, (20000, 3))
    for model in MODELS.values():
        out = model(input_ids=ids, rng=0)
        assert out.logits.shape == (20000, 3, 40) and np.isfinite(out.logits).all()


any_array = st.one_of(
    hnp.arrays(st.sampled_from([np.int64, np.int8, np.uint64, np.float32, np.float64, np.bool_, np.complex64,
                                np.dtype("U3"), np.dtype("O")]),
               hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
    st.lists(st.integers(-10 ** 20, 10 ** 20), max_size=4),
    st.lists(st.lists(st.integers(-100, 100), max_size=4), max_size=3),
    st.none(), st.integers(), st.text(max_size=3), st.floats())


@settings(max_examples=300, **SETTINGS)
@given(ids=any_array, mask=any_array, types=any_array, positions=any_array)
@example(ids=np.array([[40]]), mask=None, types=None, positions=None)  # one past the vocabulary
@example(ids=np.array([[-1]]), mask=None, types=None, positions=None)
@example(ids=np.zeros((1, 25), np.int64), mask=None, types=None, positions=None)  # past max_position_embeddings
@example(ids=np.array([[2**63 - 1]], np.uint64), mask=None, types=None, positions=None)
@example(ids=np.array([[1, 2]]), mask=np.array([[1.0, np.nan]]), types=None, positions=None)
@example(ids=np.array([[1, 2]]), mask=None, types=np.array([[0, 1]]), positions=None)  # type_vocab_size 1
@example(ids=np.array([[1, 2]]), mask=None, types=None, positions=np.array([[0, 24]]))
@example(ids=np.array([[1, 2]]), mask=None, types=None, positions=np.array([[-1, 0]]))
@example(ids=[[0, 0, 0, 0]], mask=np.array(0), types=[[0, 0, 0, 0]], positions=0)  # found: IndexError on 0-d positions
def test_any_inputs_give_a_result_or_a_documented_error(ids, mask, types, positions):
    model = MODELS["expectation"]
    try:
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=positions)
    except DOCUMENTED:
        return
    assert np.isfinite(out.logits).all()


@settings(max_examples=40, **SETTINGS)
@given(inputs=valid_model_inputs(), labels=st.integers(-2, 3))
def test_classifier_losses_are_finite_or_refused(inputs, labels):
    ids, mask = inputs
    model = YosoForSequenceClassification(tiny_config(num_labels=3), seed=0)
    try:
        out = model(input_ids=ids, attention_mask=mask, labels=np.full(ids.shape[0], labels))
    except DOCUMENTED:
        return
    assert np.isfinite(out.logits).all()


# ------------------------------------------------------------------------------------------------ tokenizer
TOKENIZER = Tokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "tokenizer"))
any_unicode = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)


@settings(max_examples=250, **SETTINGS)
@given(text=st.one_of(any_unicode, st.builds(lambda a, s, b: a + s + b, any_unicode, lone_surrogates, any_unicode),
                      st.sampled_from(["", " ", "<mask>", "<s></s><pad>", "\x00", "\ufeff"])),
       truncation=st.booleans(), max_length=st.one_of(st.none(), st.integers(-2, 40)))
@example(text="\ud800", truncation=False, max_length=None)  # a lone surrogate
@example(text="a\udfffb", truncation=True, max_length=5)
@example(text="", truncation=False, max_length=None)
def test_tokenizer_takes_any_text_or_says_what_is_wrong(text, truncation, max_length):
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # found: tokenizers' "TextEncodeInput must be Union[...]"
        with pytest.raises(ValueError, match="lone surrogate"):
            TOKENIZER(text, truncation=truncation, max_length=max_length)
        return
    try:
        batch = TOKENIZER(text, truncation=truncation, max_length=max_length)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    ids = batch["input_ids"]
    assert ids.dtype == np.int64 and ids.ndim == 2 and ids.shape[0] == 1
    assert ((ids >= 0) & (ids < TOKENIZER.vocab_size)).all()
    if truncation and max_length is not None:
        assert ids.shape[1] <= max_length
    # byte-level BPE loses nothing: decoding gives the text back
    assert TOKENIZER.decode(TOKENIZER.encode(text, add_special_tokens=False)) == text


def test_tokenizer_very_long_text():
    text = "Paris is the capital of France. " * 4000  # 128k characters
    with pytest.raises(ValueError, match="more than the limit"):
        TOKENIZER(text, max_length=512)
    assert TOKENIZER(text, truncation=True, max_length=512)["input_ids"].shape == (1, 512)


# ------------------------------------------------------------------------------------------------ config.json
json_scalars = st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats() | st.text(max_size=5)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
small_ints = st.integers(-2, 6)
config_fields = st.fixed_dictionaries({}, optional={
    "vocab_size": st.one_of(st.integers(1, 50), json_values),
    "hidden_size": st.one_of(st.sampled_from([4, 8, 6]), json_values),
    "num_hidden_layers": st.one_of(st.integers(0, 2), json_values),
    "num_attention_heads": st.one_of(st.sampled_from([1, 2, 3]), json_values),
    "intermediate_size": st.one_of(small_ints, json_values),
    "hidden_act": st.one_of(st.sampled_from(["gelu", "relu", "gelu_new", "tanh", "swish", "nope"]), json_values),
    "hidden_dropout_prob": st.one_of(st.floats(-1, 2), json_values),
    "attention_probs_dropout_prob": st.one_of(st.floats(-1, 2), json_values),
    "max_position_embeddings": st.one_of(st.integers(0, 30), json_values),
    "type_vocab_size": st.one_of(small_ints, json_values),
    "initializer_range": st.one_of(st.floats(), json_values),
    "layer_norm_eps": st.one_of(st.floats(), json_values),
    "position_embedding_type": st.one_of(st.just("absolute"), json_values),
    "use_expectation": st.one_of(st.booleans(), json_values),
    "hash_code_len": st.one_of(st.integers(0, 30), json_values),
    "num_hash": st.one_of(small_ints, json_values),
    "conv_window": st.one_of(st.none(), st.integers(0, 6), json_values),
    "use_fast_hash": st.one_of(st.booleans(), json_values),
    "lsh_backward": st.one_of(st.booleans(), json_values),
    "pad_token_id": st.one_of(st.none(), st.integers(-2, 60), json_values),
    "bos_token_id": st.one_of(st.none(), small_ints, json_values),
    "eos_token_id": st.one_of(st.none(), small_ints, json_values),
    "tie_word_embeddings": st.one_of(st.booleans(), json_values),
    "num_labels": st.one_of(st.none(), small_ints, json_values),
    "id2label": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
                          json_values),
    "label2id": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), small_ints, max_size=3), json_values),
    "problem_type": st.one_of(st.none(), st.sampled_from(["regression", "single_label_classification",
                                                          "multi_label_classification"]), json_values),
    "model_type": st.one_of(st.just("yoso"), json_values),
    "architectures": json_values,
})


@settings(max_examples=200, **SETTINGS)  # ~25 ms an example, most of it drawing this many optional fields
@given(fields=config_fields)
@example(fields={"id2label": [1, 2]})  # a list, not an object
@example(fields={"label2id": {"a": "x", "b": "y"}, "num_labels": 2})
@example(fields={"layer_norm_eps": -1.0})
@example(fields={"layer_norm_eps": float("nan")})
@example(fields={"layer_norm_eps": "1e-12"})
@example(fields={"initializer_range": float("inf")})
@example(fields={"hidden_dropout_prob": "0.1"})
@example(fields={"use_expectation": "no"})
@example(fields={"pad_token_id": 1.5})
@example(fields={"num_labels": True})
@example(fields={"id2label": {"0": "a", "0.0": "b"}})  # two keys for label 0
def test_config_json_contents_give_a_config_or_a_documented_error(fields):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(fields, f)
        try:
            config = YosoConfig.from_json_file(path)
        except (ValueError, TypeError):
            event("refused")
            return
    event("loaded")
    # what loads, saves and loads the same, and (when small) runs with finite outputs
    again = YosoConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict()
    if config.vocab_size * config.hidden_size <= 10_000 and config.intermediate_size <= 64 \
            and config.num_hidden_layers <= 2:
        event("loaded and ran")
        model = YosoForMaskedLM(config, seed=0)
        n = min(5, config.max_position_embeddings - 2)
        ids = np.arange(n)[None] % config.vocab_size
        out = model(input_ids=ids, rng=0)
        assert np.isfinite(out.logits).all()


from yoso_np.layers.activations import ACTIVATIONS  # noqa: E402

small_configs = st.fixed_dictionaries({
    "vocab_size": st.integers(1, 30), "hidden_size": st.sampled_from([2, 4, 6, 8]),
    "num_attention_heads": st.sampled_from([1, 2]), "num_hidden_layers": st.integers(1, 2),
    "intermediate_size": st.integers(1, 16), "max_position_embeddings": st.integers(1, 12)}, optional={
    "hidden_act": st.sampled_from(sorted(ACTIVATIONS)), "use_expectation": st.booleans(),
    "layer_norm_eps": st.floats(1e-30, 1.0), "hash_code_len": st.integers(1, 24), "num_hash": st.integers(1, 4),
    "conv_window": st.one_of(st.none(), st.sampled_from([1, 3, 5])), "use_fast_hash": st.booleans(),
    "type_vocab_size": st.integers(1, 3), "pad_token_id": st.one_of(st.none(), st.integers(-1, 35)),
    "initializer_range": st.floats(0, 50)})


@settings(max_examples=100, **SETTINGS)
@given(fields=small_configs, seed=st.integers(0, 3))
@example(fields={"vocab_size": 1, "hidden_size": 2, "num_attention_heads": 1, "num_hidden_layers": 1,
                 "intermediate_size": 1, "max_position_embeddings": 1, "hash_code_len": 24}, seed=0)
@example(fields={"vocab_size": 5, "hidden_size": 2, "num_attention_heads": 2, "num_hidden_layers": 1,
                 "intermediate_size": 1, "max_position_embeddings": 3, "initializer_range": 50.0}, seed=0)
def test_small_valid_configs_run_with_finite_outputs(fields, seed):
    config = YosoConfig.from_dict(fields)
    model = YosoForMaskedLM(config, seed=seed)
    n = config.max_position_embeddings - (config.pad_token_id + 1 if config.pad_token_id is not None
                                          and config.pad_token_id >= 0 else 0)  # RoBERTa positions start past pad
    n = max(1, min(n, 6))
    ids = np.arange(n)[None] % config.vocab_size
    try:
        out = model(input_ids=ids, rng=seed)
    except ValueError as exc:  # positions past max_position_embeddings for this pad id
        assert "position" in str(exc), exc
        return
    assert np.isfinite(out.logits).all()


@settings(max_examples=150, **SETTINGS)
@given(data=st.binary(max_size=200))
@example(data=b"[" * 100_000)  # nesting deeper than the JSON parser's recursion
@example(data=b"\xff\xfe{\x00}\x00")  # UTF-16
@example(data=b"\xef\xbb\xbf{}")  # UTF-8 with a byte-order mark
def test_config_json_bytes_give_a_documented_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.json")
        with open(path, "wb") as f:
            f.write(data)
        try:
            YosoConfig.from_json_file(path)
        except (ValueError, TypeError):
            pass


# ------------------------------------------------------------------------------------ safetensors and .bin
def safetensors_bytes(tensors):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "w.safetensors")
        save_safetensors(tensors, path)
        with open(path, "rb") as f:
            return f.read()


VALID_SAFETENSORS = safetensors_bytes({"a": np.arange(12, dtype=np.float32).reshape(3, 4),
                                       "b": np.array([1, 2], np.int64), "c": np.zeros(0, np.float16)})
HUGE = 1 << 40


def read_bytes(reader, data, suffix):
    """reader(path of a file holding data); returns its result, or None for a documented error. The read may not
    allocate much more than the file holds."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "w" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        tracemalloc.start()
        try:
            return reader(path)
        except (CheckpointError, ValueError, OSError):
            return None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 2 * len(data) + (8 << 20), f"the read allocated {peak} bytes for a {len(data)}-byte file"


def header_file(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@settings(max_examples=200, **SETTINGS)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(VALID_SAFETENSORS)).map(lambda k: VALID_SAFETENSORS[:k]),  # truncated anywhere
    st.tuples(st.integers(0, len(VALID_SAFETENSORS) - 1), st.integers(0, 255)).map(
        lambda p: VALID_SAFETENSORS[:p[0]] + bytes([p[1]]) + VALID_SAFETENSORS[p[0] + 1:]),  # one byte changed
    st.builds(header_file, st.dictionaries(st.text(max_size=3), st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "X"]),
        "shape": st.lists(st.one_of(st.integers(-1, 4), st.just(HUGE)), max_size=3),
        "data_offsets": st.lists(st.one_of(st.integers(-1, 64), st.just(HUGE)), min_size=0, max_size=3)}),
        max_size=3), st.binary(max_size=64))))
@example(data=struct.pack("<Q", HUGE))  # a header longer than the file
@example(data=header_file({"a": {"dtype": "F32", "shape": [HUGE, HUGE], "data_offsets": [0, 16]}}, bytes(16)))
@example(data=header_file({"a": {"dtype": "F32", "shape": [0, HUGE], "data_offsets": [0, 0]}}))
@example(data=header_file({f"t{i}": {"dtype": "F32", "shape": [16384], "data_offsets": [0, 65536]}
                           for i in range(400)}, bytes(65536)))  # found: 400 tensors over one 64 kB, 26 MB read
@example(data=header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)))  # a hole
@example(data=struct.pack("<Q", 100_000) + b"[" * 100_000)  # nesting deeper than the JSON parser's recursion
def test_safetensors_bytes_are_read_or_refused_without_a_big_allocation(data):
    result = read_bytes(read_safetensors, data, ".safetensors")
    if result is not None:
        assert all(isinstance(v, np.ndarray) for v in result.values())


def bin_bytes(entries, storages, compress=zipfile.ZIP_STORED):
    """A torch.save-style zip (test_checkpoint's hand-made pickles), as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = torch_zip(os.path.join(folder, "w.bin"), torch_pickle(entries), storages)
        if compress != zipfile.ZIP_STORED:  # the same members, deflated
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".z", "w", compression=compress) as dst:
                for info in src.infolist():
                    dst.writestr(info.filename, src.read(info))
            path += ".z"
        with open(path, "rb") as f:
            return f.read()


VALID_BIN = bin_bytes([("w", "FloatStorage", "0", 6, 0, (2, 3), (3, 1)), ("n", "LongStorage", "1", 2, 0, (2,), (1,))],
                      {"0": np.arange(6, dtype="<f4").tobytes(), "1": np.array([3, -4], "<i8").tobytes()})
BIN_HUGE = 2 ** 31 - 1  # the hand-made pickles hold 32-bit ints
geometry = st.tuples(st.integers(-1, 8), st.lists(st.one_of(st.integers(-1, 5), st.just(BIN_HUGE)), max_size=3),
                     st.lists(st.one_of(st.integers(-1, 5), st.just(0)), max_size=3), st.integers(-1, 3))


@settings(max_examples=200, **SETTINGS)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(VALID_BIN)).map(lambda k: VALID_BIN[:k]),
    st.tuples(st.integers(0, len(VALID_BIN) - 1), st.integers(0, 255)).map(
        lambda p: VALID_BIN[:p[0]] + bytes([p[1]]) + VALID_BIN[p[0] + 1:]),
    st.builds(lambda g: bin_bytes([("w", "FloatStorage", "0", g[0], g[3], tuple(g[1]), tuple(g[2]))],
                                  {"0": bytes(16)}), geometry)))
@example(data=bin_bytes([("w", "FloatStorage", "0", 4, 0, (BIN_HUGE, BIN_HUGE), (0, 0))], {"0": bytes(16)}))  # stride 0
@example(data=bin_bytes([("w", "FloatStorage", "0", BIN_HUGE, 0, (2,), (1,))], {"0": bytes(16)}))  # absurd numel
@example(data=bin_bytes([("w", "FloatStorage", "0", 1 << 22, 0, (1 << 22,), (1,))], {"0": bytes(1 << 24)},
                        compress=zipfile.ZIP_DEFLATED))  # 16 MB inflated from a few kB
def test_torch_bin_bytes_are_read_or_refused_without_a_big_allocation(data):
    result = read_bytes(read_torch_bin, data, ".bin")
    if result is not None:
        assert all(isinstance(v, np.ndarray) for v in result.values())


# ---------------------------------------------------------------------------------------- fine-tuning data
def read_training_data(path):
    """What `yoso-np finetune` does with a data file before tokenizing: records, fields, labels."""
    records = read_records(path)
    texts, pairs, raw = extract_fields(records, text_field="text", label_field="label")
    table = is_table(path)
    spec = LabelSpec.from_values(raw, table=table)
    targets = spec.encode(raw, table=table)
    if spec.problem_type != "single_label_classification":
        assert np.isfinite(targets).all(), "non-finite regression or multi-hot targets"
    assert spec.num_labels <= 1 << 20
    return texts


def data_file(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "train" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        try:
            read_training_data(path)
        except DataError:
            pass


cells = st.text(st.characters(codec="utf-8"), max_size=6)
ragged_csv = st.lists(st.lists(cells, max_size=4), min_size=1, max_size=6).map(
    lambda rows: "\n".join(",".join(r) for r in [["text", "label"]] + rows).encode("utf-8"))
json_records = st.lists(st.dictionaries(st.sampled_from(["text", "label", "x"]), json_values, max_size=3),
                        max_size=4)


@settings(max_examples=300, **SETTINGS)
@given(data=st.one_of(st.binary(max_size=200), ragged_csv,
                      json_records.map(lambda r: json.dumps(r).encode()),
                      json_records.map(lambda r: "\n".join(json.dumps(x) for x in r).encode()),
                      st.text(max_size=40).map(lambda t: t.encode("utf-16")),
                      st.text(max_size=40).map(lambda t: t.encode("latin-1", "replace"))),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]))
@example(data=b"[" * 100_000, suffix=".json")  # nesting deeper than the JSON parser's recursion
@example(data=b"[" * 100_000, suffix=".jsonl")
@example(data=b'[{"text": "a", "label": 1e999}, {"text": "b", "label": 0.5}]', suffix=".json")  # inf
@example(data=b'[{"text": "a", "label": NaN}, {"text": "b", "label": 0.5}]', suffix=".json")
@example(data=b'[{"text": "a", "label": [NaN, 1]}, {"text": "b", "label": [0, 1]}]', suffix=".json")
@example(data=b"text,label\na,inf\nb,0.5\n", suffix=".csv")
@example(data=b'[{"text": "a", "label": 1000000000000}, {"text": "b", "label": 0}]', suffix=".json")
@example(data=b"\xef\xbb\xbftext,label\na,0\nb,1\n", suffix=".csv")  # a UTF-8 byte-order mark
@example(data=b"text,label\na,0\x00\nb,1\n", suffix=".csv")  # a NUL byte
@example(data=b'"text,label\na,0\n', suffix=".csv")  # an unclosed quote
def test_training_data_files_give_records_or_a_data_error(data, suffix):
    data_file(data, suffix)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\na,0\nb,1\n")
    assert read_training_data(path) == ["a", "b"]
