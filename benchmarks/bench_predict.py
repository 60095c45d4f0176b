"""Rows per second of `yoso-np predict` on a corpus of mixed lengths: batches sorted by length against batches in
input order, and Ray Data (a local cluster, 2 model actors) against the in-process run.

    python benchmarks/bench_predict.py                       # tiny and base-width models, 2 interleaved rounds
    python benchmarks/bench_predict.py --models tiny --rounds 1 --rows 2000       # a smoke run

The corpus is a JSONL file of --rows rows whose lengths are spread log-uniformly from 4 to 500 tokens (the
test tokenizer, truncation on), the task text-classification, --batch-size 16. Each case is the whole command's
work, file to file (reading, tokenizing, the model, writing; the model loading included): `sorted` and `unsorted`
are predict.run_predict with the pipeline's batches sorted by length or not; `ray` is ray_data.run_ray on a
local cluster of --ray-cpus CPUs started beforehand (its start-up is printed, not counted). The cases run in
interleaved rounds (every case once, then all again), as the machine's speed drifts; the table has the median
rows/s per case and the ratios the issue asks about.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_info, progress  # noqa: E402
from yoso_np import Tokenizer, YosoConfig, YosoForSequenceClassification  # noqa: E402
from yoso_np.pipelines import pipeline  # noqa: E402
from yoso_np.predict import PredictOptions, run_predict  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer"
MODELS = {
    "tiny": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128),
    "base": dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=2, intermediate_size=3072),
}
WORDS = ("the river runs past the old mill and the wheel turns all day in the morning baker walks to buy flour "
         "village has a small school church with tall tower market on square bridge over zephyr quixotic").split()


def make_corpus(path, rows, seed=0):
    """rows JSONL rows; word counts log-uniform in [2, 200] (about 4 to 500 tokens with the test tokenizer)."""
    rng = np.random.default_rng(seed)
    counts = np.exp(rng.uniform(np.log(2), np.log(200), rows)).astype(int)
    with open(path, "w", encoding="utf-8") as f:
        for i, n in enumerate(counts):
            f.write(json.dumps({"id": i, "text": " ".join(rng.choice(WORDS, n))}) + "\n")


def make_model(folder, name):
    config = YosoConfig(vocab_size=320, max_position_embeddings=512, num_labels=3, **MODELS[name])
    YosoForSequenceClassification(config, seed=0).save_pretrained(folder)
    Tokenizer.from_pretrained(FIXTURE).save_pretrained(folder)


def run_local(model, corpus, out, options, sort):
    def make():
        pipe = pipeline(options.task, str(model), batch_size=options.batch_size)
        pipe.sort_by_length = sort
        return pipe

    return run_predict(make, corpus, out, options, model_id=str(model), quiet=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,base", help="tiny, base (default both)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the corpus (default 10000)")
    parser.add_argument("--base-rows", type=int, default=500,
                        help="rows for the base-width model (default 500: a run of the whole corpus takes "
                             "minutes per case on 2 cores)")
    parser.add_argument("--cases", default="sorted,unsorted,ray", help="sorted, unsorted, ray")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ray-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    options = PredictOptions("text-classification", batch_size=args.batch_size, truncation=True)
    times = {}
    try:
        ray = None
        if "ray" in cases:
            import ray

            from yoso_np.ray_data import run_ray
            start = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            progress(f"ray: local cluster of {args.ray_cpus} CPUs started in {time.perf_counter() - start:.1f} s")
        for name in args.models.split(","):
            rows = args.rows if name == "tiny" else min(args.rows, args.base_rows)
            corpus = work / f"{name}.jsonl"
            make_corpus(corpus, rows)
            make_model(work / name, name)
            for r in range(args.rounds):
                for case in cases:
                    out = work / f"out-{name}-{case}.jsonl"
                    start = time.perf_counter()
                    if case == "ray":
                        shutil.rmtree(work / f"ray-{name}", ignore_errors=True)
                        n = run_ray(str(work / name), str(corpus), f"{work}/ray-{name}/", options, quiet=True)
                    else:
                        n = run_local(work / name, corpus, out, options, sort=case == "sorted")
                    seconds = time.perf_counter() - start
                    times.setdefault((name, rows, case), []).append(seconds)
                    progress(f"{name} {case} round {r + 1}: {n} rows in {seconds:.1f} s = {n / seconds:.1f} rows/s")
        print(f"\n{machine_info()}\n")
        print("| model | rows | case | rows/s (median) | rounds (rows/s) | ratio |")
        print("|---|---:|---|---:|---|---|")
        for (name, rows, case), ts in times.items():
            rate = rows / statistics.median(ts)
            ratio = ""
            if case == "sorted" and (name, rows, "unsorted") in times:
                ratio = f"sorted / unsorted {rate / (rows / statistics.median(times[name, rows, 'unsorted'])):.2f}"
            if case == "ray" and (name, rows, "sorted") in times:
                ratio = f"ray / in-process {rate / (rows / statistics.median(times[name, rows, 'sorted'])):.2f}"
            print(f"| {name} | {rows} | {case} | {rate:.1f} | {', '.join(f'{rows / t:.1f}' for t in ts)} | {ratio} |")
        if "ray" in cases:
            print("\nPer round (interleaved, so each pair shares the machine's speed of the moment):")
            for name in args.models.split(","):
                rows = args.rows if name == "tiny" else min(args.rows, args.base_rows)
                for pair in (("sorted", "unsorted"), ("ray", "sorted")):
                    if all((name, rows, c) in times for c in pair):
                        ratios = [b / a for a, b in zip(times[name, rows, pair[0]], times[name, rows, pair[1]])]
                        print(f"- {name}: {pair[0]} / {pair[1]} rows/s per round: "
                              f"{', '.join(f'{x:.2f}' for x in ratios)}")
    finally:
        if "ray" in cases and ray is not None:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
