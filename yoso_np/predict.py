"""A pipeline over a file: read, check, run in shards, write each shard atomically, join, resume.

    yoso-np predict run1 --task text-classification --input corpus.jsonl --output preds.jsonl

    options = PredictOptions("text-classification", top_k=2)
    check_input("corpus.jsonl", options, pipe)             # every row: its fields, non-empty text, its length
    predictions = predict_rows(pipe, [{"text": "so good"}], options)    # [{"labels": [...]}]

Every output row is its input row with the prediction fields added, in input order. The rows are cut into shards
of ``shard_size``; each finished shard is written to a temporary name and renamed into the work folder beside
PATH (``PATH.partial/``), so a run killed at any moment loses at most the shard in flight, and the same command
run again skips the finished shards. At the end the shards are joined into a temporary file renamed to PATH (or
the folder of shards is renamed to PATH/), then the work folder is removed: PATH never holds a partial result,
and each shard's rows go through the same batches whether or not the run was interrupted, so the final output
is the same bytes. The input is streamed (read once to check every row, once more for the lengths when the
model must refuse long texts, once to run), so memory holds one shard, not the corpus; a .json list is the
exception, parsed whole.
"""
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass

from .data import DataError, iter_records
from .pipelines import InputTooLong

OUTPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TASK_FIELDS = {"text-classification": ("label", "score", "labels"), "token-classification": ("entities",),
               "question-answering": ("answer", "score", "start", "end", "answers"),
               "feature-extraction": ("embedding",), "fill-mask": ("predictions",)}
JOB_FILE = "job.json"


@dataclass
class PredictOptions:
    """What to predict and from which fields; the arguments of `yoso-np predict` beyond the files and model."""

    task: str
    text_field: str = "text"
    text_pair_field: str | None = None
    question_field: str = "question"
    context_field: str = "context"
    batch_size: int = 16
    max_length: int | None = None
    truncation: bool = False
    top_k: int | None = None
    pooling: str | None = "mean"
    normalize: bool = False
    aggregation_strategy: str = "none"
    doc_stride: int | None = None
    prefix: str = ""

    def __post_init__(self):
        from .pipelines import ALIASES

        self.task = ALIASES.get(self.task, self.task)
        if self.task not in TASK_FIELDS:
            raise ValueError(f"task must be one of {sorted(TASK_FIELDS)}, got {self.task!r}")

    @property
    def input_fields(self):
        """The record fields that hold the text(s) of this task."""
        if self.task == "question-answering":
            return (self.question_field, self.context_field)
        return (self.text_field,) + ((self.text_pair_field,) if self.text_pair_field else ())

    @property
    def output_fields(self):
        return tuple(self.prefix + name for name in TASK_FIELDS[self.task])


# -- reading and checking ------------------------------------------------------------------------------------------
def check_records(records, options):
    """DataError naming the row for a record without a text field, or whose text is not a non-empty string, or
    whose fields the prediction would overwrite."""
    for where, record in records:
        for name in options.input_fields:
            if name not in record:
                raise DataError(f"{where}: missing field {name!r} (fields there: {sorted(record)})")
            value = record[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise DataError(f"{where}: field {name!r} is empty")
        clash = [name for name in options.output_fields if name in record]
        if clash:
            raise DataError(f"{where}: the input already has field {clash[0]!r}, which the prediction would "
                            f"overwrite; pass --prefix (e.g. --prefix pred_) to name the prediction fields apart")


def chunks(path, size):
    """The records of an input file in lists of ``size`` (the last one shorter), read as they are needed."""
    chunk = []
    for item in iter_records(path):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_input(path, options, pipe=None, chunk=4096):
    """Read the input once and check every row: its fields (check_records) and, given the pipeline, its length
    (check_lengths). Returns the number of rows; an empty file is a DataError."""
    rows = 0
    for part in chunks(path, chunk):
        check_records(part, options)
        if pipe is not None:
            check_lengths(pipe, part, options)
        rows += len(part)
    if not rows:
        raise DataError(f"{os.fspath(path)}: the file holds no records")
    return rows


def check_lengths(pipe, records, options):
    """DataError naming the row (checked before any shard runs, so a bad row leaves no output): without
    truncation, a text longer than the model's limit; for question-answering, a question that leaves its context
    no room in a window; for fill-mask, a text without the mask token."""
    if options.task == "question-answering":  # long contexts go into windows; a question must leave them room
        windows = pipe.windows(options.max_length, options.doc_stride)
        try:
            pipe.check_questions([r[options.question_field] for _, r in records], *windows)
        except InputTooLong as exc:
            raise DataError(f"{records[exc.index][0]}: the row {exc.detail}; shorten it, or raise --max-length") \
                from None
        return
    if options.truncation:
        return
    texts = [r[options.text_field] for _, r in records]
    pairs = [r[options.text_pair_field] for _, r in records] if options.text_pair_field else None
    try:
        pipe.tokenize(texts, pairs, max_length=options.max_length)
    except InputTooLong as exc:
        raise DataError(f"{records[exc.index][0]}: the text {exc.detail}; pass --truncation to cut it") from None
    if options.task == "fill-mask":
        mask = pipe.tokenizer.mask_token
        bad = next((where for where, r in records if mask not in r[options.text_field]), None)
        if bad:
            raise DataError(f"{bad}: no mask token {mask!r} in field {options.text_field!r}")


# -- predicting ----------------------------------------------------------------------------------------------------
def predict_rows(pipe, rows, options):
    """The prediction fields of each row (a dict holding the input fields), in order, as plain Python values."""
    o, p = options, options.prefix
    if not rows:
        return []
    calls = dict(batch_size=o.batch_size)
    if o.task != "question-answering":
        calls.update(truncation=o.truncation, max_length=o.max_length)
    if o.task == "text-classification":
        inputs = [{"text": r[o.text_field], "text_pair": r[o.text_pair_field]} if o.text_pair_field
                  else r[o.text_field] for r in rows]
        if o.top_k is None:
            return [{p + "label": x["label"], p + "score": x["score"]} for x in pipe(inputs, **calls)]
        return [{p + "labels": x} for x in pipe(inputs, top_k=o.top_k, **calls)]
    texts = [r[o.text_field] for r in rows] if o.task != "question-answering" else None
    if o.task == "token-classification":
        return [{p + "entities": x} for x in pipe(texts, aggregation_strategy=o.aggregation_strategy, **calls)]
    if o.task == "feature-extraction":
        return [{p + "embedding": x} for x in pipe(texts, pooling=o.pooling, normalize=o.normalize, **calls)]
    if o.task == "fill-mask":
        return [{p + "predictions": x} for x in pipe(texts, top_k=o.top_k or 5, **calls)]
    examples = [{"question": r[o.question_field], "context": r[o.context_field]} for r in rows]
    out = pipe(examples, top_k=o.top_k or 1, **_qa_arguments(o), **calls)
    if (o.top_k or 1) > 1:
        return [{p + "answers": x if isinstance(x, list) else [x]} for x in out]
    return [{p + k: x[k] for k in ("answer", "score", "start", "end")} for x in out]


def _qa_arguments(options):
    return {"doc_stride": options.doc_stride, **({} if options.max_length is None else
                                                  {"max_seq_len": options.max_length})}


# -- shards, joining and resuming ----------------------------------------------------------------------------------
def output_kind(path):
    """"folder", "jsonl" or "parquet" from PATH (a trailing / means a folder of shards); ValueError otherwise."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):
        return "folder"
    kind = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ValueError(f"--output {path}: unknown output format {os.path.splitext(path)[1]!r}; expected one of "
                         f"{', '.join(sorted(OUTPUT_FORMATS))}, or a folder ending with /")
    return kind


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model, revision=None):
    """What names a model in a job: a folder's path with the size and time of each file (a retrained model is
    another model), or a hub repo id at its revision."""
    model = os.fspath(model)
    if os.path.isdir(model):
        stats = {name: os.stat(os.path.join(model, name)) for name in os.listdir(model)}
        files = sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats.items() if not os.path.isdir(
            os.path.join(model, name)))
        return {"folder": os.path.abspath(model), "files": files}
    return {"repo": model, "revision": revision}


def _write_atomic(path, write):
    """write(file) into a temporary name beside path, flushed to disk, then renamed to path."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_line(row):
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


def run_predict(make_pipeline, input_path, output_path, options, *, model_id, shard_size=1000, quiet=False,
                progress_file=None):
    """Predict every row of input_path into output_path (see the module docstring); returns the rows written.

    make_pipeline() loads the pipeline (called after the input is read and checked). model_id names the model in
    the job fingerprint: a rerun resumes only the shards of the same input, model and options.
    """
    kind = output_kind(output_path)
    output_path = os.fspath(output_path)
    target = output_path.rstrip("/" + os.sep) if kind == "folder" else output_path
    work = target + ".partial"
    if kind == "folder" and os.path.isdir(target) and os.listdir(target) and not os.path.isdir(work):
        raise ValueError(f"--output {output_path}: the folder exists and is not empty; remove it or choose another")
    if kind == "parquet":
        _pyarrow(output_path)
    total = check_input(input_path, options)  # the rows' fields, before the model loads
    pipe = make_pipeline()
    if not options.truncation or options.task == "question-answering":
        check_input(input_path, options, pipe)

    job = {"input": os.path.abspath(input_path), "input_sha256": file_digest(input_path), "model": model_id,
           "options": asdict(options), "shard_size": shard_size, "rows": total}
    if not _start_work(work, job):  # a folder run killed between its rename and the clean-up
        shutil.rmtree(work)
        return total
    count = -(-total // shard_size)
    width = max(5, len(str(count - 1)))
    names = [os.path.join(work, "shards", f"part-{i:0{width}d}.jsonl") for i in range(count)]
    done = [os.path.exists(name) for name in names]
    sizes = [min(shard_size, total - i * shard_size) for i in range(count)]
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=sum(n for n, d in zip(sizes, done) if d), unit="rows", disable=quiet,
              file=progress_file or sys.stderr, desc=options.task, dynamic_ncols=True) as bar:
        for shard, name, finished in zip(chunks(input_path, shard_size), names, done):
            if finished:
                continue
            rows = [r for _, r in shard]
            predictions = predict_rows(pipe, rows, options)
            _write_atomic(name, lambda f: f.writelines(_json_line({**r, **p}) for r, p in zip(rows, predictions)))
            bar.update(len(rows))
    _join(names, target, kind, work)
    return total


def _start_work(work, job):
    """Make the work folder, or resume the one of the same job (a folder of another job is refused); False when
    that job's shards were already renamed into place (only its clean-up was left)."""
    path, shards = os.path.join(work, JOB_FILE), os.path.join(work, "shards")
    if os.path.isdir(work):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is None and not (os.path.isdir(shards) and os.listdir(shards)):
            shutil.rmtree(work)  # killed while it was being made
        elif old != json.loads(json.dumps(job)):
            raise ValueError(f"{work} holds the shards of another run (other input, model or options); remove it "
                             f"to start afresh, or rerun that run's command to finish it")
        elif not os.path.isdir(shards):
            return False
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(path):
        _write_atomic(path, lambda f: json.dump(job, f, indent=1))
    os.makedirs(shards, exist_ok=True)
    for name in os.listdir(shards):  # temporaries of a killed run
        if not (name.startswith("part-") and name.endswith(".jsonl")):
            os.remove(os.path.join(shards, name))
    return True


def _join(names, target, kind, work):
    if kind == "folder":
        if os.path.isdir(target) and not os.listdir(target):
            os.rmdir(target)
        os.replace(os.path.join(work, "shards"), target)  # one rename: PATH/ appears whole
    elif kind == "jsonl":
        def write(f):
            for name in names:
                with open(name, encoding="utf-8") as shard:
                    shutil.copyfileobj(shard, f)
        _write_atomic(target, write)
    else:
        _join_parquet(names, target)
    shutil.rmtree(work)


def _shard_rows(name):
    with open(name, encoding="utf-8") as shard:
        return [json.loads(line) for line in shard]


def _join_parquet(names, target):
    """The shards as one Parquet file, one shard in memory at a time: a first pass finds the schema that fits
    every shard (a column all null in one shard and typed in another), the second writes them in order."""
    pa, pq = _pyarrow(target)
    schema = pa.unify_schemas([pa.Table.from_pylist(_shard_rows(name)).schema for name in names],
                              promote_options="permissive")
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for name in names:
                writer.write_table(pa.Table.from_pylist(_shard_rows(name), schema=schema))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _pyarrow(path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: writing Parquet needs pyarrow (pip install 'yoso_np[parquet]')") from None
    return pa, pq
