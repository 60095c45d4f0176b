"""CPU/GPU numerical parity (`yoso-np parity`): the same inputs through every backend and precision available.

The reference is the CPU in float64; against it run the CPU in float32 and CUDA in float32 (where CuPy sees a
device, or on the emulator with emulate=True), in both attention modes (sampling with one seed, so every backend
draws the same hash matrices on the host). Per output (the embeddings, each layer's output, each layer's attention
context, the head's output; with grads, the gradients grouped by layer) a row gives
    max abs = max |x - ref|,   max rel = max abs / max |ref|   (relative to the output's scale),
and for sampling the share of token vectors that agree to atol * scale: a hash bit whose projection is at rounding
level flips between precisions and moves its token, so a sampling row passes when 99% of them agree, and an
expectation row when max rel <= atol. Sampled gradients sum over all tokens, so they are shown, not judged.
"""
import copy

import numpy as np

DEFAULT_ATOL = float(1024 * np.finfo(np.float32).eps)  # ~1.2e-4: float32 resolution grown over a deep stack
SAMPLING_AGREEMENT = 0.99


def cuda_available():
    """(True, "") where CuPy sees a CUDA device, else (False, why not)."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no cupy, or cupy without a driver
        return False, f"{type(exc).__name__}: {exc}"
    return (count > 0, "" if count > 0 else "no CUDA device")


def make_inputs(model_class, config, texts=None, length=None, batch=1, seed=0, tokenizer=None):
    """Model inputs (NumPy): the tokenized `texts`, or `batch` rows of `length` random token ids."""
    from ..models import YosoForMultipleChoice

    if (texts is None) == (length is None):
        raise ValueError("give either texts or length (random tokens), not both or neither")
    if texts is not None:
        inputs = dict(tokenizer(list(texts)))
    else:
        if length < 1 or batch < 1:
            raise ValueError(f"length and batch must be >= 1, got {length} and {batch}")
        ids = np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length))
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if model_class is YosoForMultipleChoice:  # (batch, choices, n): two choices of the same rows
        inputs = {k: np.stack([v, v[::-1]], axis=1) for k, v in inputs.items()}
    return inputs


def make_targets(model, inputs, seed):
    """What forward_backward needs for a loss, drawn from `seed`: labels of the head's kind, or a random
    grad_last_hidden_state for the bare encoder."""
    from .. import models

    rng = np.random.default_rng(seed + 1)
    ids, cfg = inputs["input_ids"], model.config
    batch, n = ids.shape[0], ids.shape[-1]
    if isinstance(model, models.YosoForMaskedLM):
        return {"labels": ids}
    if isinstance(model, models.YosoForSequenceClassification):
        if cfg.problem_type == "regression" or (cfg.problem_type is None and cfg.num_labels == 1):
            return {"labels": rng.standard_normal((batch, cfg.num_labels))}
        if cfg.problem_type == "multi_label_classification":
            return {"labels": rng.integers(0, 2, (batch, cfg.num_labels)).astype(np.float64)}
        return {"labels": rng.integers(0, cfg.num_labels, batch)}
    if isinstance(model, models.YosoForMultipleChoice):
        return {"labels": rng.integers(0, ids.shape[1], batch)}
    if isinstance(model, models.YosoForTokenClassification):
        return {"labels": rng.integers(0, cfg.num_labels, (batch, n))}
    if isinstance(model, models.YosoForQuestionAnswering):
        return {"start_positions": rng.integers(0, n, batch), "end_positions": rng.integers(0, n, batch)}
    return {"grad_last_hidden_state": rng.standard_normal((batch, n, cfg.hidden_size))}


def outputs(model, inputs, seed, grads):
    """{row name: NumPy float64 array} of one run."""
    from ..backend import to_numpy

    kwargs = dict(inputs, output_hidden_states=True, output_attentions=True, rng=seed)
    if grads:
        out, gradients = model.forward_backward(**kwargs, **make_targets(model, inputs, seed))
    else:
        out, gradients = model(**kwargs), {}
    rows = {}
    for i, h in enumerate(out["hidden_states"]):
        rows["embeddings" if i == 0 else f"layer {i}"] = h
        if i:
            rows[f"attention {i}"] = out["attentions"][i - 1]
    for key in [k for k in ("logits", "start_logits", "end_logits") if out.get(k) is not None] or ["last_hidden_state"]:
        rows[f"head {key}"] = out[key]
    groups = {}
    for key, g in gradients.items():
        layer = key.split("encoder.layer.")[1].split(".")[0] if "encoder.layer." in key else None
        name = f"grad layer {int(layer) + 1}" if layer is not None else (
            "grad embeddings" if "embeddings." in key else "grad head")
        groups.setdefault(name, []).append(to_numpy(g).astype(np.float64).ravel())
    rows = {k: to_numpy(v).astype(np.float64) for k, v in rows.items()}
    rows.update({k: np.concatenate(v) for k, v in sorted(groups.items(), key=lambda kv: _grad_order(kv[0]))})
    return rows


def _grad_order(name):
    return (0, 0) if name == "grad embeddings" else (2, 0) if name == "grad head" else (1, int(name.split()[-1]))


def compare(actual, reference, atol, sampling, judged=True):
    """One row's statistics (see the module docstring)."""
    diff = np.abs(actual - reference)
    scale = max(float(np.abs(reference).max()) if reference.size else 0.0, np.finfo(np.float64).tiny)
    max_abs = float(diff.max()) if diff.size else 0.0
    row = {"max_abs": max_abs, "max_rel": max_abs / scale}
    if sampling:
        per_token = diff.reshape(-1, diff.shape[-1]).max(axis=-1) if diff.ndim > 1 else diff
        row["agree"] = float((per_token <= atol * scale).mean()) if per_token.size else 1.0
        row["ok"] = row["agree"] >= SAMPLING_AGREEMENT if judged else None
    else:
        row["ok"] = row["max_rel"] <= atol if judged else None
    return row


def run_parity(model_path, texts=None, length=None, batch=1, seed=0, grads=False, atol=DEFAULT_ATOL, emulate=False,
               modes=("expectation", "sampling"), **hub):
    """The parity report of a checkpoint (a dict; see format_table). `hub`: revision, cache_dir, ... ."""
    from ..pipelines import checkpoint_class
    from ..tokenizer import Tokenizer

    cls = checkpoint_class(model_path, **hub)
    reference = cls.from_pretrained(model_path, dtype=np.float64, **hub)
    single = cls.from_pretrained(model_path, dtype=np.float32, **hub)
    tokenizer = Tokenizer.from_pretrained(model_path, **hub) if texts is not None else None
    inputs = make_inputs(cls, reference.config, texts, length, batch, seed, tokenizer)
    backends = [("cpu-float32", single, None)]
    if emulate:
        backends.append(("cuda-float32 (emulated)", single, "emulate"))
        skipped = None
    else:
        available, why = cuda_available()
        skipped = None if available else f"cuda-float32: {why}"
        if available:
            backends.append(("cuda-float32", single, "cuda"))
    report = {"model": str(model_path), "class": cls.__name__, "atol": atol, "seed": seed,
              "inputs": {k: list(v.shape) for k, v in inputs.items()}, "backends": [b[0] for b in backends],
              "skipped": skipped, "rows": []}
    for mode in modes:
        if mode not in ("expectation", "sampling"):
            raise ValueError(f"modes must hold 'expectation' and/or 'sampling', got {mode!r}")
        for model in (reference, single):
            model.config.use_expectation = mode == "expectation"
        ref = outputs(reference, inputs, seed, grads)
        for name, model, device in backends:
            got = _run_on(model, device, inputs, seed, grads)
            for row, expected in ref.items():
                stats = compare(got[row], expected, atol, mode == "sampling",
                                judged=not (mode == "sampling" and row.startswith("grad")))
                report["rows"].append({"mode": mode, "output": row, "backend": name, **stats})
    report["ok"] = all(r["ok"] is not False for r in report["rows"])
    return report


def _run_on(model, device, inputs, seed, grads):
    if device is None:
        return outputs(model, inputs, seed, grads)
    gpu = copy.copy(model)  # a shallow copy: to() rebinds its weights dict, the CPU model keeps its own
    if device == "emulate":
        from . import emulated_cuda

        with emulated_cuda():
            return outputs(gpu.to("cuda"), inputs, seed, grads)
    return outputs(gpu.to("cuda"), inputs, seed, grads)


def format_table(report):
    """The report as a text table, one row per output and backend."""
    header = ("mode", "output", "backend", "max abs", "max rel", "agree", "")
    lines = [(r["mode"], r["output"], r["backend"], f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}",
              f"{r['agree']:.3f}" if "agree" in r else "-",
              "ok" if r["ok"] else "shown" if r["ok"] is None else "ABOVE") for r in report["rows"]]
    widths = [max(len(row[c]) for row in [header, *lines]) for c in range(len(header))]
    text = [f"{report['class']} {report['model']}: reference cpu-float64, inputs "
            + ", ".join(f"{k} {tuple(v)}" for k, v in report["inputs"].items()) + f", atol {report['atol']:.2e}"]
    if report["skipped"]:
        text.append(f"skipped {report['skipped']}")
    for row in [header, *lines]:
        text.append("  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in
                              enumerate(zip(row, widths))).rstrip())
    bad = sum(r["ok"] is False for r in report["rows"])
    text.append("all rows within tolerance" if not bad else f"{bad} row(s) above tolerance")
    return "\n".join(text)
