"""`yoso-np parity` on a tiny local checkpoint: CPU float64 reference, CPU float32, CUDA float32 on the emulator."""
import json

import numpy as np
import pytest

from tests.test_pipelines_cli import FIXTURE
from yoso_np import Tokenizer, YosoConfig, YosoForMaskedLM, YosoForQuestionAnswering
from yoso_np.cli import main
from yoso_np.testing import emulator, parity

needs_compiler = pytest.mark.skipif(not emulator.available(), reason="the CUDA emulator needs GCC (g++)")


def tiny(cls, folder):
    config = YosoConfig(vocab_size=320, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                        intermediate_size=37, max_position_embeddings=64, num_hash=8, hash_code_len=4)
    cls(config, seed=3).save_pretrained(folder)
    Tokenizer.from_pretrained(FIXTURE).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny(YosoForMaskedLM, tmp_path_factory.mktemp("tiny-mlm"))


@needs_compiler
def test_parity_json_covers_every_output_backend_and_mode(model_dir, capsys):
    assert main(["parity", model_dir, "--length", "12", "--batch", "2", "--grads", "--emulate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["backends"] == ["cpu-float32", "cuda-float32 (emulated)"]
    assert report["inputs"]["input_ids"] == [2, 12]
    outputs = ["embeddings", "layer 1", "attention 1", "layer 2", "attention 2", "head logits", "grad embeddings",
               "grad layer 1", "grad layer 2", "grad head"]
    for mode in ("expectation", "sampling"):
        for backend in report["backends"]:
            rows = [r for r in report["rows"] if r["mode"] == mode and r["backend"] == backend]
            assert [r["output"] for r in rows] == outputs
            for r in rows:
                assert 0 < r["max_rel"] < 1e-5 and r["max_abs"] > 0  # float32 against float64: rounding, not 0
                assert r["ok"] is (None if mode == "sampling" and r["output"].startswith("grad") else True)
                assert ("agree" in r) == (mode == "sampling")


def test_parity_table_and_exit_1_above_atol(model_dir, capsys):
    assert main(["parity", model_dir, "--text", "Paris is the capital.", "--text", "Hello.", "--mode", "expectation",
                 "--atol", "1e-12"]) == 1
    out = capsys.readouterr().out
    assert "reference cpu-float64" in out and "ABOVE" in out and "row(s) above tolerance" in out
    assert "skipped cuda-float32" in out or "cuda-float32 " in out  # no device here: said, not silently dropped
    header = next(line for line in out.splitlines() if line.startswith("mode"))
    assert header.split() == ["mode", "output", "backend", "max", "abs", "max", "rel", "agree"]


def test_parity_usage_errors(model_dir, capsys):
    assert main(["parity", model_dir]) == 2  # neither --text nor --length
    assert main(["parity", model_dir, "--length", "5", "--atol", "0"]) == 2
    assert "error" in capsys.readouterr().err


@needs_compiler
def test_parity_of_a_two_output_head_and_the_default_tolerance(tmp_path):
    folder = tiny(YosoForQuestionAnswering, tmp_path)
    report = parity.run_parity(folder, length=9, batch=1, seed=5, grads=True, emulate=True, modes=("sampling",))
    assert report["ok"] and report["atol"] == pytest.approx(1024 * np.finfo(np.float32).eps)
    heads = {r["output"] for r in report["rows"] if r["output"].startswith("head")}
    assert heads == {"head start_logits", "head end_logits"}
