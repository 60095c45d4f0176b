"""Equality checks for files, byte strings, texts and big arrays that fail in milliseconds with a short message.

pytest's own explanation of ``assert a == b`` diffs the operands: for two 100 KB byte strings that ran for more
than ten minutes. These helpers never hand their operands to pytest; a failure says what differs (sizes, sha256,
the first differing offset or line, and for arrays and safetensors files the tensor, index and largest difference).

    assert_same_file(resumed / "model.safetensors", whole / "model.safetensors")
    assert_same_text(resumed_log, whole_log, "train_log.jsonl")
    assert_arrays_equal(got, expected, "logits")
"""
import hashlib
import os

import numpy as np


def _sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def _read(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    with open(value, "rb") as f:
        return f.read(), os.fspath(value)


def first_difference(a, b):
    """The first offset at which two sequences (bytes or arrays) differ, or None when they are equal."""
    n = min(len(a), len(b))
    x = np.frombuffer(a, np.uint8, n) if isinstance(a, bytes) else np.asarray(a[:n])
    y = np.frombuffer(b, np.uint8, n) if isinstance(b, bytes) else np.asarray(b[:n])
    where = np.flatnonzero(x != y)
    if where.size:
        return int(where[0])
    return None if len(a) == len(b) else n


def assert_same_bytes(actual, expected, name="bytes"):
    """actual, expected: byte strings or paths of files. Equal bytes, or an AssertionError of one line (two for
    safetensors files: the first tensor that differs)."""
    a, a_path = _read(actual)
    b, b_path = _read(expected)
    if a == b:
        return
    offset = first_difference(a, b)
    message = (f"{name}: {len(a)} bytes (sha256 {_sha(a)}) != expected {len(b)} bytes (sha256 {_sha(b)}); "
               f"first difference at byte {offset}: {a[offset:offset + 8].hex() or 'end'} vs "
               f"{b[offset:offset + 8].hex() or 'end'}")
    if a_path and b_path and a_path.endswith(".safetensors"):
        message += "\n" + _safetensors_difference(a_path, b_path)
    raise AssertionError(message)


def assert_same_file(actual, expected, name=None):
    assert_same_bytes(actual, expected, name or os.path.basename(os.fspath(actual)))


def _safetensors_difference(a_path, b_path):
    from safetensors.numpy import load_file
    try:
        a, b = load_file(a_path), load_file(b_path)
    except Exception as exc:  # a file too broken to read: the byte offset above says enough
        return f"(tensors not compared: {type(exc).__name__}: {exc})"
    if set(a) != set(b):
        return f"tensor names differ: only in actual {sorted(set(a) - set(b))[:5]}, " \
               f"only in expected {sorted(set(b) - set(a))[:5]}"
    for key in sorted(a):
        problem = array_difference(a[key], b[key])
        if problem:
            return f"first differing tensor {key!r}: {problem}"
    return "the same tensors, serialised differently (header or order)"


def array_difference(actual, expected):
    """None when the arrays are equal (same shape and dtype, equal elements, NaN equal to NaN), else one line."""
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {a.shape} {a.dtype} != expected {b.shape} {b.dtype}"
    differs = a != b
    if a.dtype.kind in "fc":
        differs &= ~(np.isnan(a) & np.isnan(b))
    if not differs.any():
        return None
    first = np.unravel_index(int(np.argmax(differs)), a.shape)
    line = f"{int(differs.sum())} of {a.size} elements differ; first at {tuple(int(i) for i in first)}: " \
           f"{a[first].item()!r} vs {b[first].item()!r}"
    if a.dtype.kind in "fiu":
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))[differs]
        line += f"; max abs difference {np.nanmax(diff) if np.isfinite(diff).any() else diff.max():.3g}"
    return line


def assert_arrays_equal(actual, expected, name="array"):
    problem = array_difference(actual, expected)
    if problem:
        raise AssertionError(f"{name}: {problem}")


def assert_same_text(actual, expected, name="text"):
    """Equal strings, or the first differing line (cut to 200 characters) and the line counts."""
    if actual == expected:
        return
    a, b = actual.splitlines(), expected.splitlines()
    line = first_difference(np.array(a, dtype=object), np.array(b, dtype=object))
    if line is None:  # the same lines: the difference is in the line endings
        line, got, want = "?", repr(actual[-20:]), repr(expected[-20:])
    else:
        got = a[line][:200] if line < len(a) else "<end>"
        want = b[line][:200] if line < len(b) else "<end>"
    raise AssertionError(f"{name}: {len(a)} lines != expected {len(b)}; first difference at line {line}:\n"
                         f"  got      {got}\n  expected {want}")
