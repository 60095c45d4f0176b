"""yoso_np never imports torch, transformers or another autograd framework, even where they are installed.

A fresh interpreter imports every module of the package and runs the main paths (loading a checkpoint, the
torch-free .bin reader, forward and backward in both attention modes, a few training steps, tokenizing); then no
such module may be in sys.modules."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = ("torch", "transformers", "jax", "tensorflow", "flax")

SCRIPT = r"""
import importlib, json, os, pkgutil, sys, tempfile
import numpy as np
import yoso_np
from yoso_np import Tokenizer, YosoForSequenceClassification, YosoForMaskedLM, YosoConfig
from yoso_np.data import Dataset
from yoso_np.train import TrainingArguments, train

FORBIDDEN = {forbidden!r}
fixtures = {fixtures!r}
missing = {{}}
for info in pkgutil.walk_packages(yoso_np.__path__, "yoso_np."):
    if info.name.endswith("__main__"):  # runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:  # an optional dependency (ray, cupy, ...) that is not installed
        if (exc.name or "").split(".")[0] in FORBIDDEN:
            raise
        missing[info.name] = exc.name
mlm = YosoForMaskedLM.from_pretrained(os.path.join(fixtures, "ref", "mlm_basic"))
mlm(input_ids=np.array([[0, 5, 6, 7, 2]]), labels=np.array([[-100, 5, -100, 7, -100]]))
legacy = YosoForMaskedLM.from_pretrained(os.path.join(fixtures, "legacy"))  # pytorch_model.bin, read without torch
config = YosoConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                    max_position_embeddings=20, use_expectation=False, num_hash=4, hash_code_len=4, conv_window=3)
clf = YosoForSequenceClassification(config, seed=0)
clf.forward_backward(np.array([[0, 5, 6, 7, 2]]), labels=[1], rng=0, training=True)
rows = [np.array([0, 4 + i % 7, 9, 2]) for i in range(8)]
with tempfile.TemporaryDirectory() as out:
    train(clf, Dataset(rows, {{"labels": np.arange(8) % 2}}, pad_token_id=1), args=TrainingArguments(
        output_dir=out, epochs=1, batch_size=4, momentum=0.9, save_steps=1, quiet=True))
Tokenizer.from_pretrained(os.path.join(fixtures, "tokenizer"))(["a sentence", "another one"])
print(json.dumps({{"loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN), "missing": missing}}))
"""


def test_yoso_np_never_imports_torch():
    script = SCRIPT.format(forbidden=FORBIDDEN, fixtures=os.path.join(ROOT, "tests", "fixtures"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"yoso_np imported {report['loaded']}"
    assert not {"yoso_np.layers", "yoso_np.models", "yoso_np.train", "yoso_np.checkpoint"} & set(report["missing"])
