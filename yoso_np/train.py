"""Fine-tuning without torch: SGD with momentum, learning-rate schedules, gradient clipping, the training loop,
checkpoints that survive a kill, and exact resume.

    args = TrainingArguments(output_dir="out", epochs=3, batch_size=16, lr=0.05)
    summary = train(model, train_data, eval_data, args=args, tokenizer=tok)   # data: yoso_np.data.Dataset

Every random draw is a function of the seed and the position in training: the data order of epoch e comes from
numpy's default_rng([seed, e]), the dropout / LSH / masking draws of step s from default_rng([seed, stream, s]).
So a run resumed from a checkpoint ends with the same weights, bit for bit on CPU, as one never interrupted.

`yoso-np finetune` is add_finetune_arguments + run_finetune (also `python -m yoso_np.train`).
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .backend import array_module, to_device, to_numpy
from .cli import bounded
from .data import DataError, Dataset, LabelSpec, extract_fields, is_table, mask_tokens, read_records

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"
LOG_NAME = "train_log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
SCHEDULES = ("linear", "constant")
TASKS = ("sequence-classification", "masked-lm")
# independent random streams of one step: default_rng([seed, stream, step])
DROPOUT_STREAM, MASKING_STREAM, EVAL_STREAM, GROUPING_STREAM = 0, 1, 2, 3


class UsageError(ValueError):
    """Bad arguments or input: the CLI prints the message and exits with status 2."""


class TrainingDivergedError(RuntimeError):
    """The loss (or the weights) became NaN or inf; nothing was saved from that step on."""


# -- the optimizer ---------------------------------------------------------------------------------------------
def decays(name):
    """Whether weight decay applies: not to biases and LayerNorm weights (transformers' Trainer groups)."""
    return not (name.endswith("bias") or "LayerNorm.weight" in name)


class SGD:
    """torch.optim.SGD (dampening 0) over a weight dict, updated in place on its own backend.

    update = g + wd * w (L2, only where decays(name)); with momentum: buf = momentum * buf + update (buf = update
    on the first step) and update = buf, or update + momentum * buf with nesterov; then w -= lr * update.
    """

    def __init__(self, weights, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs a momentum > 0 (as torch.optim.SGD)")
        self.weights, self.lr, self.momentum = weights, lr, momentum
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self.buffers = {}  # name -> momentum buffer, created at the first step as torch does

    def step(self, grads, lr=None):
        lr = self.lr if lr is None else lr
        missing = set(self.weights) - set(grads)
        if missing:
            raise ValueError(f"grads lacks {len(missing)} weight(s): {sorted(missing)[:5]}")
        for name, w in self.weights.items():
            g = grads[name]
            if self.weight_decay and decays(name):
                g = g + self.weight_decay * w
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = g.copy()
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            w -= lr * g

    def state_dict(self):
        return {k: to_numpy(v) for k, v in self.buffers.items()}

    def load_state_dict(self, buffers):
        unknown = set(buffers) - set(self.weights)
        if unknown:
            raise ValueError(f"momentum buffers for weights the model lacks: {sorted(unknown)[:5]}")
        device = "cpu" if array_module(*self.weights.values()) is np else "cuda"
        for k, v in buffers.items():
            if tuple(v.shape) != tuple(self.weights[k].shape):
                raise ValueError(f"momentum buffer {k!r} has shape {tuple(v.shape)}, the weight "
                                 f"{tuple(self.weights[k].shape)}")
        self.buffers = {k: to_device(np.array(v, dtype=self.weights[k].dtype), device) for k, v in buffers.items()}


def global_grad_norm(grads):
    """The 2-norm of all gradients taken as one vector (a Python float)."""
    xp = array_module(*grads.values())
    norms = xp.stack([xp.linalg.norm(g.ravel()) for g in grads.values()])
    return float(xp.linalg.norm(norms))


def clip_grad_norm(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_: scale all grads in place by max_norm / (norm + 1e-6) when that is
    below 1. Returns the norm before clipping."""
    norm = global_grad_norm(grads)
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for g in grads.values():
            g *= scale
    return norm


def lr_factor(step, *, total_steps, warmup_steps=0, schedule="linear"):
    """The multiplier of the base lr for optimizer step ``step`` (0-based), as transformers'
    get_linear_schedule_with_warmup / get_constant_schedule_with_warmup."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# -- arguments -------------------------------------------------------------------------------------------------
@dataclass
class TrainingArguments:
    output_dir: str
    epochs: int = 3
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None or 0: no clipping
    warmup_steps: int = 0
    schedule: str = "linear"
    seed: int = 0
    save_steps: int = 500  # 0: only at the end of each epoch
    save_total_limit: int | None = None
    logging_steps: int = 10
    mlm_probability: float = 0.15
    resume: bool = False
    device: str | None = None  # None: where the model is
    quiet: bool = False
    group_by_length: bool = False  # training batches of rows of similar length (transformers' option)

    def validate(self):
        def check(ok, name, expected):
            if not ok:
                raise UsageError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name in ("epochs", "batch_size", "logging_steps"):
            check(is_int(getattr(self, name)) and getattr(self, name) > 0, name, "a positive integer")
        for name in ("warmup_steps", "save_steps", "seed"):
            check(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        check(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0, "lr",
              "a positive number")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, name, "a number >= 0")
        check(self.max_grad_norm is None or (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm >= 0),
              "max_grad_norm", "a number >= 0 or None")
        check(self.save_total_limit is None or (is_int(self.save_total_limit) and self.save_total_limit > 0),
              "save_total_limit", "a positive integer or None")
        check(0 < self.mlm_probability < 1, "mlm_probability", "in (0, 1)")
        check(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        check(self.device in (None, "cpu", "cuda"), "device", "'cpu', 'cuda' or None")
        check(isinstance(self.group_by_length, bool), "group_by_length", "True or False")
        check(not self.nesterov or self.momentum > 0, "momentum", "> 0 with nesterov")
        return self


# -- randomness ------------------------------------------------------------------------------------------------
def step_rng(seed, stream, step):
    return np.random.default_rng([seed, stream, step])


def data_order_state(seed, epoch):
    """The generator state (JSON-able) that draws the data order of ``epoch``."""
    return np.random.default_rng([seed, epoch]).bit_generator.state


def data_order(state, n):
    """The permutation of n rows drawn by a generator restored from ``state``."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator).permutation(n)


def length_grouped_order(order, lengths, batch_size, rng, groups_per_window=50):
    """``order`` (a shuffled permutation) rearranged into batches of rows of similar length, as transformers'
    group_by_length: windows of groups_per_window batches of the shuffled order are each sorted by length (longest
    first, ties in shuffled order) and cut into batches, and the batches of all windows are shuffled by ``rng``.
    Every row once; a short last batch stays last, since the loop cuts the order into batch_size slices."""
    lengths = np.asarray(lengths)
    window = batch_size * groups_per_window
    batches = []
    for w in np.split(order, range(window, len(order), window)):
        w = w[np.argsort(-lengths[w], kind="stable")]
        batches.extend(np.split(w, range(batch_size, len(w), batch_size)))
    short = [] if len(batches[-1]) == batch_size else [batches.pop()]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))] + short)


# -- evaluation ------------------------------------------------------------------------------------------------
def _f1(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def classification_metrics(predictions, labels, num_labels):
    """accuracy and macro F1 (averaged over the classes that occur in labels or predictions)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.arange(num_labels)
    tp = ((predictions[:, None] == classes) & (labels[:, None] == classes)).sum(0)
    fp = ((predictions[:, None] == classes) & (labels[:, None] != classes)).sum(0)
    fn = ((predictions[:, None] != classes) & (labels[:, None] == classes)).sum(0)
    seen = (tp + fp + fn) > 0
    return {"accuracy": float((predictions == labels).mean()),
            "macro_f1": float(_f1(tp, fp, fn)[seen].mean()) if seen.any() else 0.0}


def multi_label_metrics(logits, labels):
    """micro and macro F1 of logits > 0 against 0/1 labels (macro over labels that occur)."""
    predicted, truth = np.asarray(logits) > 0, np.asarray(labels) > 0.5
    tp, fp, fn = (predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0)
    seen = (tp + fp + fn) > 0
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(_f1(tp, fp, fn)[seen].mean()) if seen.any() else 0.0,
            "exact_match": float((predicted == truth).all(1).mean())}


def evaluate(model, data, *, batch_size=32, seed=0, mlm_probability=0.15):
    """Loss and metrics of ``model`` on ``data`` (a Dataset), without dropout. Sequence classification:
    accuracy and macro F1, MSE for regression, micro/macro F1 at logit 0 for multi-label; masked LM: accuracy on
    masked tokens (masks drawn from the seed, the same at every call); token classification: accuracy and macro F1
    over labelled tokens; multiple choice: accuracy; question answering: exact match of start and end."""
    from .models import (YosoForMaskedLM, YosoForQuestionAnswering, YosoForSequenceClassification,
                         YosoForTokenClassification)

    is_mlm = isinstance(model, YosoForMaskedLM)
    total_loss, total_count, outputs, targets = 0.0, 0, [], []
    # rows sorted by length, so that each batch pads only to its own longest row (the metrics do not depend on
    # the order)
    by_length = np.argsort([r.shape[-1] for r in data.rows], kind="stable")
    for number, start in enumerate(range(0, len(data), batch_size)):
        batch = data.batch(by_length[start:start + batch_size])
        rng = step_rng(seed, EVAL_STREAM, number)
        if is_mlm:
            batch["input_ids"], batch["labels"] = mask_tokens(
                batch["input_ids"], batch["attention_mask"], rng, mask_token_id=data.mask_token_id,
                vocab_size=min(data.vocab_size or model.config.vocab_size, model.config.vocab_size),
                special_token_ids=data.special_token_ids,
                mlm_probability=mlm_probability)
        with np.errstate(invalid="ignore", divide="ignore"):  # a batch with no masked token has a NaN loss
            out = model(**batch, training=False, rng=rng)
        if isinstance(model, YosoForQuestionAnswering):
            predicted = np.stack([to_numpy(out.start_logits).argmax(-1), to_numpy(out.end_logits).argmax(-1)], 1)
            outputs.append(predicted)
            targets.append(np.stack([batch["start_positions"], batch["end_positions"]], 1))
            count = len(predicted)
        elif is_mlm or isinstance(model, YosoForTokenClassification):
            keep = (batch["labels"] != -100) & (batch["attention_mask"] == 1)
            outputs.append(to_numpy(out.logits)[keep].argmax(-1))
            targets.append(batch["labels"][keep])
            count = int(keep.sum())
        else:
            outputs.append(to_numpy(out.logits))
            targets.append(batch["labels"])
            count = len(batch["labels"])
        if count and out.loss is not None:
            total_loss += float(out.loss) * count
            total_count += count
    metrics = {"loss": total_loss / total_count if total_count else float("nan")}
    predicted, truth = np.concatenate(outputs), np.concatenate(targets)
    if isinstance(model, YosoForQuestionAnswering):
        metrics["exact_match"] = float((predicted == truth).all(1).mean())
    elif is_mlm:
        metrics["accuracy"] = float((predicted == truth).mean()) if truth.size else float("nan")
    elif isinstance(model, YosoForTokenClassification):
        metrics.update(classification_metrics(predicted, truth, model.config.num_labels))
    elif isinstance(model, YosoForSequenceClassification):
        problem = model.problem_type(truth)
        if problem == "regression":
            metrics["mse"] = float(((predicted.reshape(truth.shape) - truth) ** 2).mean())
        elif problem == "multi_label_classification":
            metrics.update(multi_label_metrics(predicted, truth))
        else:
            metrics.update(classification_metrics(predicted.argmax(-1), truth, model.config.num_labels))
    else:  # multiple choice
        metrics["accuracy"] = float((predicted.argmax(-1) == truth).mean())
    return metrics


# -- checkpoints -----------------------------------------------------------------------------------------------
def list_checkpoints(output_dir):
    """Complete checkpoints in output_dir as [(step, path)], oldest first (temporary folders are skipped)."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            path = os.path.join(output_dir, name)
            step = name[len(CHECKPOINT_PREFIX):]
            if name.startswith(CHECKPOINT_PREFIX) and step.isdigit() and os.path.isfile(os.path.join(path, STATE_NAME)):
                found.append((int(step), path))
    return sorted(found)


def remove_temporary_checkpoints(output_dir):
    for name in os.listdir(output_dir):
        if name.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def weights_are_finite(weights):
    return all(bool(array_module(w).isfinite(w).all()) for w in weights.values())


def save_checkpoint(output_dir, model, optimizer, state, tokenizer=None):
    """Write DIR/checkpoint-STEP via a temporary folder renamed into place: a kill leaves no partial checkpoint."""
    step = state["global_step"]
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{step}")
    shutil.rmtree(tmp, ignore_errors=True)
    old = None
    try:
        model.save_pretrained(tmp)
        checkpoint.save_safetensors(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_NAME),
                                    metadata={"format": "yoso_np.sgd"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(os.path.join(tmp, STATE_NAME), state)
        if os.path.exists(final):  # the same step saved before (a resumed run that was already finished)
            old = os.path.join(output_dir, f"{TMP_PREFIX}{step}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)  # moved aside, not deleted, until the new one is in place
        os.replace(tmp, final)
    except OSError as exc:  # a full disk or read-only folder: the half-written copy goes, the others stay
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(final):
            os.replace(old, final)
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        message = (f"could not write checkpoint {final}: {reason}; the checkpoints saved before in {output_dir} "
                   f"are intact")
        raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_json(path, data):
    text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    checkpoint.write_files({path: lambda f: f.write(text)}, what=path)


def load_checkpoint(path, model, optimizer):
    """Load weights (in place) and momentum buffers from a checkpoint; returns its trainer state."""
    with open(os.path.join(path, STATE_NAME), encoding="utf-8") as f:
        state = json.load(f)
    saved = checkpoint.read_safetensors(os.path.join(path, "model.safetensors"))
    if set(saved) != set(model.weights):
        raise UsageError(f"{path} does not hold this model's weights: differing keys "
                         f"{sorted(set(saved) ^ set(model.weights))[:5]}")
    for k, w in model.weights.items():
        if saved[k].shape != w.shape:
            raise UsageError(f"{path}: weight {k!r} has shape {saved[k].shape}, the model {w.shape}")
        w[...] = to_device(np.asarray(saved[k], dtype=w.dtype), model.device)
    optimizer.load_state_dict(checkpoint.read_safetensors(os.path.join(path, OPTIMIZER_NAME)))
    return state


# -- the loop --------------------------------------------------------------------------------------------------
# what a resumed run may change: where and how often it writes and reports, where it runs, where the hub cache is
FREE_ON_RESUME = frozenset({"output_dir", "resume", "device", "quiet", "save_steps", "save_total_limit",
                            "logging_steps", "cache_dir", "local_files_only"})


def check_same_run(path, state, args, num_train_rows, run_info):
    """Raise UsageError unless every other setting (the TrainingArguments, the number of training rows, the CLI's
    options in run_info) is the one the checkpoint at ``path`` was trained with: a resume is exact only then."""
    defaults = dataclasses.asdict(TrainingArguments(output_dir=""))  # for a checkpoint older than a setting
    stored_args = {**defaults, **state["args"], "num_train_rows": state["num_train_rows"]}
    for now, was in (({**dataclasses.asdict(args), "num_train_rows": num_train_rows}, stored_args),
                     (run_info or {}, state.get("run", {}))):
        for key, value in now.items():
            if key not in FREE_ON_RESUME and key in was and was[key] != value:
                raise UsageError(f"cannot resume {path}: it was trained with {key}={was[key]}, now {value}")


def train(model, train_data, eval_data=None, *, args, tokenizer=None, run_info=None):
    """Fine-tune ``model`` (any Yoso* head class) on ``train_data`` (a yoso_np.data.Dataset; for YosoForMaskedLM
    unlabelled rows, masked on the fly). Checkpoints into args.output_dir, evaluates on ``eval_data`` after each
    epoch, saves the final model (and ``tokenizer``) in args.output_dir. run_info: extra JSON stored in the
    trainer state (the CLI's options). Returns a summary dict."""
    from .models import YosoForMaskedLM

    if not isinstance(args, TrainingArguments):
        raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
    args.validate()
    if not isinstance(train_data, Dataset):
        raise TypeError(f"train_data must be a yoso_np.data.Dataset, got {type(train_data).__name__}")
    is_mlm = isinstance(model, YosoForMaskedLM)
    if is_mlm and train_data.mask_token_id is None:
        raise UsageError("masked-LM training needs a mask token id in the Dataset (build it with from_texts)")
    out_dir = args.output_dir
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not args.resume:
        raise UsageError(f"output directory {out_dir} is not empty; pass --resume (resume=True) to continue "
                         f"the run in it, or choose another directory")
    os.makedirs(out_dir, exist_ok=True)
    if args.device is not None:
        model.to(args.device)
    for k, w in model.weights.items():  # the optimizer updates in place: no read-only views of a file
        if not getattr(w.flags, "writeable", True):
            model.weights[k] = w.copy()

    optimizer = SGD(model.weights, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                    weight_decay=args.weight_decay)
    n, batch_size = len(train_data), args.batch_size
    batches_per_epoch = math.ceil(n / batch_size)
    total_steps = batches_per_epoch * args.epochs
    step, epoch, first_batch, log_history, window = 0, 0, 0, [], []
    last_checkpoint = restored_order = None
    checkpoints = list_checkpoints(out_dir) if args.resume else []
    if args.resume:
        remove_temporary_checkpoints(out_dir)
    if checkpoints:
        last_checkpoint = checkpoints[-1][1]
        state = load_checkpoint(last_checkpoint, model, optimizer)
        check_same_run(last_checkpoint, state, args, n, run_info)
        step, epoch, first_batch = state["global_step"], state["epoch"], state["batch_in_epoch"]
        log_history, window = state["log_history"], state["loss_window"]
        restored_order = state["data_order"]["generator_state"]
    # the log holds exactly the history of the state we continue from
    with open(os.path.join(out_dir, LOG_NAME), "w", encoding="utf-8") as log:
        log.writelines(json.dumps(entry) + "\n" for entry in log_history)

    labels_info = {"problem_type": model.config.problem_type, "num_labels": model.config.num_labels,
                   "id2label": {str(k): v for k, v in model.config.id2label.items()},
                   "label2id": model.config.label2id}

    def trainer_state(next_epoch, next_batch):
        # where training continues: batch ``next_batch`` (0-based) of epoch ``next_epoch`` (0-based)
        return {"global_step": step, "epoch": next_epoch, "batch_in_epoch": next_batch,
                "epoch_progress": step / batches_per_epoch, "total_steps": total_steps, "num_train_rows": n,
                "seed": args.seed,
                "data_order": {"epoch": next_epoch, "seed": [args.seed, next_epoch],
                               "generator_state": data_order_state(args.seed, next_epoch)},
                "step_rng": f"numpy.random.default_rng([seed, stream, step]), streams: dropout/LSH "
                            f"{DROPOUT_STREAM}, masking {MASKING_STREAM}, evaluation {EVAL_STREAM}, "
                            f"length groups {GROUPING_STREAM} (step = epoch)",
                "labels": labels_info, "args": dataclasses.asdict(args), "run": run_info or {},
                "log_history": log_history, "loss_window": window}

    def record(entry):
        log_history.append(entry)
        with open(os.path.join(out_dir, LOG_NAME), "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=step, disable=args.quiet, desc="finetune", unit="step", dynamic_ncols=True)
    # a resumed run reports the last evaluation even if it had none left to do
    last_eval = next((e for e in reversed(log_history) if "eval_loss" in e), {})
    eval_metrics = {k: v for k, v in last_eval.items() if k.startswith("eval_")}
    started, first_step = time.time(), step
    start_epoch = epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            # the data order of the epoch we resume in comes from the generator state the checkpoint stored
            order_state = restored_order if epoch == start_epoch and restored_order else data_order_state(args.seed,
                                                                                                           epoch)
            order = data_order(order_state, n)
            if args.group_by_length:
                order = length_grouped_order(order, [r.shape[-1] for r in train_data.rows], batch_size,
                                             step_rng(args.seed, GROUPING_STREAM, epoch))
            for b in range(first_batch, batches_per_epoch):
                batch = train_data.batch(order[b * batch_size:(b + 1) * batch_size])
                if is_mlm:
                    batch["input_ids"], batch["labels"] = mask_tokens(
                        batch["input_ids"], batch["attention_mask"], step_rng(args.seed, MASKING_STREAM, step),
                        mask_token_id=train_data.mask_token_id, at_least_one=True,
                        vocab_size=min(train_data.vocab_size or model.config.vocab_size, model.config.vocab_size),
                        special_token_ids=train_data.special_token_ids, mlm_probability=args.mlm_probability)
                # overflow is caught below as a non-finite loss or weight, with the step named
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    out, grads = model.forward_backward(**batch, training=True,
                                                        rng=step_rng(args.seed, DROPOUT_STREAM, step))
                    loss = float(out.loss)
                    grad_norm = (clip_grad_norm(grads, args.max_grad_norm) if args.max_grad_norm
                                 else global_grad_norm(grads))
                    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                        raise diverged(step + 1, epoch, f"the loss is {loss} (gradient norm {grad_norm})",
                                       last_checkpoint)
                    lr = args.lr * lr_factor(step, total_steps=total_steps, warmup_steps=args.warmup_steps,
                                             schedule=args.schedule)
                    optimizer.step(grads, lr)
                step += 1
                window.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
                end_of_epoch = b == batches_per_epoch - 1
                if step % args.logging_steps == 0 or end_of_epoch:
                    record({"step": step, "epoch": round(step / batches_per_epoch, 4),
                            "loss": float(np.mean(window)), "lr": lr, "grad_norm": grad_norm})
                    window.clear()
                if end_of_epoch and eval_data is not None:
                    eval_metrics = {f"eval_{k}": v for k, v in evaluate(
                        model, eval_data, batch_size=batch_size, seed=args.seed,
                        mlm_probability=args.mlm_probability).items()}
                    record({"step": step, "epoch": epoch + 1, **eval_metrics})
                    if not args.quiet:
                        bar.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                if end_of_epoch or (args.save_steps and step % args.save_steps == 0):
                    if not weights_are_finite(model.weights):
                        raise diverged(step, epoch, "the weights hold NaN or inf after the update", last_checkpoint)
                    next_position = (epoch + 1, 0) if end_of_epoch else (epoch, b + 1)
                    last_checkpoint = save_checkpoint(out_dir, model, optimizer, trainer_state(*next_position),
                                                      tokenizer)
                    prune_checkpoints(out_dir, args.save_total_limit)
            first_batch = 0
    finally:
        bar.close()

    if not weights_are_finite(model.weights):
        raise diverged(step, epoch, "the weights hold NaN or inf", last_checkpoint)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    elapsed = time.time() - started
    train_losses = [e["loss"] for e in log_history if "loss" in e]
    summary = {"global_step": step, "epochs": args.epochs, "train_runtime_s": round(elapsed, 3),
               "steps_per_second": round((step - first_step) / elapsed, 3) if elapsed > 0 else None,
               "final_loss": train_losses[-1] if train_losses else None, **eval_metrics,
               "output_dir": out_dir}
    if not args.quiet:
        print("training done: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in summary.items()))
    return summary


def diverged(step, epoch, what, last_checkpoint):
    kept = f"the last checkpoint, {last_checkpoint}, is intact" if last_checkpoint else "no checkpoint was saved"
    return TrainingDivergedError(f"training diverged at step {step} (epoch {epoch + 1}): {what}; stopped without "
                                 f"saving; {kept}. Try a lower --lr or --max-grad-norm 1")


def prune_checkpoints(output_dir, limit):
    if limit is None:
        return
    for _, path in list_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(path, ignore_errors=True)


# -- the finetune command --------------------------------------------------------------------------------------
_positive_int, _positive_float = bounded(int, 0), bounded(float, 0)
_non_negative_int, _non_negative_float = bounded(int, 0, strict=False), bounded(float, 0, strict=False)


def add_finetune_arguments(parser):
    """The options of `yoso-np finetune MODEL --train FILE --output-dir DIR`."""
    defaults = TrainingArguments(output_dir="")
    parser.add_argument("model", metavar="MODEL", help="local folder or hub id of a YOSO checkpoint (base, MLM or "
                        "classifier); a missing head is initialised from --seed")
    parser.add_argument("--train", required=True, metavar="FILE", help="training data: .jsonl, .json, .csv or .tsv")
    parser.add_argument("--revision", help="hub branch, tag or commit of MODEL")
    parser.add_argument("--cache-dir", help="hub cache folder (default: huggingface_hub's)")
    parser.add_argument("--local-files-only", action="store_true", help="use the hub cache only, no network")
    parser.add_argument("--eval", metavar="FILE", help="held-out data, evaluated after each epoch")
    parser.add_argument("--output-dir", required=True, metavar="DIR",
                        help="checkpoints, train_log.jsonl and the final model + tokenizer")
    parser.add_argument("--task", choices=TASKS, default="sequence-classification")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder or hub id (default: MODEL's)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--text-pair-field", default=None, help="second text of a pair (e.g. NLI hypothesis)")
    parser.add_argument("--label-field", default="label",
                        help="int or string labels: classes; floats: regression; lists: multi-label")
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size)
    parser.add_argument("--max-length", type=_positive_int, default=128, help="tokens per text (pair), truncated")
    parser.add_argument("--lr", type=_positive_float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--momentum", type=_non_negative_float, default=defaults.momentum)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=_non_negative_float, default=defaults.weight_decay,
                        help="L2 on all weights but biases and LayerNorm weights")
    parser.add_argument("--max-grad-norm", type=_non_negative_float, default=defaults.max_grad_norm,
                        help="clip the global gradient norm (0: no clipping)")
    parser.add_argument("--warmup-steps", type=_non_negative_int, default=defaults.warmup_steps)
    parser.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                        help="after warmup: linear decay to 0, or constant")
    parser.add_argument("--mlm-probability", type=float, default=defaults.mlm_probability)
    parser.add_argument("--seed", type=_non_negative_int, default=defaults.seed)
    parser.add_argument("--save-steps", type=_non_negative_int, default=defaults.save_steps,
                        help="checkpoint every N steps (0: only at epoch ends)")
    parser.add_argument("--save-total-limit", type=_positive_int, default=None, help="keep only the newest N")
    parser.add_argument("--logging-steps", type=_positive_int, default=defaults.logging_steps)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in DIR")
    parser.add_argument("--group-by-length", action="store_true",
                        help="batches of texts of similar length (less padding), shuffled, reproducible from --seed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _read_split(path, args, *, labelled):
    if not path:
        return None
    records = read_records(path)
    texts, pairs, raw = extract_fields(records, text_field=args.text_field, text_pair_field=args.text_pair_field,
                                       label_field=args.label_field if labelled else None)
    return texts, pairs, raw, is_table(path)


def hub_options(args):
    """--revision / --cache-dir / --local-files-only (absent from a hand-built namespace: defaults)."""
    return {"revision": getattr(args, "revision", None), "cache_dir": getattr(args, "cache_dir", None),
            "local_files_only": getattr(args, "local_files_only", False)}


def prepare_finetune(args):
    """Everything run_finetune does before training: returns (model, train_data, eval_data, tokenizer,
    TrainingArguments). Raises UsageError / DataError on bad input."""
    from .config import CONFIG_NAME, YosoConfig
    from .models import YosoForMaskedLM, YosoForSequenceClassification
    from .tokenizer import Tokenizer

    targs = TrainingArguments(
        output_dir=args.output_dir, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm or None, warmup_steps=args.warmup_steps, schedule=args.schedule,
        seed=args.seed, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        logging_steps=getattr(args, "logging_steps", 10), mlm_probability=getattr(args, "mlm_probability", 0.15),
        resume=args.resume, device=args.device, quiet=args.quiet,
        group_by_length=getattr(args, "group_by_length", False)).validate()
    if not isinstance(args.max_length, int) or args.max_length <= 0:
        raise UsageError(f"max_length must be a positive integer, got {args.max_length!r}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UsageError(f"--output-dir {args.output_dir} exists and is not a directory")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.resume:
        raise UsageError(f"--output-dir {args.output_dir} is not empty; pass --resume to continue the run in it, "
                         f"or choose another directory")

    labelled = args.task == "sequence-classification"
    train_split = _read_split(args.train, args, labelled=labelled)
    eval_split = _read_split(args.eval, args, labelled=labelled)
    overrides, spec = {}, None
    if labelled:
        spec = LabelSpec.from_values(train_split[2] + (eval_split[2] if eval_split else []),
                                     table=train_split[3] or bool(eval_split and eval_split[3]))
        overrides = {"num_labels": spec.num_labels, "problem_type": spec.problem_type}
        if spec.id2label is not None:
            overrides.update(id2label=spec.id2label, label2id=spec.label2id)

    try:
        tokenizer = Tokenizer.from_pretrained(args.tokenizer or args.model, **hub_options(args))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the tokenizer of {args.tokenizer or args.model}: {exc}") from None
    cls = YosoForSequenceClassification if labelled else YosoForMaskedLM
    try:
        if labelled and spec.id2label is None:
            # int labels: keep the checkpoint's class names when it already has this many classes
            saved = YosoConfig.from_json_file(checkpoint.resolve_file(args.model, CONFIG_NAME))
            if saved.num_labels == spec.num_labels:
                overrides.update(id2label=saved.id2label, label2id=saved.label2id)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = cls.from_pretrained(args.model, seed=args.seed, **hub_options(args), **overrides)
        for w in caught:
            if not args.quiet:
                print(f"note: {w.message}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the model {args.model}: {exc}") from None

    max_length = min(args.max_length, model.config.max_position_embeddings)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UsageError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                         f"{model.config.vocab_size}")

    def dataset(split, name):
        if split is None:
            return None
        texts, pairs, raw, table = split
        labels = spec.encode(raw, table=table) if labelled else None
        try:
            return Dataset.from_texts(tokenizer, texts, pairs, labels, max_length=max_length)
        except ValueError as exc:
            raise UsageError(f"cannot tokenise {name}: {exc}") from None

    return model, dataset(train_split, args.train), dataset(eval_split, args.eval), tokenizer, targs


def run_finetune(args):
    """`yoso-np finetune`: returns the exit status (0 done, 1 diverged, 2 bad input; messages on stderr)."""
    try:
        model, train_data, eval_data, tokenizer, targs = prepare_finetune(args)
        run_info = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
        train(model, train_data, eval_data, args=targs, tokenizer=tokenizer, run_info=run_info)
    except (UsageError, DataError) as exc:
        print(f"yoso-np finetune: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"yoso-np finetune: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = add_finetune_arguments(argparse.ArgumentParser(
        prog="python -m yoso_np.train", description="Fine-tune a YOSO model with SGD (torch-free)."))
    return run_finetune(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
