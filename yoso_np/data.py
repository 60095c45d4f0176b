"""Data for the fine-tuner and `yoso-np predict`: reading JSON Lines / JSON / CSV / TSV / Parquet, labels, batches,
MLM masking.

    records = read_records("train.jsonl")             # [(where, dict)]; errors name the file and the line
    texts, pairs, raw = extract_fields(records, text_field="text", label_field="label")
    labels = LabelSpec.from_values(raw)               # ints, strings, floats or lists -> the problem type
    data = Dataset.from_texts(tokenizer, texts, pairs, labels.encode(raw), max_length=128)
    batch = data.batch([0, 1, 2])                     # padded to the longest of the three rows

Everything random (MLM masking) draws from a numpy Generator passed in, so a seed gives the same result.
"""
import csv
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .config import MAX_LABELS

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}
IGNORE_INDEX = -100  # label of positions that do not count in the loss (transformers' convention)


class DataError(ValueError):
    """Bad training data: the message names the file, the line and the field."""


# -- reading files ---------------------------------------------------------------------------------------------
def read_records(path):
    """The records of a data file as a list of (where, dict), where = "FILE, line N" (or "item N" in a
    JSON list, "row N" in Parquet) for error messages; the format comes from the extension:
    .jsonl/.ndjson (one object a line), .json (a list of objects), .csv/.tsv (a header row), .parquet (needs
    pyarrow: the `parquet` extra)."""
    records = list(iter_records(path))
    if not records:
        raise DataError(f"{os.fspath(path)}: the file holds no records")
    return records


def iter_records(path):
    """read_records one record at a time (a JSON list is parsed whole; the other formats are streamed), so
    that a corpus larger than memory can be read; an empty file yields nothing."""
    path = os.fspath(path)
    kind = FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise DataError(f"{path}: unknown data format {os.path.splitext(path)[1]!r}; "
                        f"expected one of {', '.join(sorted(FORMATS))}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not text
            yield from {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_table, "tsv": _read_table}[kind](
                f, path, "\t" if kind == "tsv" else ",")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def _read_jsonl(f, path, _):
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}, line {number}: not valid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        yield f"{path}, line {number}", record


def _read_json(f, path, _):
    text = f.read()
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}, item {i}: expected a JSON object, got {type(record).__name__}")
    return [(f"{path}, item {i}", record) for i, record in enumerate(data, 1)]


def _read_table(f, path, delimiter):
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        if len(set(header)) != len(header):
            raise DataError(f"{path}, line 1: the header repeats a column name: {header}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(row)} cells, but the header has "
                                f"{len(header)} columns")
            yield f"{path}, line {reader.line_num}", dict(zip(header, row))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed {('CSV', 'TSV')[delimiter == chr(9)]} ({exc})") \
            from None


def _read_parquet(path, batch_rows=4096):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'yoso_np[parquet]')") from None
    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}, row {number}", row
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError subclasses for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())})") from None


def extract_fields(records, *, text_field="text", text_pair_field=None, label_field=None):
    """(texts, pairs or None, labels or None) from records; a missing or non-text field names its line."""
    texts, pairs, labels = [], [] if text_pair_field else None, [] if label_field else None
    for where, record in records:
        def field(name):
            if name not in record:
                raise DataError(f"{where}: missing field {name!r} (fields there: {sorted(record)})")
            return record[name]

        for name, out in ((text_field, texts), (text_pair_field, pairs)):
            if name:
                value = field(name)
                if not isinstance(value, str):
                    raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
                out.append(value)
        if label_field:
            labels.append((where, field(label_field)))
    return texts, pairs, labels


# -- labels ----------------------------------------------------------------------------------------------------
def _label_kind(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        if not value:
            return "list"  # empty: fits either list form
        if all(isinstance(v, str) for v in value):
            return "list-of-names"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "multi-hot"
    return None


def _from_table_cell(values):
    """CSV/TSV cells are strings: a column of integers becomes ints, of numbers floats, else stays strings."""
    for convert in (int, float):
        try:
            converted = [(where, convert(v)) for where, v in values]
        except ValueError:
            continue
        if convert is float and not all(math.isfinite(v) for _, v in converted):
            continue
        return converted
    return values


@dataclass
class LabelSpec:
    """How raw labels map to model targets.

    problem_type: transformers' problem_type ("single_label_classification", "regression",
    "multi_label_classification"); id2label/label2id: the names (None for plain int labels); num_labels.
    """

    problem_type: str
    num_labels: int
    id2label: dict | None = None
    label2id: dict | None = None

    @classmethod
    def from_values(cls, labeled, *, table=False):
        """labeled: [(where, raw label), ...] (train and eval together, so both use one mapping).
        Ints -> classes 0..max; strings -> classes in sorted order; floats (ints allowed among them) ->
        regression; lists of names or multi-hot lists -> multi-label. Anything else or a mix raises DataError."""
        if table:
            labeled = _from_table_cell(labeled)
        kinds = {}
        for where, value in labeled:
            kind = _label_kind(value)
            if kind is None:
                raise DataError(f"{where}: a label must be an int, a string, a float or a list, got {value!r}")
            kinds.setdefault(kind, where)
        if {"int", "float"} >= set(kinds) and "float" in kinds:
            kinds = {"float": kinds["float"]}  # 1 among 0.5 and 2.5 is a regression target too
        if "list" in kinds and len(kinds) > 1 and set(kinds) <= {"list", "list-of-names", "multi-hot"}:
            del kinds["list"]
        if len(kinds) > 1:
            seen = ", ".join(f"{k} labels (first at {w})" for k, w in kinds.items())
            raise DataError(f"mixed label types: {seen}; use one kind of label throughout")
        kind = next(iter(kinds))
        values = [v for _, v in labeled]
        if kind in ("float", "multi-hot"):  # JSON's NaN and 1e999 (inf) would make every loss NaN
            bad = next(((w, v) for w, v in labeled
                        if not all(math.isfinite(x) for x in (v if isinstance(v, list) else [v]))), None)
            if bad:
                raise DataError(f"{bad[0]}: labels must be finite numbers, got {bad[1]!r}")
        if kind == "int":
            negative = next(((w, v) for w, v in labeled if v < 0), None)
            if negative:
                raise DataError(f"{negative[0]}: integer labels must be >= 0 (class ids), got {negative[1]}")
            if max(values) >= MAX_LABELS:  # ids 0..max become the classes: a typo must not build a huge head
                where = next(w for w, v in labeled if v == max(values))
                raise DataError(f"{where}: integer labels are class ids below {MAX_LABELS}, got {max(values)}")
            return cls("single_label_classification", max(max(values) + 1, 2))
        if kind == "float":
            return cls("regression", 1)
        if kind == "str":
            names = sorted(set(values))
            if len(names) < 2:
                raise DataError(f"every label is {names[0]!r}: a classifier needs at least 2 classes")
            return cls("single_label_classification", len(names), dict(enumerate(names)),
                       {n: i for i, n in enumerate(names)})
        if kind in ("list-of-names", "list"):
            names = sorted({n for v in values for n in v})
            if not names:
                raise DataError("multi-label lists are all empty: there are no label names to learn")
            return cls("multi_label_classification", len(names), dict(enumerate(names)),
                       {n: i for i, n in enumerate(names)})
        widths = {len(v) for v in values}
        if len(widths) != 1:
            where = next(w for w, v in labeled if len(v) != len(values[0]))
            raise DataError(f"{where}: multi-hot labels must all have the same length ({len(values[0])}), "
                            f"got {sorted(widths)}")
        return cls("multi_label_classification", widths.pop())

    def encode(self, labeled, *, table=False):
        """Raw labels -> an array of targets: int64 class ids, float32 values or float32 multi-hot rows."""
        if table:
            labeled = _from_table_cell(labeled)
        if self.problem_type == "regression":
            return np.array([float(v) for _, v in labeled], dtype=np.float32)
        if self.problem_type == "single_label_classification":
            if self.label2id is None:
                ids = [v for _, v in labeled]
                bad = next(((w, v) for w, v in labeled if not isinstance(v, int) or not 0 <= v < self.num_labels),
                           None)
            else:
                ids = [self.label2id.get(v, -1) if isinstance(v, str) else -1 for _, v in labeled]
                bad = next(((w, v) for (w, v), i in zip(labeled, ids) if i < 0), None)
            if bad:
                raise DataError(f"{bad[0]}: label {bad[1]!r} is not one of the {self.num_labels} classes")
            return np.array(ids, dtype=np.int64)
        rows = np.zeros((len(labeled), self.num_labels), dtype=np.float32)
        for row, (where, value) in enumerate(labeled):
            if self.label2id is None:
                if not isinstance(value, list) or len(value) != self.num_labels:
                    raise DataError(f"{where}: expected a multi-hot list of {self.num_labels} numbers, got {value!r}")
                rows[row] = value
            else:
                unknown = [n for n in value if n not in self.label2id] if isinstance(value, list) else [value]
                if unknown:
                    raise DataError(f"{where}: unknown label name(s) {unknown}")
                rows[row, [self.label2id[n] for n in value]] = 1.0
        return rows


def is_table(path):
    return FORMATS.get(os.path.splitext(os.fspath(path))[1].lower()) in ("csv", "tsv")


# -- datasets and batches --------------------------------------------------------------------------------------
class Dataset:
    """Token id rows (unpadded, each a 1-D int array, or (choices, n) for multiple choice) and targets.

    targets: dict name -> array with one entry per row (class ids, values, multi-hot rows, start/end
    positions), or, for names in ``token_targets``, a list of per-token label rows padded with -100.
    """

    def __init__(self, rows, targets=None, *, pad_token_id, token_targets=(), mask_token_id=None,
                 special_token_ids=(), vocab_size=None):
        self.rows = [np.asarray(r, dtype=np.int64) for r in rows]
        if not self.rows:
            raise DataError("a Dataset needs at least one row")
        for i, r in enumerate(self.rows):
            if r.ndim not in (1, 2) or r.shape[-1] == 0:
                raise DataError(f"row {i}: expected a non-empty 1-D (or (choices, n)) int sequence, "
                                f"got shape {r.shape}")
        self.targets = dict(targets or {})
        for name, t in self.targets.items():
            if len(t) != len(self.rows):
                raise DataError(f"target {name!r} has {len(t)} entries for {len(self.rows)} rows")
        self.token_targets = tuple(token_targets)
        if pad_token_id is None:
            raise DataError("pad_token_id is needed to pad batches")
        self.pad_token_id = int(pad_token_id)
        self.mask_token_id = mask_token_id
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.vocab_size = vocab_size

    def __len__(self):
        return len(self.rows)

    @classmethod
    def from_texts(cls, tokenizer, texts, text_pairs=None, labels=None, *, max_length, chunk=1024):
        """Tokenise (truncating to max_length) with a yoso_np Tokenizer; labels: None or one target per text."""
        rows = []
        for start in range(0, len(texts), chunk):
            pairs = None if text_pairs is None else text_pairs[start:start + chunk]
            enc = tokenizer(texts[start:start + chunk], pairs, padding=True, truncation=True, max_length=max_length)
            lengths = enc["attention_mask"].sum(axis=1)
            rows.extend(ids[:n] for ids, n in zip(enc["input_ids"], lengths))
        return cls(rows, None if labels is None else {"labels": labels}, pad_token_id=tokenizer.pad_token_id,
                   mask_token_id=tokenizer.mask_token_id, special_token_ids=tokenizer.all_special_ids,
                   vocab_size=tokenizer.vocab_size)

    def batch(self, indices):
        """The rows at ``indices`` padded to the longest of them: input_ids, attention_mask (int64) and the
        targets (token targets padded with -100)."""
        rows = [self.rows[i] for i in indices]
        width = max(r.shape[-1] for r in rows)
        lead = rows[0].shape[:-1]
        if any(r.shape[:-1] != lead for r in rows):
            raise DataError(f"rows of one batch must have the same number of choices, got "
                            f"{sorted({r.shape[:-1] for r in rows})}")
        input_ids = np.full((len(rows), *lead, width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), *lead, width), dtype=np.int64)
        for b, r in enumerate(rows):
            input_ids[b, ..., :r.shape[-1]] = r
            attention_mask[b, ..., :r.shape[-1]] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        for name, t in self.targets.items():
            if name in self.token_targets:
                padded = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
                for b, i in enumerate(indices):
                    padded[b, :len(t[i])] = t[i]
                out[name] = padded
            else:
                out[name] = np.asarray(t)[np.asarray(indices)]
        return out


def mask_tokens(input_ids, attention_mask, rng, *, mask_token_id, vocab_size, special_token_ids=(),
                mlm_probability=0.15, at_least_one=False):
    """Masked-LM inputs and labels, as transformers' DataCollatorForLanguageModeling: each non-special,
    non-pad token is chosen with probability mlm_probability; of those 80% become the mask token, 10% a
    random token, 10% stay. Labels are the original ids at chosen positions and -100 elsewhere.
    rng: numpy Generator. at_least_one: if no token was chosen, choose one eligible token (a batch without a
    masked token has no loss; transformers would give NaN). Returns (masked input_ids, labels), int64 arrays."""
    if mask_token_id is None:
        raise ValueError("mask_tokens needs mask_token_id (the tokenizer has no mask token)")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}")
    input_ids = np.asarray(input_ids, dtype=np.int64)
    eligible = (np.asarray(attention_mask) == 1) & ~np.isin(input_ids, np.asarray(special_token_ids, np.int64))
    chosen = (rng.random(input_ids.shape) < mlm_probability) & eligible
    if at_least_one and not chosen.any():
        candidates = np.flatnonzero(eligible)
        if candidates.size == 0:
            raise DataError("a masked-LM batch has no token to mask (only special tokens or padding)")
        chosen.flat[candidates[rng.integers(candidates.size)]] = True
    labels = np.where(chosen, input_ids, IGNORE_INDEX)
    replaced = chosen & (rng.random(input_ids.shape) < 0.8)
    randomised = chosen & ~replaced & (rng.random(input_ids.shape) < 0.5)
    masked = np.where(replaced, mask_token_id, input_ids)
    masked = np.where(randomised, rng.integers(0, vocab_size, input_ids.shape), masked)
    return masked, labels
