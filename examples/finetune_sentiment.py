"""Fine-tune a YOSO classifier on a small generated sentiment task with yoso_np's torch-free SGD trainer.

    python examples/finetune_sentiment.py                        # tiny random model + the test tokenizer, < 1 min
    python examples/finetune_sentiment.py --model uw-madison/yoso-4096 --epochs 1   # a real checkpoint (slow on CPU)

It writes train.jsonl / test.jsonl into the output folder, runs the same code as
`yoso-np finetune MODEL --train train.jsonl --eval test.jsonl --output-dir OUT/model`, then loads the saved model
back and prints its held-out accuracy and a few predictions.
"""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="YOSO checkpoint folder or hub id (default: a tiny random model)")
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    parser.add_argument("--train-size", type=int, default=800)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


OPTIONS = parse_args()
if OPTIONS.model is None:
    # the tiny model's matrices are too small for BLAS threads to pay off (about 4x faster on 2 cores without);
    # this must be set before numpy is imported
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

import numpy as np  # noqa: E402

from yoso_np import YosoConfig, YosoForMaskedLM, YosoForSequenceClassification  # noqa: E402
from yoso_np.tokenizer import Tokenizer  # noqa: E402
from yoso_np.train import add_finetune_arguments, run_finetune  # noqa: E402

FIXTURE_TOKENIZER = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "tokenizer")
POSITIVE = ["great", "wonderful", "lovely", "superb", "charming"]
NEGATIVE = ["awful", "boring", "dreadful", "clumsy", "dull"]
SUBJECTS = ["the film", "this book", "the plot", "our dinner", "the hotel", "that song", "the ending"]
FILLERS = ["was", "felt", "seemed", "really", "quite", "truly", "honestly", "overall", "today", "again"]


def sentence(rng, positive):
    """A subject, some fillers and one sentiment word, in a random order of fillers around it."""
    words = [str(w) for w in rng.choice(FILLERS, rng.integers(1, 4))]
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if positive else NEGATIVE)))
    return " ".join([str(rng.choice(SUBJECTS))] + words)


def write_split(path, n, rng):
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            positive = bool(rng.integers(2))
            label = "positive" if positive else "negative"
            f.write(json.dumps({"text": sentence(rng, positive), "label": label}) + "\n")


def tiny_model(folder, seed):
    """A small random YOSO masked-LM with the tokenizer of the tests: the finetuner adds a classifier head."""
    tok = Tokenizer.from_pretrained(FIXTURE_TOKENIZER)
    config = YosoConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                        initializer_range=0.2)  # larger than BERT's 0.02: SGD from scratch leaves its plateau sooner
    YosoForMaskedLM(config, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main(options):
    out = options.out or tempfile.mkdtemp(prefix="yoso-finetune-")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(options.seed)
    train_file, test_file = os.path.join(out, "train.jsonl"), os.path.join(out, "test.jsonl")
    write_split(train_file, options.train_size, rng)
    write_split(test_file, options.test_size, rng)
    model_path = options.model or tiny_model(os.path.join(out, "tiny-random-yoso"), options.seed)
    model_dir = os.path.join(out, "model")
    print(f"data and results in {out}")

    argv = [model_path, "--train", train_file, "--eval", test_file, "--output-dir", model_dir,
            "--epochs", str(options.epochs), "--batch-size", "32", "--lr", str(options.lr), "--momentum", "0.9",
            "--warmup-steps", "5", "--max-length", "32", "--seed", str(options.seed), "--save-steps", "0",
            "--save-total-limit", "1"]
    status = run_finetune(add_finetune_arguments(argparse.ArgumentParser()).parse_args(argv))
    if status:
        return status

    # the saved folder is an ordinary checkpoint: load it back and classify the held-out sentences
    model = YosoForSequenceClassification.from_pretrained(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in open(test_file, encoding="utf-8")]
    predicted = []
    for start in range(0, len(rows), 64):
        batch = tok([r["text"] for r in rows[start:start + 64]], truncation=True, max_length=32)
        predicted += [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    accuracy = np.mean([p == r["label"] for p, r in zip(predicted, rows)])
    for r, p in list(zip(rows, predicted))[:5]:
        print(f"  {r['text']!r:45} -> {p}")
    print(f"held-out accuracy: {accuracy:.3f} on {len(rows)} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main(OPTIONS))
