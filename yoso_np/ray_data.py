"""The adapter for Ray Data (the `ray` extra): a callable class for map_batches, and `yoso-np predict --ray`.

    import ray
    from yoso_np.ray_data import Predictor
    ds = ray.data.read_json("corpus.jsonl")
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model": "run1", "task": "text-classification"},
                        batch_size=512, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.75,
                        batch_format="pyarrow")
    ds.write_parquet("preds/")

Each actor loads the model once; a batch comes back with the prediction columns of `yoso-np predict` added.
The predicting itself is predict.predict_rows, the same as the local run's. Ray itself is imported only here,
and only when a Ray run starts.
"""
import logging
import os
import shutil

import numpy as np

from .predict import PredictOptions, check_input, check_records, predict_rows

RAY_BATCH_ROWS = 512  # rows per map_batches call: the pipeline sorts within it, as the local run within a shard
IO_CPUS = 0.25  # what each read and write task asks for: an actor pool never leaves them starved (see run_ray)


class Predictor:
    """A pipeline for Ray Data's map_batches: __call__ takes a batch (a pyarrow Table, a pandas DataFrame or a
    dict of columns) and returns it with the prediction columns added.

    model: a local folder or hub repo id (from the hub cache when offline); options: those of PredictOptions
    (text_field, top_k, pooling, batch_size, ...) and the hub's (revision, cache_dir, local_files_only, token).
    """

    def __init__(self, model, task, *, device="cpu", revision=None, cache_dir=None, local_files_only=False,
                 token=None, **options):
        from .pipelines import pipeline

        self.options = PredictOptions(task, **options)
        self.pipe = pipeline(self.options.task, model, device=device, batch_size=self.options.batch_size,
                             revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)

    def __call__(self, batch):
        fields = self.options.input_fields
        if hasattr(batch, "column_names") and hasattr(batch, "append_column"):  # pyarrow.Table
            rows = batch.select(list(fields)).to_pylist()
        elif hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
            rows = batch[list(fields)].to_dict("records")
        elif isinstance(batch, dict):
            missing = [f for f in fields if f not in batch]
            if missing:
                raise ValueError(f"the batch has no column {missing[0]!r} (columns: {sorted(batch)})")
            rows = [dict(zip(fields, values)) for values in zip(*(list(batch[f]) for f in fields))]
        else:
            raise TypeError(f"batch must be a pyarrow Table, a pandas DataFrame or a dict of columns, "
                            f"got {type(batch).__name__}")
        check_records([(f"batch row {i}", r) for i, r in enumerate(rows)], self.options)
        predictions = predict_rows(self.pipe, [{k: _plain(v) for k, v in r.items()} for r in rows], self.options)
        names = [n for n in self.options.output_fields if predictions and n in predictions[0]]
        columns = {n: [p[n] for p in predictions] for n in names}
        if hasattr(batch, "append_column"):
            import pyarrow as pa

            for n, values in columns.items():
                batch = batch.append_column(n, pa.array(values))
            return batch
        if hasattr(batch, "columns") and not isinstance(batch, dict):
            batch = batch.copy()
            for n, values in columns.items():
                batch[n] = values
            return batch
        out = dict(batch)
        for n, values in columns.items():
            out[n] = _column(values)
        return out


def _plain(value):
    """A NumPy scalar (a dict batch's cell) as the Python value the pipelines take."""
    return value.item() if isinstance(value, np.generic) else value


def _column(values):
    """Prediction values as a NumPy column: numbers as numbers, vectors as a 2-D array, the rest as objects."""
    if values and all(isinstance(v, (str, int, float)) for v in values):
        return np.array(values)
    if values and all(isinstance(v, list) and v and all(isinstance(x, float) for x in v) for v in values) \
            and len({len(v) for v in values}) == 1:
        return np.array(values, dtype=np.float64)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def pool_size(cpus, num_workers=None):
    """(actors, CPUs per actor) for a cluster of ``cpus`` CPUs.

    An actor pool that takes every CPU starves Ray Data's read and write tasks (a 2-CPU local cluster with 2 actors
    of 1 CPU each never finished its write_parquet), so the actors share the CPUs less IO_CPUS x 2 (one read and
    one write task can always run) and the reads and writes ask for IO_CPUS each.
    """
    workers = num_workers or max(1, int(cpus))
    share = (cpus - 2 * IO_CPUS) / workers
    if share <= 0:
        raise ValueError(f"the cluster has {cpus} CPUs: too few for {workers} model actors and the reading and "
                         f"writing tasks; pass fewer workers")
    return workers, round(share, 3)


def _read(ray, path, options):
    """A Ray Dataset of the input file, by extension; CSV/TSV cells stay strings, as in the local run."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson", ".json"):
        return ray.data.read_json(path, **_io_args(ray.data.read_json))
    if ext == ".parquet":
        return ray.data.read_parquet(path, **_io_args(ray.data.read_parquet))
    if ext in (".csv", ".tsv"):
        import csv

        import pyarrow as pa
        from pyarrow import csv as pacsv

        delimiter = "\t" if ext == ".tsv" else ","
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f, delimiter=delimiter))
        return ray.data.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                 convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in header},
                                                                      strings_can_be_null=False),
                                 **_io_args(ray.data.read_csv))
    raise ValueError(f"--input {path}: unknown data format {ext!r}")


def _io_args(function):
    """IO_CPUS for a Ray Data reader or writer, in the argument its Ray version takes (num_cpus since 2.5x)."""
    import inspect

    if "num_cpus" in inspect.signature(function).parameters:
        return {"num_cpus": IO_CPUS}
    return {"ray_remote_args": {"num_cpus": IO_CPUS}}


def run_ray(model, input_path, output_path, options, *, address=None, num_workers=None, device="cpu",
            quiet=False, **hub):
    """`yoso-np predict --ray`: the same rows and predictions as the local run, written by Ray Data as a folder of
    Parquet shards at output_path (first under a temporary name beside it, renamed when complete). address:
    a cluster's address ("auto": the one this machine joined), or None for a local cluster started for the run.
    Returns the number of rows written."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--ray needs Ray Data: pip install 'yoso_np[ray]'") from None
    output_path = os.fspath(output_path)
    if not output_path.endswith(("/", os.sep)):
        raise ValueError(f"--output {output_path}: with --ray the output is a folder of Parquet shards; end PATH "
                         f"with /")
    target = output_path.rstrip("/" + os.sep)
    if os.path.isdir(target) and os.listdir(target):
        raise ValueError(f"--output {output_path}: the folder exists and is not empty; remove it or choose another")
    if os.path.exists(input_path):  # the local run's checks and messages, before the cluster starts
        from .pipelines import pipeline

        check_input(input_path, options)
        check_input(input_path, options, pipeline(options.task, model, device="cpu", **hub))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    if quiet:
        data_logger.setLevel(logging.ERROR)  # Ray Data's progress lines and notes
    try:
        context.execution_options.preserve_order = True  # output rows in input order
        context.enable_progress_bars = not quiet
        cpus = ray.cluster_resources().get("CPU", 1.0)
        workers, share = pool_size(cpus, num_workers)
        ds = _read(ray, input_path, options)
        ds = ds.map_batches(Predictor, fn_constructor_kwargs={"model": os.path.abspath(model) if os.path.isdir(model)
                                                              else model, "task": options.task, "device": device,
                                                              **hub, **_option_kwargs(options)},
                            batch_size=max(options.batch_size, RAY_BATCH_ROWS), batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=share, num_gpus=1 if device == "cuda" else None)
        partial = target + ".partial-ray"
        if os.path.exists(partial):
            shutil.rmtree(partial)  # a killed Ray run: Ray Data cannot resume it, so it starts afresh
        ds.write_parquet(partial, **_io_args(ds.write_parquet))
        rows = sum(_parquet_rows(os.path.join(partial, name)) for name in os.listdir(partial))
        if os.path.isdir(target):
            os.rmdir(target)
        os.replace(partial, target)
        return rows
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        data_logger.setLevel(saved_level)
        if started:
            ray.shutdown()


def _option_kwargs(options):
    return {k: v for k, v in vars(options).items() if k != "task"}


def _parquet_rows(path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
