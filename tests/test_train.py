"""yoso_np.train: SGD, clipping, schedules, the loop, checkpoints, exact resume and the finetune command."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.compare import assert_same_file, assert_same_text
from tests.fixtures_io import load_optimizer_trajectories
from tests.gradcheck import assert_close
from yoso_np import YosoConfig, YosoForMaskedLM, YosoForSequenceClassification
from yoso_np.checkpoint import read_safetensors
from yoso_np.data import Dataset
from yoso_np.train import (SCHEDULES, SGD, TrainingArguments, UsageError, add_finetune_arguments, clip_grad_norm,
                           classification_metrics, decays, evaluate, global_grad_norm, list_checkpoints, lr_factor,
                           main, multi_label_metrics, run_finetune, train)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
WORDS = "good bad great awful fine nice poor cool warm cold".split()


def tiny_config(**overrides):
    settings = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=64, initializer_range=0.2)
    return YosoConfig(**{**settings, **overrides})


# -- the optimizer ----------------------------------------------------------------------------------------------
def test_decay_groups_as_the_trainer():
    assert decays("yoso.encoder.layer.0.attention.self.query.weight")
    assert decays("yoso.embeddings.word_embeddings.weight")
    assert not decays("yoso.encoder.layer.0.output.dense.bias")
    assert not decays("yoso.embeddings.LayerNorm.weight") and not decays("cls.predictions.bias")


def test_sgd_by_hand():
    w = {"dense.weight": np.array([1.0, -2.0], np.float32), "dense.bias": np.array([0.5], np.float32)}
    g = {"dense.weight": np.array([0.1, 0.2], np.float32), "dense.bias": np.array([1.0], np.float32)}
    weight = w["dense.weight"]
    opt = SGD(w, lr=0.5, momentum=0.9, weight_decay=0.1)
    opt.step(g)
    # decayed gradient: [0.1 + 0.1, 0.2 - 0.2]; first buffer = that gradient; the bias is not decayed
    np.testing.assert_allclose(w["dense.weight"], [1 - 0.5 * 0.2, -2.0], rtol=1e-6)
    np.testing.assert_allclose(w["dense.bias"], [0.0], atol=1e-7)
    assert w["dense.weight"] is weight  # updated in place
    opt.step(g, lr=0.1)
    # buffer = 0.9 * [0.2, 0] + [0.1 + 0.1 * 0.9, 0.2 - 0.2] = [0.37, 0]
    np.testing.assert_allclose(w["dense.weight"], [0.9 - 0.1 * 0.37, -2.0], rtol=1e-6)
    np.testing.assert_allclose(w["dense.bias"], [-0.1 * 1.9], rtol=1e-6)

    w = {"a.weight": np.array([1.0], np.float32)}
    opt = SGD(w, lr=1.0, momentum=0.5, nesterov=True)
    opt.step({"a.weight": np.array([2.0], np.float32)})  # buf 2, update 2 + 0.5 * 2
    opt.step({"a.weight": np.array([2.0], np.float32)})  # buf 3, update 2 + 0.5 * 3
    np.testing.assert_allclose(w["a.weight"], [1.0 - 3.0 - 3.5])
    with pytest.raises(ValueError, match="nesterov needs a momentum"):
        SGD(w, lr=1.0, nesterov=True)
    with pytest.raises(ValueError, match="grads lacks 1 weight"):
        opt.step({})


@pytest.mark.torch
@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.0), (0.9, False, 0.01),
                                                               (0.9, True, 0.1)])
def test_sgd_matches_torch(momentum, nesterov, weight_decay):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {"l.weight": (4, 3), "l.bias": (4,), "LayerNorm.weight": (3,)}
    w = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in w.items()}
    groups = [{"params": [p for k, p in params.items() if decays(k)], "weight_decay": weight_decay},
              {"params": [p for k, p in params.items() if not decays(k)], "weight_decay": 0.0}]
    reference = torch.optim.SGD(groups, lr=0.1, momentum=momentum, nesterov=nesterov)
    ours = SGD(w, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for step in range(5):
        grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.5)
        assert clip_grad_norm(grads, 1.5) == pytest.approx(float(total), rel=1e-5)
        reference.step()
        ours.step(grads, lr=0.1)
    for k, p in params.items():
        np.testing.assert_allclose(w[k], p.detach().numpy(), rtol=1e-5, atol=1e-6)


TRAJECTORIES = load_optimizer_trajectories()  # recorded from torch by tests/make_fixtures.py


def test_trajectories_cover_every_rule_and_schedule():
    settings = [case["settings"] for case in TRAJECTORIES.values()]
    assert {s["schedule"] for s in settings} == set(SCHEDULES)
    assert any(s["nesterov"] for s in settings) and any(s["momentum"] and not s["nesterov"] for s in settings)
    assert any(not s["momentum"] for s in settings) and any(s["warmup_steps"] for s in settings)
    assert any(s["weight_decay"] and s["no_decay"] for s in settings) and any(s["max_grad_norm"] for s in settings)
    clipped = [case["grad_norm"] > case["settings"]["max_grad_norm"] for case in TRAJECTORIES.values()
               if case["settings"]["max_grad_norm"]]
    assert any(c.any() and not c.all() for c in clipped)  # clipping acts on some steps, not all


@pytest.mark.parametrize("name", sorted(TRAJECTORIES))
def test_sgd_clipping_and_schedules_follow_torch_trajectories(name):
    """The training loop's step (clip or measure the norm, lr from the schedule, SGD step) replayed on recorded
    gradients reproduces torch's weights after every step, and its momentum buffers at the end."""
    case = TRAJECTORIES[name]
    s = case["settings"]
    assert [k for k in case["initial"] if not decays(k)] == s["no_decay"]  # the Trainer's decay groups
    w = {k: v.copy() for k, v in case["initial"].items()}
    opt = SGD(w, lr=s["lr"], momentum=s["momentum"], nesterov=s["nesterov"], weight_decay=s["weight_decay"])
    for step in range(s["steps"]):
        grads = {k: g[step].copy() for k, g in case["grads"].items()}
        norm = clip_grad_norm(grads, s["max_grad_norm"]) if s["max_grad_norm"] else global_grad_norm(grads)
        assert norm == pytest.approx(case["grad_norm"][step], rel=1e-5), f"step {step}: gradient norm"
        lr = s["lr"] * lr_factor(step, total_steps=s["steps"], warmup_steps=s["warmup_steps"], schedule=s["schedule"])
        assert lr == pytest.approx(case["lr"][step], rel=1e-6, abs=1e-12), f"step {step}: lr"
        opt.step(grads, lr)
        for k, expected in case["weights"].items():
            assert_close(w[k], expected[step], rtol=1e-5, atol=1e-6, name=f"step {step}: {k}")
    buffers = opt.state_dict()
    assert set(buffers) == set(case["momentum"])
    for k, expected in case["momentum"].items():
        assert_close(buffers[k], expected, rtol=1e-5, atol=1e-6, name=f"momentum buffer {k}")


def test_clip_grad_norm_by_hand():
    grads = {"a": np.array([3.0], np.float32), "b": np.array([[4.0, 0.0]], np.float32)}
    assert global_grad_norm(grads) == pytest.approx(5.0)
    assert clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    np.testing.assert_allclose(grads["a"], [3.0])  # under the limit: untouched
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * scale], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[4.0 * scale, 0.0]], rtol=1e-6)
    assert global_grad_norm(grads) == pytest.approx(1.0, rel=1e-5)


def test_schedules_by_hand():
    linear = [lr_factor(s, total_steps=10, warmup_steps=2) for s in range(11)]
    np.testing.assert_allclose(linear, [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0])
    constant = [lr_factor(s, total_steps=10, warmup_steps=4, schedule="constant") for s in range(6)]
    np.testing.assert_allclose(constant, [0, 0.25, 0.5, 0.75, 1, 1])
    assert lr_factor(0, total_steps=5) == 1.0 and lr_factor(4, total_steps=5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor(0, total_steps=5, schedule="cosine")


@pytest.mark.torch
def test_schedules_match_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    for schedule, make in (("linear", transformers.get_linear_schedule_with_warmup),
                           ("constant", transformers.get_constant_schedule_with_warmup)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        scheduler = make(opt, 3, 12) if schedule == "linear" else make(opt, 3)
        for step in range(12):
            expected = opt.param_groups[0]["lr"]
            assert 2.0 * lr_factor(step, total_steps=12, warmup_steps=3, schedule=schedule) == pytest.approx(expected)
            opt.step()
            scheduler.step()


def test_metrics_by_hand():
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], 4)
    # F1 per class: 0 -> 1, 1 -> 2/3, 2 -> 2/3; class 3 never occurs
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    m = multi_label_metrics(np.array([[1.0, -1.0], [2.0, 3.0]]), np.array([[1, 0], [0, 1]]))
    # tp 2, fp 1, fn 0 -> micro 4/5; label 0: 2/3, label 1: 1
    assert m["micro_f1"] == pytest.approx(0.8) and m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["exact_match"] == 0.5


# -- the loop on pre-tokenised data ----------------------------------------------------------------------------
def contains_token_data(rng, n, marker=4, copies=1):
    """Label 1 iff the row holds the marker token (``copies`` times): the classifier reads the first token, so
    this needs attention from it to the others."""
    rows, labels = [], rng.integers(0, 2, n)
    for label in labels:
        row = rng.integers(5, 100, rng.integers(6, 13))
        row[0] = 0
        if label:
            row[rng.choice(np.arange(1, len(row)), copies, replace=False)] = marker
        rows.append(row)
    return Dataset(rows, {"labels": labels}, pad_token_id=1)


def test_tiny_model_learns_a_synthetic_task(tmp_path):
    rng = np.random.default_rng(0)
    # with one marker the plateau before attention finds it lasts long for some seeds; with two it takes
    # 1 or 2 epochs for each of 8 seeds tried
    train_data, eval_data = contains_token_data(rng, 512, copies=2), contains_token_data(rng, 200, copies=2)
    model = YosoForSequenceClassification(tiny_config(), seed=0)
    started = time.time()
    summary = train(model, train_data, eval_data, args=TrainingArguments(
        output_dir=str(tmp_path / "out"), epochs=3, batch_size=32, lr=0.1, save_steps=0, quiet=True))
    assert time.time() - started < 60
    assert summary["global_step"] == 48 and summary["eval_accuracy"] >= 0.95, summary
    reloaded = YosoForSequenceClassification.from_pretrained(tmp_path / "out")
    assert evaluate(reloaded, eval_data)["accuracy"] == summary["eval_accuracy"]
    log = [json.loads(line) for line in open(tmp_path / "out" / "train_log.jsonl")]
    steps = [e for e in log if "loss" in e]
    assert [e["step"] for e in steps] == [10, 16, 20, 30, 32, 40, 48]
    assert set(steps[0]) == {"step", "epoch", "loss", "lr", "grad_norm"}
    assert [e["eval_accuracy"] for e in log if "eval_accuracy" in e][-1] == summary["eval_accuracy"]


@pytest.mark.parametrize("head", ["token", "choice", "qa", "regression", "multi-label"])
def test_train_runs_on_every_head(tmp_path, head):
    from yoso_np import YosoForMultipleChoice, YosoForQuestionAnswering, YosoForTokenClassification

    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 100, n) for n in (5, 7, 6, 4)]
    if head == "token":
        model = YosoForTokenClassification(tiny_config(num_labels=3))
        data = Dataset(rows, {"labels": [r % 3 for r in rows]}, pad_token_id=1, token_targets=("labels",))
        metric = "eval_macro_f1"
    elif head == "choice":
        model = YosoForMultipleChoice(tiny_config())
        data = Dataset([np.stack([r[:4], r[-4:]]) for r in rows], {"labels": np.array([0, 1, 1, 0])}, pad_token_id=1)
        metric = "eval_accuracy"
    elif head == "qa":
        model = YosoForQuestionAnswering(tiny_config())
        data = Dataset(rows, {"start_positions": np.array([1, 2, 0, 3]), "end_positions": np.array([2, 4, 1, 3])},
                       pad_token_id=1)
        metric = "eval_exact_match"
    elif head == "regression":
        model = YosoForSequenceClassification(tiny_config(num_labels=1, problem_type="regression"))
        data = Dataset(rows, {"labels": np.array([0.5, 1.0, -1.0, 2.0], np.float32)}, pad_token_id=1)
        metric = "eval_mse"
    else:
        model = YosoForSequenceClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
        data = Dataset(rows, {"labels": np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]}, pad_token_id=1)
        metric = "eval_micro_f1"
    before = {k: v.copy() for k, v in model.weights.items()}
    summary = train(model, data, data, args=TrainingArguments(output_dir=str(tmp_path), epochs=1, batch_size=2,
                                                               quiet=True))
    assert summary["global_step"] == 2 and metric in summary and np.isfinite(summary["eval_loss"])
    assert any(not np.array_equal(before[k], v) for k, v in model.weights.items())
    assert os.path.isfile(tmp_path / "model.safetensors") and list_checkpoints(tmp_path)[-1][0] == 2


def test_checkpoints_resume_bitwise_and_limit(tmp_path):
    """Resuming from any checkpoint (mid-epoch or at an epoch end) ends with the bytes of the uninterrupted run."""
    rng = np.random.default_rng(1)
    data = contains_token_data(rng, 40)
    args = dict(epochs=2, batch_size=8, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, warmup_steps=3,
                save_steps=3, logging_steps=2, seed=7, quiet=True)
    full = tmp_path / "full"
    train(YosoForSequenceClassification(tiny_config(), seed=0), data, data,
          args=TrainingArguments(output_dir=str(full), **args))
    assert [s for s, _ in list_checkpoints(full)] == [3, 5, 6, 9, 10]  # every 3 steps and at the 2 epoch ends
    ckpt = full / "checkpoint-6"
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= set(os.listdir(ckpt))
    state = json.load(open(ckpt / "trainer_state.json"))
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 1)
    assert state["data_order"]["generator_state"]["bit_generator"] == "PCG64"
    assert state["args"]["seed"] == 7 and state["labels"]["num_labels"] == 2
    momentum = read_safetensors(ckpt / "optimizer.safetensors")
    assert set(momentum) == set(read_safetensors(ckpt / "model.safetensors"))

    for resume_from in (3, 5, 9):
        part = tmp_path / f"from-{resume_from}"
        shutil.copytree(full, part)
        for step, path in list_checkpoints(part):
            if step > resume_from:
                shutil.rmtree(path)
        for name in ("model.safetensors", "config.json"):
            os.remove(part / name)
        (part / ".tmp-checkpoint-10").mkdir()  # as a kill during a save leaves it
        (part / ".tmp-checkpoint-10" / "model.safetensors").write_bytes(b"partial")
        model = YosoForSequenceClassification(tiny_config(), seed=123)  # other weights: all come from the checkpoint
        train(model, data, data, args=TrainingArguments(output_dir=str(part), resume=True, **args))
        assert_same_file(part / "model.safetensors", full / "model.safetensors",
                         f"model.safetensors resumed from step {resume_from}")
        assert_same_text((part / "train_log.jsonl").read_text(), (full / "train_log.jsonl").read_text(),
                         f"train_log.jsonl resumed from step {resume_from}")
        assert not (part / ".tmp-checkpoint-10").exists()

    limited = tmp_path / "limited"
    train(YosoForSequenceClassification(tiny_config(), seed=0), data, None,
          args=TrainingArguments(output_dir=str(limited), save_total_limit=2, **args))
    assert [s for s, _ in list_checkpoints(limited)] == [9, 10]
    assert_same_file(limited / "model.safetensors", full / "model.safetensors",
                     "model.safetensors with save_total_limit")


def test_resume_refuses_other_settings(tmp_path):
    data = contains_token_data(np.random.default_rng(0), 16)
    args = dict(output_dir=str(tmp_path), epochs=1, batch_size=8, quiet=True)
    train(YosoForSequenceClassification(tiny_config()), data, args=TrainingArguments(**args))
    with pytest.raises(UsageError, match="is not empty; pass --resume"):
        train(YosoForSequenceClassification(tiny_config()), data, args=TrainingArguments(**args))
    with pytest.raises(UsageError, match="it was trained with batch_size=8, now 4"):
        train(YosoForSequenceClassification(tiny_config()), data,
              args=TrainingArguments(**{**args, "batch_size": 4, "resume": True}))
    with pytest.raises(UsageError, match="it was trained with lr=0.01, now 0.002"):
        train(YosoForSequenceClassification(tiny_config()), data,
              args=TrainingArguments(**{**args, "lr": 0.002, "resume": True}))


def test_resume_refuses_other_options_and_takes_where_it_writes(tmp_path):
    data = contains_token_data(np.random.default_rng(0), 16)
    args = dict(output_dir=str(tmp_path / "run"), epochs=2, batch_size=8, quiet=True, save_steps=1)
    run = {"max_length": 512, "eval": "dev.jsonl", "cache_dir": None}
    train(YosoForSequenceClassification(tiny_config()), data, args=TrainingArguments(**args), run_info=run)
    os.remove(tmp_path / "run" / "model.safetensors")
    for name, value in (("max_length", 128), ("eval", None)):
        with pytest.raises(UsageError, match=f"it was trained with {name}={run[name]}, now {value}"):
            train(YosoForSequenceClassification(tiny_config()), data, args=TrainingArguments(**args, resume=True),
                  run_info={**run, name: value})
    free = {**args, "save_steps": 3, "logging_steps": 1, "save_total_limit": 2, "quiet": False, "resume": True}
    train(YosoForSequenceClassification(tiny_config()), data, args=TrainingArguments(**free),
          run_info={**run, "cache_dir": "elsewhere"})
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_training_arguments_validate():
    with pytest.raises(UsageError, match="batch_size must be a positive integer, got 0"):
        TrainingArguments(output_dir="x", batch_size=0).validate()
    with pytest.raises(UsageError, match="lr must be a positive number, got -1"):
        TrainingArguments(output_dir="x", lr=-1).validate()
    with pytest.raises(UsageError, match="schedule must be one of"):
        TrainingArguments(output_dir="x", schedule="cosine").validate()


# -- the finetune command ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random masked-LM checkpoint with the fixture tokenizer (a classifier head gets initialised)."""
    from yoso_np.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tiny-yoso")
    tok = Tokenizer.from_pretrained(FIXTURE_TOKENIZER)
    config = tiny_config(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
    YosoForMaskedLM(config, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_sentiment(path, n, seed, label=lambda words: "pos" if "good" in words else "neg"):
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            words = list(rng.choice(WORDS, rng.integers(3, 7)))
            f.write(json.dumps({"text": " ".join(words), "label": label(words)}) + "\n")
    return str(path)


def finetune(argv):
    parser = add_finetune_arguments(argparse.ArgumentParser(prog="yoso-np finetune"))
    return run_finetune(parser.parse_args(argv))


def test_finetune_writes_a_model_transformers_can_load(tmp_path, model_dir):
    train_file, eval_file = write_sentiment(tmp_path / "t.jsonl", 48, 0), write_sentiment(tmp_path / "e.jsonl", 16, 1)
    out = tmp_path / "out"
    assert finetune([model_dir, "--train", train_file, "--eval", eval_file, "--output-dir", str(out), "--epochs", "1",
                     "--batch-size", "16", "--quiet", "--seed", "3"]) == 0
    config = json.load(open(out / "config.json"))
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert config["architectures"] == ["YosoForSequenceClassification"]
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors",
            "train_log.jsonl", "checkpoint-3"} <= set(os.listdir(out))
    state = json.load(open(out / "checkpoint-3" / "trainer_state.json"))
    assert state["run"]["train"] == train_file and state["labels"]["id2label"] == {"0": "neg", "1": "pos"}
    from yoso_np.tokenizer import Tokenizer

    model, tok = YosoForSequenceClassification.from_pretrained(out), Tokenizer.from_pretrained(out)
    batch = tok(["good fine", "bad cold warm"])
    assert model(**batch).logits.shape == (2, 2)


@pytest.mark.torch
def test_finetuned_model_loads_in_transformers(tmp_path, model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    train_file = write_sentiment(tmp_path / "t.jsonl", 16, 0)
    assert finetune([model_dir, "--train", train_file, "--output-dir", str(out), "--epochs", "1", "--quiet"]) == 0
    reference = transformers.YosoForSequenceClassification.from_pretrained(out).eval()
    assert reference.config.id2label == {0: "neg", 1: "pos"}
    ours = YosoForSequenceClassification.from_pretrained(out)
    ids = np.array([[0, 50, 60, 70, 2]])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_finetune_masked_lm(tmp_path, model_dir):
    train_file = write_sentiment(tmp_path / "t.jsonl", 24, 0)
    out = tmp_path / "mlm"
    assert finetune([model_dir, "--task", "masked-lm", "--train", train_file, "--eval", train_file, "--output-dir",
                     str(out), "--epochs", "1", "--batch-size", "8", "--lr", "0.05", "--quiet"]) == 0
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert "eval_accuracy" in log[-1] and np.isfinite(log[-1]["eval_loss"])
    assert json.load(open(out / "config.json"))["architectures"] == ["YosoForMaskedLM"]


def test_finetune_csv_with_int_labels_and_pairs(tmp_path, model_dir):
    path = tmp_path / "pairs.csv"
    path.write_text("premise,hypothesis,label\ngood fine,bad,0\nwarm,cold cool,1\nnice,nice,2\n", encoding="utf-8")
    out = tmp_path / "out"
    assert finetune([model_dir, "--train", str(path), "--text-field", "premise", "--text-pair-field", "hypothesis",
                     "--output-dir", str(out), "--epochs", "1", "--quiet"]) == 0
    assert json.load(open(out / "config.json"))["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}


@pytest.mark.parametrize("setup, extra, expected", [
    ("missing", [], "no such file"),
    ("empty", [], "holds no records"),
    ("malformed", [], "train.jsonl, line 2: not valid JSON"),
    ("no-field", [], "train.jsonl, line 1: missing field 'label'"),
    ("mixed", [], "mixed label types"),
    ("non-empty", [], "is not empty; pass --resume"),
    ("ok", ["--text-field", "sentence"], "missing field 'sentence'"),
    ("ok", ["--eval", "{tmp}/other.tsv"], "other.tsv: no such file"),
    ("ok", ["--tokenizer", "{tmp}"], "cannot load the tokenizer"),
])
def test_finetune_bad_input_exits_2(tmp_path, model_dir, capsys, setup, extra, expected):
    train_file = tmp_path / "train.jsonl"
    out = tmp_path / "out"
    good = '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
    contents = {"empty": "", "malformed": good.splitlines()[0] + '\n{"text": "x",\n',
                "no-field": '{"text": "good"}\n', "mixed": '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n'}
    if setup != "missing":
        train_file.write_text(contents.get(setup, good), encoding="utf-8")
    if setup == "non-empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    argv = [model_dir, "--train", str(train_file), "--output-dir", str(out), "--quiet"]
    assert finetune(argv + [a.format(tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("yoso-np finetune: error:") and "Traceback" not in err
    if setup == "non-empty":
        assert os.listdir(out) == ["notes.txt"]


@pytest.mark.parametrize("option, value, expected", [
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--epochs", "-1", "must be a positive integer, got -1"),
    ("--lr", "0", "must be a positive number, got 0"),
    ("--lr", "nan", "must be a positive number"),
    ("--schedule", "cosine", "invalid choice"),
])
def test_finetune_bad_numbers_exit_2(tmp_path, model_dir, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        finetune([model_dir, "--train", "t.jsonl", "--output-dir", str(tmp_path), option, value])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    # the same check without argparse (a Namespace built by hand)
    args = add_finetune_arguments(argparse.ArgumentParser()).parse_args(
        [model_dir, "--train", "t.jsonl", "--output-dir", str(tmp_path / "o")])
    if option != "--schedule":
        setattr(args, option[2:].replace("-", "_"), float(value) if option == "--lr" else int(value))
        assert run_finetune(args) == 2 and "must be a positive" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, model_dir, capsys):
    train_file = write_sentiment(tmp_path / "t.jsonl", 64, 0)
    out = tmp_path / "out"
    code = finetune([model_dir, "--train", train_file, "--output-dir", str(out), "--lr", "1e30", "--max-grad-norm",
                     "0", "--momentum", "0", "--schedule", "constant", "--save-steps", "1", "--batch-size", "4",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "training diverged at step" in err and "Traceback" not in err
    failed_step = int(err.split("training diverged at step ")[1].split()[0])
    saved = list_checkpoints(out)
    assert saved and saved[-1][0] == failed_step - 1 and f"checkpoint-{failed_step - 1}, is intact" in err
    weights = read_safetensors(os.path.join(saved[-1][1], "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())
    assert not os.path.exists(out / "model.safetensors")


def test_kill_and_resume_is_bitwise_identical(tmp_path, model_dir):
    """SIGKILL a training process once it has written a checkpoint, resume it, and compare the final weights
    with an uninterrupted run byte for byte."""
    train_file = write_sentiment(tmp_path / "t.jsonl", 96, 0)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def command(out, *extra):
        return [sys.executable, "-m", "yoso_np.train", model_dir, "--train", train_file, "--eval", train_file,
                "--output-dir", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "0.05", "--weight-decay",
                "0.01", "--warmup-steps", "4", "--save-steps", "4", "--seed", "5", "--quiet", *extra]

    whole = tmp_path / "whole"
    subprocess.run(command(whole), env=env, check=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=env)
    try:
        while not list_checkpoints(killed) and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted_at = list_checkpoints(killed)[-1][0]
    assert interrupted_at < 36 and not (killed / "model.safetensors").exists()
    (killed / ".tmp-checkpoint-999").mkdir(exist_ok=True)  # a partial save: must be ignored
    subprocess.run(command(killed, "--resume"), env=env, check=True, timeout=300)
    assert_same_file(killed / "model.safetensors", whole / "model.safetensors",
                     "model.safetensors after kill and resume")
    assert_same_text((killed / "train_log.jsonl").read_text(), (whole / "train_log.jsonl").read_text(),
                     "train_log.jsonl after kill and resume")


def test_main_entry_point(tmp_path, model_dir, capsys):
    train_file = write_sentiment(tmp_path / "t.jsonl", 8, 0)
    assert main([model_dir, "--train", train_file, "--output-dir", str(tmp_path / "o"), "--epochs", "1"]) == 0
    assert "training done: global_step 1" in capsys.readouterr().out


def test_example_runs(tmp_path):
    """The example end to end on a few rows (its full size takes about half a minute)."""
    script = os.path.join(ROOT, "examples", "finetune_sentiment.py")
    result = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--train-size", "64", "--test-size",
                             "16", "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy: " in result.stdout and "on 16 sentences" in result.stdout
    assert os.path.isfile(tmp_path / "model" / "model.safetensors")


@pytest.mark.gpu
def test_training_on_cuda_follows_cpu(tmp_path, cupy):
    data = contains_token_data(np.random.default_rng(0), 24)
    args = dict(epochs=1, batch_size=8, lr=0.05, weight_decay=0.01, save_steps=2, quiet=True)
    cpu = YosoForSequenceClassification(tiny_config(), seed=0)
    train(cpu, data, data, args=TrainingArguments(output_dir=str(tmp_path / "cpu"), **args))
    gpu = YosoForSequenceClassification(tiny_config(), seed=0)
    summary = train(gpu, data, data, args=TrainingArguments(output_dir=str(tmp_path / "gpu"), device="cuda", **args))
    assert gpu.device == "cuda" and isinstance(next(iter(gpu.weights.values())), cupy.ndarray)
    for k, w in cpu.weights.items():
        np.testing.assert_allclose(cupy.asnumpy(gpu.weights[k]), w, rtol=1e-3, atol=1e-4, err_msg=k)
    assert np.isfinite(summary["eval_loss"])
    # resuming on the GPU from the step-2 checkpoint reproduces the GPU run
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "gpu", part)
    shutil.rmtree(part / "checkpoint-3")
    os.remove(part / "model.safetensors")
    train(YosoForSequenceClassification(tiny_config(), seed=1), data, data,
          args=TrainingArguments(output_dir=str(part), device="cuda", resume=True, **args))
    resumed = read_safetensors(part / "model.safetensors")
    whole = read_safetensors(tmp_path / "gpu" / "model.safetensors")
    for k in whole:
        np.testing.assert_allclose(resumed[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_yoso_np_finetune_is_wired_into_the_cli(tmp_path, capsys):
    from yoso_np.cli import main

    assert main(["finetune", str(tmp_path), "--train", str(tmp_path / "missing.jsonl"),
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and "Traceback" not in err
    assert main(["finetune", "--help"]) == 0
