"""`yoso-np predict` end to end on tiny checkpoints: every input and output format, every task, order and fields
kept, a run killed with SIGKILL at several points then rerun (the same bytes as an uninterrupted run), and every
bad input (exit 2, one line naming the file and row, no output)."""
import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.test_pipelines import CONTEXT, close, make_checkpoints
from tests.test_pipelines_cli import ROOT
from yoso_np import pipeline
from yoso_np.cli import main

WORDS = "the old mill river runs past Paris is capital of France village bridge market zephyr".split()


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": i, "text": " ".join(rng.choice(WORDS, int(rng.integers(1, 10)))), "note": f"n{i}"}
            for i in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("predict-models"))


def write(path, rows):
    """rows into a file of the format its extension names (CSV/TSV cells as strings)."""
    ext = path.suffix
    if ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif ext == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif ext in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if ext == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read(path):
    path = str(path)
    if path.endswith("/") or os.path.isdir(path):
        return [row for name in sorted(os.listdir(path)) for row in read(os.path.join(path, name))]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run(argv, capsys=None):
    code = main([str(a) for a in argv])
    return code, (capsys.readouterr() if capsys else None)


@pytest.mark.parametrize("source, output", [
    ("in.jsonl", "out.jsonl"), ("in.json", "out.parquet"), ("in.csv", "out.jsonl"), ("in.tsv", "shards/"),
    ("in.parquet", "out.parquet"),
])
def test_formats_keep_rows_fields_and_order(models, tmp_path, source, output):
    rows = corpus(23)
    src = write(tmp_path / source, rows)
    out = f"{tmp_path}/{output}"
    assert run(["predict", models["cls"], "--task", "sentiment-analysis", "--input", src, "--output", out,
                "--shard-size", "7", "--batch-size", "4", "--quiet"])[0] == 0
    got = read(out)
    if source.endswith((".csv", ".tsv")):
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
    expected = pipeline("text-classification", models["cls"])([r["text"] for r in rows])
    assert [{k: r[k] for k in rows[0]} for r in got] == rows  # every input field, in input order
    close([{"label": r["label"], "score": r["score"]} for r in got], expected)
    assert not os.path.exists(out.rstrip("/") + ".partial")
    if output.endswith("/"):
        assert sorted(os.listdir(out)) == [f"part-{i:05d}.jsonl" for i in range(4)]


def test_every_task(models, tmp_path, capsys):
    rows = corpus(9)
    src = write(tmp_path / "in.jsonl", rows)
    texts = [r["text"] for r in rows]

    def predict(model, task, *options):
        out = tmp_path / f"{task}-{len(options)}.jsonl"
        code, _ = run(["predict", model, "--task", task, "--input", src, "--output", out, "--quiet", *options],
                      capsys)
        assert code == 0
        return read(out)

    got = predict(models["cls"], "text-classification", "--top-k", "2")
    close([r["labels"] for r in got], pipeline("text-classification", models["cls"])(texts, top_k=2))
    got = predict(models["ner"], "ner", "--aggregation-strategy", "simple")
    close([r["entities"] for r in got], pipeline("ner", models["ner"])(texts, aggregation_strategy="simple"))
    got = predict(models["mlm"], "feature-extraction", "--normalize")
    close([r["embedding"] for r in got], pipeline("feature-extraction", models["mlm"])(texts, pooling="mean",
                                                                                       normalize=True))
    assert len(got[0]["embedding"]) == 32
    got = predict(models["mlm"], "feature-extraction", "--pooling", "none")
    close([r["embedding"] for r in got], pipeline("feature-extraction", models["mlm"])(texts))

    masked = write(tmp_path / "masked.jsonl", [{"text": t + " <mask>."} for t in texts])
    out = tmp_path / "fill.jsonl"
    assert run(["predict", models["mlm"], "--task", "fill-mask", "--input", masked, "--output", out, "--quiet",
                "--top-k", "2"])[0] == 0
    close([r["predictions"] for r in read(out)],
          pipeline("fill-mask", models["mlm"])([t + " <mask>." for t in texts], top_k=2))

    examples = [{"q": "Where is the mill?", "c": CONTEXT}, {"q": "Who?", "c": "The baker walks to the mill."}]
    qa_in = write(tmp_path / "qa.jsonl", examples)
    out = tmp_path / "qa-out.jsonl"
    assert run(["predict", models["qa"], "--task", "question-answering", "--input", qa_in, "--output", out,
                "--question-field", "q", "--context-field", "c", "--max-length", "40", "--doc-stride", "10",
                "--quiet"])[0] == 0
    want = pipeline("question-answering", models["qa"])([{"question": e["q"], "context": e["c"]} for e in examples],
                                                        max_seq_len=40, doc_stride=10)
    close([{k: r[k] for k in ("answer", "score", "start", "end")} for r in read(out)], want)

    pairs = write(tmp_path / "pairs.jsonl", [{"a": t, "b": "the mill"} for t in texts])
    out = tmp_path / "pairs-out.jsonl"
    assert run(["predict", models["cls"], "--task", "text-classification", "--input", pairs, "--output", out,
                "--text-field", "a", "--text-pair-field", "b", "--prefix", "pred_", "--quiet"])[0] == 0
    got = read(out)
    close([{"label": r["pred_label"], "score": r["pred_score"]} for r in got],
          pipeline("text-classification", models["cls"])([{"text": t, "text_pair": "the mill"} for t in texts]))


def test_progress_and_quiet(models, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", corpus(12))
    code, captured = run(["predict", models["cls"], "--task", "text-classification", "--input", src, "--output",
                          tmp_path / "a.jsonl", "--shard-size", "5"], capsys)
    assert code == 0 and "rows/s" in captured.err and "12/12" in captured.err and captured.out == ""
    code, captured = run(["predict", models["cls"], "--task", "text-classification", "--input", src, "--output",
                          tmp_path / "b.jsonl", "--quiet"], capsys)
    assert code == 0 and captured.err == "" and captured.out == ""


KILLER = r"""
import os, signal, sys
import yoso_np.predict as p
where, after = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def due():
    calls["n"] += 1
    return calls["n"] > after

def die():
    if due():
        os.kill(os.getpid(), signal.SIGKILL)

if where == "shard":  # in the middle of writing a shard, its rows half written to the temporary file
    write = p._write_atomic
    def _write_atomic(path, fill):
        def half(f):
            f.write('{"partial": ')
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        write(path, half if "part-" in path and due() else fill)
    p._write_atomic = _write_atomic
elif where == "join":  # while the shards are being joined into the final file
    copy = p.shutil.copyfileobj
    p.shutil.copyfileobj = lambda a, b: (copy(a, b), die())
elif where == "cleanup":  # after PATH is in place, before the work folder is removed
    rmtree = p.shutil.rmtree
    p.shutil.rmtree = lambda path, *a, **k: (die(), rmtree(path, *a, **k))
from yoso_np.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where, after, output", [
    (where, after, output) for where, after in (("shard", 2), ("shard", 0), ("join", 3), ("cleanup", 0))
    for output in ("out.jsonl", "out/") if not (where == "join" and output == "out/")  # a folder: one rename
])
def test_sigkill_then_rerun_gives_the_same_output(models, tmp_path, where, after, output):
    src = write(tmp_path / "in.jsonl", corpus(30, seed=5))
    reference = f"{tmp_path}/ref{output[3:]}"
    argv = ["predict", str(models["cls"]), "--task", "text-classification", "--input", str(src), "--shard-size",
            "4", "--quiet"]
    assert main(argv + ["--output", reference]) == 0

    out = f"{tmp_path}/{output}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLER, where, str(after), *argv, "--output", out],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if where != "cleanup":
        assert not os.path.exists(out.rstrip("/"))  # nothing partial at PATH
    assert os.path.isdir(out.rstrip("/") + ".partial")
    assert main(argv + ["--output", out]) == 0
    assert not os.path.exists(out.rstrip("/") + ".partial")
    if output.endswith("/"):
        assert sorted(os.listdir(out)) == sorted(os.listdir(reference))
        for name in os.listdir(out):
            assert (tmp_path / output / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    else:
        assert (tmp_path / output).read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_resume_reuses_finished_shards(models, tmp_path):
    src = write(tmp_path / "in.jsonl", corpus(10))
    out = tmp_path / "out.jsonl"
    argv = ["predict", models["cls"], "--task", "text-classification", "--input", src, "--output", out,
            "--shard-size", "4", "--quiet"]
    assert run(argv)[0] == 0
    reference = out.read_bytes()
    out.unlink()
    work = tmp_path / "out.jsonl.partial"
    (work / "shards").mkdir(parents=True)
    from yoso_np.predict import PredictOptions, file_digest, model_fingerprint

    job = {"input": str(src), "input_sha256": file_digest(src), "model": model_fingerprint(models["cls"]),
           "options": vars(PredictOptions("text-classification")), "shard_size": 4, "rows": 10}
    (work / "job.json").write_text(json.dumps(job))
    fake = "".join(json.dumps({"kept": i}) + "\n" for i in range(4))
    (work / "shards" / "part-00000.jsonl").write_text(fake)  # a finished shard is used as it is
    assert run(argv)[0] == 0
    assert out.read_text().startswith(fake) and out.read_bytes().endswith(reference.split(b"\n", 4)[4])

    (work / "shards").mkdir(parents=True)
    (work / "job.json").write_text(json.dumps({**job, "model": "another"}))
    code = run(argv)[0]
    assert code == 2 and (work / "job.json").exists()  # another run's shards are neither used nor deleted


@pytest.mark.parametrize("content, name, extra, message", [
    ('{"text": "a"}\n{"text": "b"\n', "in.jsonl", [], "in.jsonl, line 2: not valid JSON"),
    ('{"text": "a"}\n{"txt": "b"}\n', "in.jsonl", [], "in.jsonl, line 2: missing field 'text'"),
    ('{"text": "a"}\n{"text": "  "}\n', "in.jsonl", [], "in.jsonl, line 2: field 'text' is empty"),
    ('{"text": "a"}\n{"text": 3}\n', "in.jsonl", [], "in.jsonl, line 2: field 'text' must be a string, got int"),
    ('[{"text": "a"}, {"text": null}]', "in.json", [], "in.json, item 2: field 'text' must be a string"),
    ("text,gold\na,1\n,2\n", "in.csv", [], "in.csv, line 3: field 'text' is empty"),
    ('{"text": "a"}\n', "in.txt", [], "unknown data format '.txt'"),
    ("\n\n", "in.jsonl", [], "in.jsonl: the file holds no records"),
    ('{"text": "a"}\n{"text": "b"}\n', "in.jsonl", ["--task", "fill-mask"], "fill-mask needs a YosoForMaskedLM"),
    ('{"text": "a"}\n', "in.jsonl", ["--task", "ner"], "token-classification needs a YosoForTokenClassification"),
    ('{"text": "a", "label": 1}\n', "in.jsonl", [], "in.jsonl, line 1: the input already has field 'label'"),
    ('{"text": "a"}\n{"text": "' + "the river " * 40 + '"}\n', "in.jsonl", [],
     "in.jsonl, line 2: the text has 164 tokens, more than the limit of 64; pass --truncation"),
    ('{"text": "a"}\n', "in.jsonl", ["--output", "{tmp}/out.csv"], "unknown output format '.csv'"),
    ('{"text": "a"}\n', "in.jsonl", ["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
])
def test_bad_input_exits_2_with_one_line(models, tmp_path, capsys, content, name, extra, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    extra = [e.format(tmp=tmp_path) for e in extra]
    argv = ["predict", str(models["cls"]), "--input", str(tmp_path / name), "--quiet"]
    argv += [] if "--task" in extra else ["--task", "text-classification"]
    argv += [] if "--output" in extra else ["--output", str(tmp_path / "out.jsonl")]
    assert main(argv + extra) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("yoso-np: error: ") and message in err[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(os.listdir(tmp_path)) == [name]  # no output, no work folder


def test_truncation_and_long_rows(models, tmp_path):
    rows = [{"text": "a"}, {"text": "the river " * 40}]
    src = write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run(["predict", models["cls"], "--task", "text-classification", "--input", src, "--output", out,
                "--truncation", "--quiet"])[0] == 0
    close([{"label": r["label"], "score": r["score"]} for r in read(out)],
          pipeline("text-classification", models["cls"])([r["text"] for r in rows], truncation=True))


def test_folder_output_is_not_overwritten(models, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", corpus(3))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    code, captured = run(["predict", models["cls"], "--task", "text-classification", "--input", src, "--output",
                          f"{tmp_path}/out/", "--quiet"], capsys)
    assert code == 2 and "the folder exists and is not empty" in captured.err
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"


def test_parquet_join_unifies_the_shards_schemas(tmp_path):
    pytest.importorskip("pyarrow")
    from yoso_np.predict import _join_parquet

    shards = [[{"id": 0, "entities": [], "x": None}], [{"id": 1, "entities": [{"word": "a", "score": 0.5}], "x": 2},
                                                       {"id": 2, "entities": [], "x": 2.5}]]
    names = [write(tmp_path / f"part-{i}.jsonl", rows) for i, rows in enumerate(shards)]
    _join_parquet([str(n) for n in names], str(tmp_path / "out.parquet"))
    assert read(tmp_path / "out.parquet") == [row for rows in shards for row in rows]
    assert sorted(os.listdir(tmp_path)) == ["out.parquet", "part-0.jsonl", "part-1.jsonl"]


def test_fill_mask_row_without_mask_is_named(models, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", [{"text": "the <mask> mill"}, {"text": "the old mill"}])
    assert main(["predict", str(models["mlm"]), "--task", "fill-mask", "--input", str(src), "--output",
                 str(tmp_path / "out.jsonl"), "--quiet"]) == 2
    assert "in.jsonl, line 2: no mask token '<mask>' in field 'text'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_question_answering_rows_that_cannot_be_windowed(models, tmp_path, capsys):
    long_question = "where is the old mill by the river " * 3
    src = write(tmp_path / "in.jsonl", [{"question": "Where?", "context": CONTEXT},
                                        {"question": long_question, "context": CONTEXT}])
    argv = ["predict", str(models["qa"]), "--task", "question-answering", "--input", str(src), "--output",
            str(tmp_path / "out.jsonl"), "--quiet", "--max-length", "48"]
    assert main(argv + ["--doc-stride", "8"]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl, line 2: the row has a question of" in err and "not more than doc_stride=8" in err
    assert main(argv + ["--doc-stride", "60"]) == 2
    assert "doc_stride must be in [0, max_seq_len=48], got 60" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]
    assert main(argv[:-2] + ["--max-length", "64", "--doc-stride", "4"]) == 0
    assert len(read(tmp_path / "out.jsonl")) == 2
