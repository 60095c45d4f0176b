"""Ray Data: the Predictor on every batch type without a cluster, and `yoso-np predict --ray` on a local 2-CPU
cluster (about 10 s) giving the local run's rows and predictions, in input order."""
import os
import sys

import numpy as np
import pytest

from tests.test_predict import close, corpus, models, read, write  # noqa: F401 (models is a fixture)
from yoso_np import pipeline
from yoso_np.cli import main

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
from yoso_np.ray_data import Predictor, pool_size  # noqa: E402


def test_predictor_on_every_batch_type(models):
    rows = corpus(7)
    texts = [r["text"] for r in rows]
    want = pipeline("text-classification", models["cls"])(texts, top_k=2)
    predictor = Predictor(str(models["cls"]), "sentiment-analysis", top_k=2, batch_size=3)
    table = predictor(pa.Table.from_pylist(rows))
    assert table.column_names == ["id", "text", "note", "labels"]
    close(table.column("labels").to_pylist(), want)
    out = predictor({"id": np.arange(7), "text": np.array(texts, dtype=object)})
    assert sorted(out) == ["id", "labels", "text"] and out["labels"].dtype == object
    close(list(out["labels"]), want)
    pd = pytest.importorskip("pandas")
    frame = predictor(pd.DataFrame(rows))
    close(list(frame["labels"]), want)
    embed = Predictor(str(models["mlm"]), "feature-extraction", normalize=True)({"text": np.array(texts)})
    assert embed["embedding"].shape == (7, 32)
    with pytest.raises(ValueError, match="the batch has no column 'text'"):
        predictor({"body": np.array(texts)})


def test_pool_leaves_room_for_reading_and_writing():
    assert pool_size(2) == (2, 0.75)
    assert pool_size(2, 1) == (1, 1.5)
    assert pool_size(16) == (16, 0.969)
    with pytest.raises(ValueError, match="too few for 1 model actors"):
        pool_size(0.5, 1)


@pytest.mark.skipif(sys.platform == "win32", reason="a local Ray cluster")
def test_predict_on_a_local_two_cpu_cluster_equals_the_local_run(models, tmp_path):
    src = write(tmp_path / "in.jsonl", corpus(40, seed=3))
    local = tmp_path / "local.jsonl"
    argv = ["predict", str(models["ner"]), "--task", "ner", "--aggregation-strategy", "first", "--input",
            str(src), "--quiet"]
    assert main(argv + ["--output", str(local)]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert main(argv + ["--output", f"{tmp_path}/ray/", "--ray"]) == 0
        table = write(tmp_path / "in.tsv", [{"id": 7, "text": "a\tb", "n": "003"}, {"id": 8, "text": "c", "n": ""}])
        from yoso_np.data import read_records
        from yoso_np.ray_data import _read

        # Ray Data's reader keeps the cells strings, as the local run reads them
        assert _read(ray, str(table), None).take_all() == [r for _, r in read_records(table)]
    finally:
        ray.shutdown()
    names = sorted(os.listdir(tmp_path / "ray"))
    assert names and all(n.endswith(".parquet") for n in names)
    assert not os.path.exists(f"{tmp_path}/ray.partial-ray")
    close(read(tmp_path / "ray"), read(local))  # the same rows, fields and predictions, in input order


def test_ray_bad_input_exits_2_before_the_cluster_starts(models, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "the river " * 40}])
    argv = ["predict", str(models["cls"]), "--task", "text-classification", "--input", str(src), "--quiet", "--ray"]
    assert main(argv + ["--output", f"{tmp_path}/out/"]) == 2
    assert "in.jsonl, line 2: the text has 164 tokens" in capsys.readouterr().err
    assert main(argv[:3] + ["ner"] + argv[4:] + ["--output", f"{tmp_path}/out/"]) == 2
    assert "token-classification needs a YosoForTokenClassification" in capsys.readouterr().err
    assert main(argv + ["--output", f"{tmp_path}/out.jsonl"]) == 2
    assert "with --ray the output is a folder of Parquet shards" in capsys.readouterr().err
    assert not ray.is_initialized() and sorted(os.listdir(tmp_path)) == ["in.jsonl"]
