"""Whole models on the emulated GPU (yoso_np.testing.emulated_cuda): every reference case of tests/test_gpu.py,
both attention modes and a training step against the CPU, a pipeline with device="cuda" and the fine-tuner with
--device cuda."""
import argparse
import json

import numpy as np
import pytest

import yoso_np
from tests import test_gpu
from tests.fixtures_io import list_cases
from yoso_np.testing import emulated_cuda, emulator
from yoso_np.train import add_finetune_arguments, run_finetune

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the CUDA emulator needs GCC (g++)")


@pytest.fixture
def cp():
    with emulated_cuda() as cupy:
        yield cupy


@pytest.mark.parametrize("name", list_cases())
def test_gpu_reference_cases_run_emulated(cp, name):
    """tests/test_gpu.py's own test, on the stand-in: all six classes, their losses and gradients on the GPU branch."""
    test_gpu.test_reference_cases_on_gpu(cp, name)


def small_model(use_expectation, cls=yoso_np.YosoForSequenceClassification, **kw):
    # head dim 16, 8 hashes of 4 bits: a few Hadamard tiles and a few hundred cumulation work items per launch
    config = yoso_np.YosoConfig(vocab_size=50, hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                                intermediate_size=40, max_position_embeddings=64, use_expectation=use_expectation,
                                num_hash=8, hash_code_len=4, conv_window=3, **kw)
    return cls(config, seed=0)


def inputs():
    ids = np.random.default_rng(1).integers(0, 50, (2, 21))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    return ids, mask


def token_agreement(cpu, gpu, tol):
    """Fraction of real tokens whose vectors agree (sampling: a projection at rounding level flips a bit)."""
    return np.isclose(gpu, cpu, rtol=tol, atol=tol).all(axis=-1).mean()


@pytest.mark.parametrize("use_expectation,use_fast_hash", [(True, True), (False, True), (False, False)])
def test_forward_on_the_emulated_gpu_matches_the_cpu(cp, use_expectation, use_fast_hash):
    model = small_model(use_expectation, use_fast_hash=use_fast_hash)
    ids, mask = inputs()
    cpu = model(ids, mask, rng=11, output_hidden_states=True)
    model.to("cuda")
    assert model.device == "cuda" and isinstance(next(iter(model.weights.values())), cp.ndarray)
    gpu = model(ids, mask, rng=11, output_hidden_states=True)
    assert isinstance(gpu.logits, cp.ndarray)
    for cpu_h, gpu_h in zip(cpu.hidden_states, gpu.hidden_states):
        kept = cp.asnumpy(gpu_h)[mask == 1], cpu_h[mask == 1]
        if use_expectation:
            np.testing.assert_allclose(*kept, rtol=1e-4, atol=1e-4)
        else:
            assert token_agreement(kept[1], kept[0], 1e-4) > 0.95


@pytest.mark.parametrize("use_expectation", [True, False])
def test_training_step_on_the_emulated_gpu_matches_the_cpu(cp, use_expectation):
    model = small_model(use_expectation)
    ids, mask = inputs()
    cpu_out, cpu_grads = model.forward_backward(ids, mask, labels=np.array([0, 1]), rng=3)
    model.to("cuda")
    gpu_out, gpu_grads = model.forward_backward(ids, mask, labels=np.array([0, 1]), rng=3)
    assert isinstance(gpu_out.loss, cp.ndarray) and abs(float(gpu_out.loss) - float(cpu_out.loss)) < 1e-4
    assert set(gpu_grads) == set(cpu_grads)
    for key, expected in cpu_grads.items():
        actual = cp.asnumpy(gpu_grads[key])
        scale = max(float(np.abs(expected).max()), 1e-6)
        # the sampled backward's codes can differ where a projection is at rounding level
        tol = 1e-3 if use_expectation else 5e-2
        assert float(np.abs(actual - expected).max()) <= tol * scale, key


def test_fill_mask_pipeline_with_device_cuda(tmp_path):
    from tests.test_pipelines_cli import FIXTURE, TEXT

    config = yoso_np.YosoConfig(vocab_size=320, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                intermediate_size=37, max_position_embeddings=64)
    yoso_np.YosoForMaskedLM(config, seed=3).save_pretrained(tmp_path)
    yoso_np.Tokenizer.from_pretrained(FIXTURE).save_pretrained(tmp_path)
    cpu = yoso_np.pipeline("fill-mask", str(tmp_path))(TEXT, top_k=3)
    with emulated_cuda():
        pipe = yoso_np.pipeline("fill-mask", str(tmp_path), device="cuda")
        assert pipe.model.device == "cuda"
        gpu = pipe(TEXT, top_k=3)
    assert [p["token"] for p in gpu] == [p["token"] for p in cpu]
    np.testing.assert_allclose([p["score"] for p in gpu], [p["score"] for p in cpu], rtol=1e-4)


def test_finetune_with_device_cuda(tmp_path, monkeypatch):
    from tests.test_train import FIXTURE_TOKENIZER, write_sentiment

    launches = []
    launch = emulator.Kernel.__call__
    monkeypatch.setattr(emulator.Kernel, "__call__", lambda self, *a, **k: launches.append(self.name) or
                        launch(self, *a, **k))

    tok = yoso_np.Tokenizer.from_pretrained(FIXTURE_TOKENIZER)
    config = yoso_np.YosoConfig(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id, hidden_size=32,
                                num_attention_heads=2, num_hidden_layers=1, intermediate_size=40,
                                max_position_embeddings=64, use_expectation=False, num_hash=4, hash_code_len=4)
    yoso_np.YosoForMaskedLM(config, seed=0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    train_file = write_sentiment(tmp_path / "t.jsonl", 8, 0)
    parser = add_finetune_arguments(argparse.ArgumentParser(prog="yoso-np finetune"))
    argv = [str(tmp_path / "base"), "--train", train_file, "--output-dir", str(tmp_path / "out"), "--epochs", "1",
            "--batch-size", "4", "--quiet", "--device", "cuda"]
    with emulated_cuda():
        assert run_finetune(parser.parse_args(argv)) == 0
    assert {"fast_hash", "lsh_cumulation_shared", "lsh_weighted_cumulation_shared"} <= set(launches)  # on the "GPU"
    log = [json.loads(line) for line in open(tmp_path / "out" / "train_log.jsonl")]
    assert log and all(np.isfinite(row["loss"]) for row in log if "loss" in row)
    assert yoso_np.YosoForSequenceClassification.from_pretrained(tmp_path / "out").device == "cpu"
