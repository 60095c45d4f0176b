"""yoso_np.data: reading data files, labels, batches and MLM masking."""
import json
import os

import numpy as np
import pytest

from yoso_np.data import DataError, Dataset, LabelSpec, extract_fields, mask_tokens, read_records

FIXTURE_TOKENIZER = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- reading ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text", [
    ("d.jsonl", '{"text": "a b", "label": 1}\n\n{"text": "c", "label": 0}\n'),
    ("d.json", '[{"text": "a b", "label": 1}, {"text": "c", "label": 0}]'),
    ("d.csv", 'text,label\n"a b",1\nc,0\n'),
    ("d.tsv", 'text\tlabel\na b\t1\nc\t0\n'),
])
def test_read_records_all_formats(tmp_path, name, text):
    records = read_records(write(tmp_path / name, text))
    texts, pairs, labels = extract_fields(records, text_field="text", label_field="label")
    assert texts == ["a b", "c"] and pairs is None
    spec = LabelSpec.from_values(labels, table=name.endswith("sv"))
    assert spec.problem_type == "single_label_classification"
    np.testing.assert_array_equal(spec.encode(labels, table=name.endswith("sv")), [1, 0])


@pytest.mark.parametrize("name, text, expected", [
    ("d.jsonl", '{"text": "a"}\n{"text": "b"\n', "d.jsonl, line 2: not valid JSON"),
    ("d.jsonl", '{"text": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ("d.json", '[{"text": "a"},\n {"text": ]', "d.json, line 2: not valid JSON"),
    ("d.json", '{"text": "a"}', "expected a JSON list of objects"),
    ("d.csv", 'text,label\na,1\nb,2,3\n', "d.csv, line 3: 3 cells, but the header has 2 columns"),
    ("d.jsonl", "\n\n", "holds no records"),
    ("d.csv", "text,label\n", "holds no records"),
    ("d.txt", "hello", "unknown data format '.txt'"),
])
def test_read_records_errors_name_file_and_line(tmp_path, name, text, expected):
    with pytest.raises(DataError, match=expected.replace("[", r"\[").replace(",", ",")):
        read_records(write(tmp_path / name, text))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_missing_and_non_text_fields(tmp_path):
    records = read_records(write(tmp_path / "d.jsonl", '{"text": "a", "label": 0}\n{"txt": "b", "label": 1}\n'))
    with pytest.raises(DataError, match=r"d.jsonl, line 2: missing field 'text'"):
        extract_fields(records, text_field="text", label_field="label")
    records = read_records(write(tmp_path / "e.jsonl", '{"text": 3, "label": 0}\n'))
    with pytest.raises(DataError, match="field 'text' must be a string, got int"):
        extract_fields(records, text_field="text")
    records = read_records(write(tmp_path / "f.jsonl", '{"text": "a", "label": 0}\n'))
    with pytest.raises(DataError, match="missing field 'premise'"):
        extract_fields(records, text_field="text", text_pair_field="premise")


# -- labels -----------------------------------------------------------------------------------------------------
def labeled(*values):
    return [(f"f.jsonl, line {i + 1}", v) for i, v in enumerate(values)]


def test_string_labels_sorted():
    raw = labeled("pos", "neg", "neutral", "pos")
    spec = LabelSpec.from_values(raw)
    assert spec.id2label == {0: "neg", 1: "neutral", 2: "pos"} and spec.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert spec.num_labels == 3 and spec.problem_type == "single_label_classification"
    np.testing.assert_array_equal(spec.encode(raw), [2, 0, 1, 2])
    with pytest.raises(DataError, match="'other' is not one of the 3 classes"):
        spec.encode(labeled("other"))


def test_int_float_and_list_labels():
    spec = LabelSpec.from_values(labeled(0, 3, 1))
    assert (spec.problem_type, spec.num_labels, spec.id2label) == ("single_label_classification", 4, None)
    spec = LabelSpec.from_values(labeled(0.5, 2, 1.25))
    assert (spec.problem_type, spec.num_labels) == ("regression", 1)
    assert spec.encode(labeled(0.5, 2, 1.25)).dtype == np.float32
    raw = labeled(["sport"], ["art", "sport"], [])
    spec = LabelSpec.from_values(raw)
    assert spec.problem_type == "multi_label_classification" and spec.id2label == {0: "art", 1: "sport"}
    np.testing.assert_array_equal(spec.encode(raw), [[0, 1], [1, 1], [0, 0]])
    raw = labeled([0, 1, 1], [1, 0, 0])
    spec = LabelSpec.from_values(raw)
    assert spec.problem_type == "multi_label_classification" and spec.num_labels == 3
    np.testing.assert_array_equal(spec.encode(raw), [[0, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("values, expected", [
    ((1, "pos"), "mixed label types: int labels .*line 1.*str labels .*line 2"),
    (("a", ["a"]), "mixed label types"),
    ((1.5, "x"), "mixed label types"),
    ((0, None), "line 2: a label must be an int, a string, a float or a list, got None"),
    ((True, False), "line 1: a label must be"),
    ((0, -1), "line 2: integer labels must be >= 0"),
    (([0, 1], [1, 0, 1]), "multi-hot labels must all have the same length"),
])
def test_bad_labels(values, expected):
    with pytest.raises(DataError, match=expected):
        LabelSpec.from_values(labeled(*values))


def test_table_cells_become_numbers_or_stay_strings():
    assert LabelSpec.from_values(labeled("1", "0"), table=True).problem_type == "single_label_classification"
    assert LabelSpec.from_values(labeled("1.5", "0"), table=True).problem_type == "regression"
    spec = LabelSpec.from_values(labeled("1", "yes"), table=True)
    assert spec.id2label == {0: "1", 1: "yes"}


# -- batches ----------------------------------------------------------------------------------------------------
def test_batch_pads_to_the_longest_row_of_the_batch():
    data = Dataset([[0, 5, 2], [0, 6, 7, 8, 2], [0, 2]], {"labels": np.array([1, 0, 1]),
                                                           "tags": [[1, 2, 3], [4, 5, 6, 7, 8], [9, 9]]},
                   pad_token_id=1, token_targets=("tags",))
    batch = data.batch([2, 0])
    np.testing.assert_array_equal(batch["input_ids"], [[0, 2, 1], [0, 5, 2]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(batch["labels"], [1, 1])
    np.testing.assert_array_equal(batch["tags"], [[9, 9, -100], [1, 2, 3]])
    assert batch["input_ids"].dtype == np.int64 and data.batch([1])["input_ids"].shape == (1, 5)


def test_batch_of_choices_and_dataset_checks():
    data = Dataset([[[0, 5], [0, 6]], [[0, 5, 6], [0, 7, 7]]], {"labels": [0, 1]}, pad_token_id=1)
    assert data.batch([0, 1])["input_ids"].shape == (2, 2, 3)
    with pytest.raises(DataError, match="target 'labels' has 1 entries for 2 rows"):
        Dataset([[0], [1]], {"labels": [0]}, pad_token_id=1)
    with pytest.raises(DataError, match="at least one row"):
        Dataset([], pad_token_id=1)


def test_from_texts_with_the_fixture_tokenizer():
    from yoso_np.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(FIXTURE_TOKENIZER)
    data = Dataset.from_texts(tok, ["hi", "a much longer text than the other one is"], None,
                              np.array([0, 1]), max_length=8)
    assert len(data.rows[0]) < len(data.rows[1]) == 8  # truncated to max_length, no padding stored
    assert data.rows[0][0] == tok.cls_token_id and data.rows[0][-1] == tok.sep_token_id
    assert data.pad_token_id == tok.pad_token_id and data.mask_token_id == tok.mask_token_id
    pairs = Dataset.from_texts(tok, ["hello"], ["world"], None, max_length=16)
    assert list(pairs.rows[0]).count(tok.sep_token_id) == 3  # <s> A </s></s> B </s>


# -- masking ----------------------------------------------------------------------------------------------------
def test_mask_tokens_matches_the_collator_proportions():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (200, 300))
    ids[:, 0], ids[:, -1] = 0, 2  # specials
    mask = np.ones_like(ids)
    mask[:100, 250:] = 0
    ids[:100, 250:] = 1  # padding
    masked, labels = mask_tokens(ids, mask, np.random.default_rng(1), mask_token_id=5, vocab_size=1000,
                                 special_token_ids=(0, 1, 2))
    chosen = labels != -100
    eligible = (mask == 1) & (ids > 2)
    assert not (chosen & ~eligible).any()  # never a special token or padding
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005
    n = chosen.sum()
    to_mask = (masked == 5) & chosen
    kept = (masked == ids) & chosen
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    # the 10% random tokens can hit the original token by chance (1 in 990)
    assert abs(kept.sum() / n - 0.1) < 0.01
    assert abs((chosen & ~to_mask & ~kept).sum() / n - 0.1) < 0.01
    again = mask_tokens(ids, mask, np.random.default_rng(1), mask_token_id=5, vocab_size=1000,
                        special_token_ids=(0, 1, 2))
    np.testing.assert_array_equal(again[0], masked)  # a seed gives the same masks


def test_mask_tokens_at_least_one():
    ids = np.array([[0, 7, 8, 2]])
    masked, labels = mask_tokens(ids, np.ones_like(ids), np.random.default_rng(3), mask_token_id=5,
                                 vocab_size=10, special_token_ids=(0, 2), mlm_probability=1e-9, at_least_one=True)
    assert (labels != -100).sum() == 1 and labels[0, 0] == labels[0, 3] == -100
    with pytest.raises(DataError, match="no token to mask"):
        mask_tokens(np.array([[0, 2]]), np.ones((1, 2)), np.random.default_rng(0), mask_token_id=5, vocab_size=10,
                    special_token_ids=(0, 2), at_least_one=True)
    with pytest.raises(ValueError, match="mlm_probability must be in"):
        mask_tokens(ids, np.ones_like(ids), np.random.default_rng(0), mask_token_id=5, vocab_size=10,
                    mlm_probability=0)


def test_utf8_text_and_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": "été", "label": lab}, ensure_ascii=False) for lab in ("négatif", "positif")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts, _, raw = extract_fields(read_records(path), text_field="text", label_field="label")
    assert texts == ["été", "été"] and LabelSpec.from_values(raw).id2label == {0: "négatif", 1: "positif"}
    with pytest.raises(DataError, match="every label is 'négatif': a classifier needs at least 2 classes"):
        LabelSpec.from_values(raw[:1])
