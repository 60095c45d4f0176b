"""fill-mask / feature-extraction pipelines and the yoso-np command line, on a tiny random MLM."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.hubcache import make_hub_cache
from yoso_np import Tokenizer, YosoConfig, YosoForMaskedLM, YosoModel, pipeline
from yoso_np.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer"
TEXT = "Paris is the <mask> of France."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random YosoForMaskedLM saved with the fixture tokenizer, as a hub repo folder looks."""
    folder = tmp_path_factory.mktemp("tiny-yoso")
    config = YosoConfig(vocab_size=320, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=37, max_position_embeddings=64)
    YosoForMaskedLM(config, seed=3).save_pretrained(folder)
    Tokenizer.from_pretrained(FIXTURE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fill(model_dir):
    return pipeline("fill-mask", model_dir)


def softmax_at_masks(pipe, text):
    """Probabilities over the vocabulary at each mask, computed here from the model's logits."""
    batch = pipe.tokenizer(text)
    logits = np.asarray(pipe.model(**batch).logits[0], dtype=np.float64)
    rows = logits[batch["input_ids"][0] == pipe.tokenizer.mask_token_id]
    probs = np.exp(rows - rows.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


def flat(result):
    """The predictions of a one-mask result or of a per-mask list, in one list."""
    return [p for row in (result if isinstance(result[0], list) else [result]) for p in row]


# ------------------------------------------------------------------------------------------------ fill-mask
def test_fill_mask_one_mask(fill):
    out = fill(TEXT, top_k=4)
    assert isinstance(out, list) and len(out) == 4
    assert all(set(p) == {"score", "token", "token_str", "sequence"} for p in out)
    scores = [p["score"] for p in out]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    probs = softmax_at_masks(fill, TEXT)[0]
    # the pipeline runs the MLM head on the mask rows alone: the same logits up to float32 rounding
    np.testing.assert_allclose(scores, np.sort(probs)[::-1][:4], rtol=1e-6)
    tok = fill.tokenizer
    for p in out:
        assert isinstance(p["token"], int) and probs[p["token"]] == pytest.approx(p["score"], rel=1e-6)
        assert p["token_str"] == tok.decode([p["token"]])
        ids = tok.encode(TEXT)
        ids[ids.index(tok.mask_token_id)] = p["token"]
        assert p["sequence"] == tok.decode(ids, skip_special_tokens=True)
        assert p["sequence"].startswith("Paris is the") and p["sequence"].endswith(" of France.")


def test_fill_mask_top_k_covers_the_vocabulary(fill):
    out = fill(TEXT, top_k=1000)
    assert len(out) == 320 and sum(p["score"] for p in out) == pytest.approx(1.0, abs=1e-12)
    assert len(fill(TEXT, top_k=1)) == 1
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        fill(TEXT, top_k=0)


def test_fill_mask_several_masks_and_lists(fill):
    text = "The <mask> runs past the <mask> mill."
    out = fill(text, top_k=3)
    assert len(out) == 2 and all(len(row) == 3 for row in out)
    probs = softmax_at_masks(fill, text)
    for row, mask_probs in zip(out, probs):
        assert [p["score"] for p in row] == pytest.approx(np.sort(mask_probs)[::-1][:3].tolist(), rel=1e-6)
        assert all(p["sequence"].count("<mask>") == 1 for p in row)  # the other mask stays visible

    texts = [TEXT, "a <mask>", text]
    batch = fill(texts, top_k=2)
    assert len(batch) == 3
    for single_text, result in zip(texts, batch):  # padding in the batch changes nothing
        alone = fill(single_text, top_k=2)
        assert len(result) == len(alone) and isinstance(result[0], list) == isinstance(alone[0], list)
        assert [p["token"] for p in flat(result)] == [p["token"] for p in flat(alone)]
        assert [p["score"] for p in flat(result)] == pytest.approx([p["score"] for p in flat(alone)], rel=1e-5)


def test_fill_mask_targets(fill):
    tok = fill.tokenizer
    out = fill(TEXT, targets=["Ġthe", "Ġof"], top_k=5)
    assert sorted(p["token"] for p in out) == sorted(tok.convert_tokens_to_ids(["Ġthe", "Ġof"]))
    probs = softmax_at_masks(fill, TEXT)[0]
    assert [p["score"] for p in out] == pytest.approx(sorted((probs[p["token"]] for p in out), reverse=True), rel=1e-6)
    with pytest.warns(UserWarning, match="'zz' is not in the vocabulary"):
        assert [p["token"] for p in fill(TEXT, targets="zz")] == [tok.convert_tokens_to_ids("z")]


def test_fill_mask_errors(fill):
    with pytest.raises(ValueError, match="no mask token '<mask>' in the input texts\\[1\\]"):
        fill([TEXT, "no mask here"])
    with pytest.raises(ValueError, match=r"text 0 has \d+ tokens, more than the limit of 64"):
        fill("the river " * 40 + "<mask>")


# ------------------------------------------------------------------------------------------------ feature-extraction
def test_feature_extraction(model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the MLM head is dropped without a warning
        embed = pipeline("feature-extraction", model_dir)
    assert isinstance(embed.model, YosoModel)
    tok = embed.tokenizer
    nested = embed("the old mill")
    n = len(tok.encode("the old mill"))
    assert isinstance(nested, list) and np.array(nested).shape == (1, n, 32)
    mlm = YosoForMaskedLM.from_pretrained(model_dir)
    expected = mlm(**tok("the old mill"), output_hidden_states=True).hidden_states[-1]
    np.testing.assert_allclose(np.array(nested, dtype=np.float32), expected, rtol=1e-6, atol=1e-6)

    arrays = embed(["the old mill", "a"], return_tensors=True)
    assert [a.shape for a in arrays] == [(1, n, 32), (1, 3, 32)]
    np.testing.assert_allclose(arrays[0], expected, rtol=1e-5, atol=1e-5)

    from_object = pipeline("feature-extraction", mlm, tokenizer=tok)
    np.testing.assert_allclose(from_object("the old mill", return_tensors=True), expected, rtol=1e-6, atol=1e-6)


def test_pipeline_arguments(model_dir):
    mlm = YosoForMaskedLM.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="task must be one of"):
        pipeline("translation", model_dir)
    with pytest.raises(ValueError, match="a model object needs tokenizer="):
        pipeline("fill-mask", mlm)
    with pytest.raises(ValueError, match="only apply when model is a folder"):
        pipeline("fill-mask", mlm, tokenizer=model_dir, revision="main")
    with pytest.raises(TypeError, match="fill-mask needs a YosoForMaskedLM, got YosoModel"):
        pipeline("fill-mask", YosoModel(mlm.config), tokenizer=model_dir)
    with pytest.raises(TypeError, match="model must be a folder, a hub repo id or a yoso_np model"):
        pipeline("fill-mask", 3)
    small = YosoForMaskedLM(YosoConfig(vocab_size=100, hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
                                       intermediate_size=8, max_position_embeddings=16))
    with pytest.raises(ValueError, match="the tokenizer has 320 tokens but the model only 100"):
        pipeline("fill-mask", small, tokenizer=model_dir)
    same = pipeline("fill-mask", mlm, tokenizer=Tokenizer.from_pretrained(model_dir))
    assert same(TEXT, top_k=2) == pipeline("fill-mask", model_dir)(TEXT, top_k=2)


def test_pipeline_from_hub_cache(model_dir, tmp_path):
    files = {p.name: p for p in model_dir.iterdir()}
    make_hub_cache(tmp_path, "org/tiny-yoso", files)
    fill = pipeline("fill-mask", "org/tiny-yoso", cache_dir=tmp_path, local_files_only=True)
    assert fill(TEXT, top_k=3) == pipeline("fill-mask", model_dir)(TEXT, top_k=3)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_fill_mask_json_and_table(model_dir, fill, capsys):
    assert main(["fill-mask", str(model_dir), TEXT, "--top-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fill(TEXT, top_k=3)

    assert main(["fill-mask", str(model_dir), TEXT, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["score", "token", "sequence"]
    best = fill(TEXT, top_k=1)[0]
    assert lines[1].split()[0] == f"{best['score']:.4f}" and lines[1].endswith(best["sequence"])

    assert main(["fill-mask", str(model_dir), "The <mask> runs past the <mask> mill.", "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "mask 1 of 2" in out and "mask 2 of 2" in out


def test_cli_info(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "vocab_size: 320" in lines and "max_position_embeddings: 64" in lines
    assert "class: YosoForMaskedLM" in lines
    assert f"parameters: {YosoForMaskedLM.from_pretrained(model_dir).num_parameters():,}" in lines


def test_cli_reads_the_hub_cache(model_dir, tmp_path, capsys):
    make_hub_cache(tmp_path, "org/tiny-yoso", {p.name: p for p in model_dir.iterdir()})
    assert main(["info", "org/tiny-yoso", "--cache-dir", str(tmp_path), "--local-files-only"]) == 0
    assert "class: YosoForMaskedLM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["fill-mask", "{missing}", TEXT], "missing"),
    (["fill-mask", "{model}", "no mask here"], "no mask token '<mask>'"),
    (["fill-mask", "{model}", TEXT, "--top-k", "0"], "argument --top-k: must be a positive integer"),
    (["fill-mask", "{model}", TEXT, "--device", "tpu"], "argument --device: invalid choice"),
    (["info", "org/absent", "--local-files-only"], "config.json not found for hub repo 'org/absent'"),
    (["finetune-nope"], "invalid choice"),
    ([], "the following arguments are required: COMMAND"),
])
def test_cli_user_errors(model_dir, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "missing", model=model_dir) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("yoso-np: error: ") and message in err[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_python_dash_m(model_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "yoso_np", "fill-mask", str(model_dir), TEXT, "--json"],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 5
    bad = subprocess.run([sys.executable, "-m", "yoso_np", "info", str(model_dir / "missing")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("yoso-np: error: ") and "Traceback" not in bad.stderr
