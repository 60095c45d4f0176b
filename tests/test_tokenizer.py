"""yoso_np.Tokenizer on the tiny RoBERTa-style fixture (tests/make_tokenizer_fixture.py writes it)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.hubcache import make_hub_cache
from yoso_np import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer"
JSON_FILES = ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")
BPE_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json")
SENTENCES = ["Paris is the <mask> of France.", "The river<mask> runs past the old mill.", "Café 🙂 naïve",
             " leading space and <mask>", "<mask>", "a  <mask>  b . ,it's", "x <s> y </s> z"]


def copy_files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FIXTURE / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained(FIXTURE)


@pytest.fixture(params=["tokenizer.json", "vocab+merges"])
def folder(request, tmp_path):
    return copy_files(tmp_path / "tok", JSON_FILES if request.param == "tokenizer.json" else BPE_FILES)


def test_fixture_layout_is_robertas():
    vocab = json.loads((FIXTURE / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == len(vocab) - 1 and 280 <= len(vocab) <= 400
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 50_000


def test_both_formats_give_the_same_tokenizer(folder, tok):
    loaded = Tokenizer.from_pretrained(folder)
    assert loaded.vocab_size == tok.vocab_size == 320
    assert (loaded.mask_token, loaded.mask_token_id, loaded.pad_token_id) == ("<mask>", 319, 1)
    for text in SENTENCES:
        assert loaded.encode(text) == tok.encode(text), text
    assert loaded.encode(SENTENCES[0], SENTENCES[1]) == tok.encode(SENTENCES[0], SENTENCES[1])


def test_roberta_layout_of_single_and_pair(tok):
    a, b = tok.encode("the mill", add_special_tokens=False), tok.encode("the river", add_special_tokens=False)
    assert tok.encode("the mill") == [0, *a, 2]
    assert tok.encode("the mill", "the river") == [0, *a, 2, 2, *b, 2]


def test_mask_takes_the_space_before_it(tok):
    ids = tok.encode("Paris is the <mask>.")
    assert tok.convert_ids_to_tokens(ids)[-4:] == ["Ġthe", "<mask>", ".", "</s>"]


def test_decode_round_trip(tok):
    for text in SENTENCES:
        ids = tok.encode(text)
        assert tok.decode(ids[1:-1]) == text or "<mask>" in text  # the mask swallows its leading space
        assert tok.decode(np.array(ids)).startswith("<s>")
    text = "The river runs past the old mill. Café 🙂 naïve, 2021!"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.decode(tok.encode("the <mask>"), skip_special_tokens=True) == "the"
    assert tok.convert_ids_to_tokens(0) == "<s>"


def test_model_max_length_and_config(tok, tmp_path):
    assert tok.model_max_length == 512
    folder = copy_files(tmp_path / "nolimit", ("vocab.json", "merges.txt"))
    bare = Tokenizer.from_pretrained(folder)
    assert bare.model_max_length is None and bare.mask_token == "<mask>"
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16, "pad_token": "</s>"}))
    limited = Tokenizer.from_pretrained(folder)
    assert limited.model_max_length == 16 and limited.pad_token_id == 2


def test_padding_truncation_and_token_types(tok):
    out = tok(["the mill", "the river runs past the old mill"], return_token_type_ids=True)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 and v.shape == out["input_ids"].shape for v in out.values())
    short = tok.encode("the mill")
    n = len(short)
    assert out["input_ids"][0, :n].tolist() == short
    assert (out["input_ids"][0, n:] == tok.pad_token_id).all()
    assert out["attention_mask"][0].tolist() == [1] * n + [0] * (out["input_ids"].shape[1] - n)
    assert out["attention_mask"][1].all() and not out["token_type_ids"].any()

    single = tok("the mill")
    assert single["input_ids"].shape == (1, n) and "token_type_ids" not in single
    assert tok("the mill", padding="max_length", max_length=12)["input_ids"].shape == (1, 12)

    cut = tok(["the river runs past the old mill and the mill wheel turns"], truncation=True, max_length=6)
    assert cut["input_ids"].shape == (1, 6) and cut["input_ids"][0, -1] == 2
    pair = tok("the river runs past the old mill", "a b", truncation=True, max_length=9)["input_ids"][0].tolist()
    first = tok.encode("the river runs past the old mill", add_special_tokens=False)
    assert pair == [0, *first[:3], 2, 2, *tok.encode("a b", add_special_tokens=False), 2]  # the longer one is cut

    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than the limit of 5 \(max_length\)"):
        tok(["a", "the river runs past the old mill"], max_length=5)
    with pytest.raises(ValueError, match="padding=False needs texts of equal length"):
        tok(["a", "the river runs"], padding=False)
    assert tok(["the sun", "the fox"], padding=False)["input_ids"].shape == (2, 7)


def test_bad_arguments(tok, tmp_path):
    with pytest.raises(TypeError, match="texts must be a str or a non-empty list of str"):
        tok(3)
    with pytest.raises(ValueError, match="texts must not be empty"):
        tok([])
    with pytest.raises(ValueError, match="text_pairs must have one entry per text"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding must be one of"):
        tok("a", padding="left")
    with pytest.raises(ValueError, match="token id 999 is outside the vocabulary"):
        tok.decode([0, 999])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder .*empty.*tokenizer\.json, or vocab\.json \+ merges\.txt"):
        Tokenizer.from_pretrained(empty)
    copy_files(empty, ["vocab.json"])  # merges.txt missing
    with pytest.raises(FileNotFoundError, match="tried tokenizer.json"):
        Tokenizer.from_pretrained(empty)
    (empty / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_pretrained(empty)


def test_save_pretrained_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(JSON_FILES)
    again = Tokenizer.from_pretrained(tmp_path / "saved")
    assert again.model_max_length == 512 and again.special_tokens.keys() == tok.special_tokens.keys()
    for text in SENTENCES:
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("names", [JSON_FILES, BPE_FILES], ids=["tokenizer.json", "vocab+merges"])
def test_load_from_hub_cache(tmp_path, monkeypatch, tok, names):
    cache = tmp_path / "hub"
    make_hub_cache(cache, "org/tiny-yoso", {n: FIXTURE / n for n in names})
    loaded = Tokenizer.from_pretrained("org/tiny-yoso", cache_dir=cache, local_files_only=True)
    assert loaded.encode(SENTENCES[0]) == tok.encode(SENTENCES[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Tokenizer.from_pretrained("org/tiny-yoso", cache_dir=cache).vocab_size == 320
    with pytest.raises(FileNotFoundError, match=r"hub repo 'org/other'"):
        Tokenizer.from_pretrained("org/other", cache_dir=cache)


@pytest.mark.torch
def test_parity_with_transformers_roberta(folder):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.RobertaTokenizerFast.from_pretrained(folder)
    ours = Tokenizer.from_pretrained(folder)
    for text in SENTENCES:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.encode(SENTENCES[0], SENTENCES[2]) == theirs(SENTENCES[0], SENTENCES[2])["input_ids"]
    batch = theirs(SENTENCES, padding=True, return_tensors="np")
    mine = ours(SENTENCES)
    np.testing.assert_array_equal(mine["input_ids"], batch["input_ids"])
    np.testing.assert_array_equal(mine["attention_mask"], batch["attention_mask"])
    assert (ours.mask_token_id, ours.pad_token_id, ours.vocab_size) == (theirs.mask_token_id, theirs.pad_token_id,
                                                                         len(theirs))
