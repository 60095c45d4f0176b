"""Batched throughput: the dense layer's two products, YOSO-E on stacks of heads (forward and backward, on threads
or not) against float64 formulas, and length-grouped batches in the fine-tuner (reproducible, resumable)."""
import argparse
import importlib
import shutil

import numpy as np
import pytest

from tests.compare import assert_same_file
from tests.test_train import contains_token_data, tiny_config
from yoso_np import YosoForSequenceClassification
from yoso_np.data import Dataset
from yoso_np.layers.linear import TRANSPOSED_BELOW_TOKENS, linear, linear_backward
from yoso_np.train import (TrainingArguments, add_finetune_arguments, evaluate, length_grouped_order, list_checkpoints,
                           train)

attention = importlib.import_module("yoso_np.layers.attention")  # the module, not the function of that name


@pytest.mark.parametrize("tokens", [1, 5, TRANSPOSED_BELOW_TOKENS - 1, TRANSPOSED_BELOW_TOKENS, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_both_products_against_float64(tokens, bias):
    rng = np.random.default_rng(tokens)
    p = {"weight": rng.standard_normal((24, 40)).astype(np.float32),
         "bias": rng.standard_normal(24).astype(np.float32) if bias else None}
    x = rng.standard_normal((1, tokens, 40)).astype(np.float32)
    y, cache = linear(p, x)
    expected = x.astype(np.float64) @ p["weight"].T.astype(np.float64) + (p["bias"] if bias else 0)
    assert y.shape == (1, tokens, 24) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = linear_backward(dy, cache)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ p["weight"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], dy[0].T.astype(np.float64) @ x[0], rtol=1e-4, atol=1e-4)
    assert ("bias" in grads) == bias
    x_copy = x.copy()  # dx over the cached input, after the weight's gradient has read it
    dx_over, grads_over = linear_backward(dy, (p, x_copy), overwrite_x=True)
    assert np.shares_memory(dx_over, x_copy)
    np.testing.assert_array_equal(dx_over, dx)
    for name in grads:
        np.testing.assert_array_equal(grads_over[name], grads[name])


def yoso_e_float64(q, k, v, tau):
    """W v and the surrogate gradients of one head, written out in float64."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    w = (1 - np.arccos(np.clip(q @ k.T, -1, 1)) / np.pi) ** tau
    return w, w @ v


@pytest.mark.parametrize("threads", [True, False])
def test_stacks_of_heads_against_float64(monkeypatch, threads):
    """Stacks of 3 heads (the last one short) with ragged slices, on threads or on the caller's, forward and
    backward, against each head's formula."""
    b, h, n, d, tau = 2, 4, 13, 8, 7
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 3 * n * n)
    monkeypatch.setattr(attention, "SLICE_ELEMENTS", 5 * n)
    monkeypatch.setattr(attention, "PARALLEL_MIN_ELEMENTS", 0 if threads else 1 << 62)
    calls = []
    real = attention.expectation_cumulation
    monkeypatch.setattr(attention, "expectation_cumulation", lambda q, *a: calls.append(q.shape[0]) or real(q, *a))
    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    q, k = (unit(rng.standard_normal((b, h, n, d))).astype(np.float32) for _ in range(2))
    v, g = (rng.standard_normal((b, h, n, d)).astype(np.float32) for _ in range(2))
    ctx = np.empty_like(v)

    def stack(r):
        ctx.reshape(b * h, n, d)[r] = attention.expectation_cumulation(*(a.reshape(b * h, n, d)[r] for a in (q, k, v)),
                                                                       tau)

    attention.for_each_head_stack(stack, b * h, n, n, np)
    assert sorted(calls) == [2, 3, 3]
    dq, dk, dv = attention.expectation_cumulation_backward(g.reshape(-1, n, d)[:3], *(a.reshape(-1, n, d)[:3]
                                                                                      for a in (q, k, v)), tau)
    for i, (bi, hi) in enumerate(np.ndindex(b, h)):
        w, expected = yoso_e_float64(q[bi, hi], k[bi, hi], v[bi, hi], tau)
        np.testing.assert_allclose(ctx[bi, hi], expected, rtol=1e-4, atol=1e-5)
        if i < 3:
            gv_w = (g[bi, hi].astype(np.float64) @ v[bi, hi].T) * w
            np.testing.assert_allclose(dv[i], w.T @ g[bi, hi], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(dq[i], gv_w @ k[bi, hi] * tau / 2, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(dk[i], gv_w.T @ q[bi, hi] * tau / 2, rtol=1e-4, atol=1e-5)


def test_a_stack_must_fit_one_block(monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 100)
    q = np.ones((2, 20, 4), np.float32)
    with pytest.raises(ValueError, match="2 heads of 20 x 20 do not fit one block of 100 elements"):
        attention.expectation_cumulation(q, q, q, 8)


def test_length_grouped_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 1003)
    order = rng.permutation(1003)
    grouped = length_grouped_order(order, lengths, 10, np.random.default_rng(5), groups_per_window=4)
    assert sorted(grouped) == list(range(1003))
    batches = [grouped[i:i + 10] for i in range(0, 1003, 10)]
    assert len(batches[-1]) == 3 and set(batches[-1]) == set(order[-3:])  # the short batch stays last
    # within a window of 40 shuffled rows sorted by length, a batch spans far less than the whole range
    spread = np.median([np.ptp(lengths[b]) for b in batches[:-1]])
    assert spread < 0.25 * np.ptp(lengths), spread
    same = length_grouped_order(order, lengths, 10, np.random.default_rng(5), groups_per_window=4)
    other = length_grouped_order(order, lengths, 10, np.random.default_rng(6), groups_per_window=4)
    assert np.array_equal(grouped, same) and not np.array_equal(grouped, other)


def mixed_length_data(rng, n):
    data = contains_token_data(rng, n)
    long_rows = [np.concatenate([r, rng.integers(5, 100, int(rng.integers(0, 40)))]) for r in data.rows]
    return Dataset(long_rows, data.targets, pad_token_id=1)


def test_group_by_length_trains_reproducibly_and_resumes_bitwise(tmp_path):
    data = mixed_length_data(np.random.default_rng(3), 44)
    args = dict(epochs=2, batch_size=4, lr=0.05, save_steps=4, logging_steps=3, seed=2, quiet=True,
                group_by_length=True)
    full, again = tmp_path / "full", tmp_path / "again"
    for out in (full, again):
        train(YosoForSequenceClassification(tiny_config(), seed=0), data, args=TrainingArguments(output_dir=str(out),
                                                                                                 **args))
    assert_same_file(again / "model.safetensors", full / "model.safetensors", "a second run")
    plain = tmp_path / "plain"
    train(YosoForSequenceClassification(tiny_config(), seed=0), data,
          args=TrainingArguments(output_dir=str(plain), **{**args, "group_by_length": False}))
    assert (plain / "model.safetensors").read_bytes() != (full / "model.safetensors").read_bytes()

    part = tmp_path / "part"
    shutil.copytree(full, part)
    for step, path in list_checkpoints(part):
        if step > 8:
            shutil.rmtree(path)
    (part / "model.safetensors").unlink()
    train(YosoForSequenceClassification(tiny_config(), seed=9), data,
          args=TrainingArguments(output_dir=str(part), resume=True, **args))
    assert_same_file(part / "model.safetensors", full / "model.safetensors", "resumed from step 8")
    with pytest.raises(Exception, match="group_by_length=True, now False"):
        train(YosoForSequenceClassification(tiny_config(), seed=9), data,
              args=TrainingArguments(output_dir=str(part), resume=True, **{**args, "group_by_length": False}))


def test_evaluation_in_length_sorted_batches_equals_each_row_alone():
    model = YosoForSequenceClassification(tiny_config(), seed=0)
    data = mixed_length_data(np.random.default_rng(4), 30)
    batched = evaluate(model, data, batch_size=8)
    alone = [model(**data.batch([i])) for i in range(len(data))]
    loss = np.mean([float(o.loss) for o in alone])
    predictions = np.array([int(o.logits.argmax()) for o in alone])
    assert batched["loss"] == pytest.approx(loss, rel=1e-5)
    assert batched["accuracy"] == pytest.approx(float((predictions == data.targets["labels"]).mean()))


def test_group_by_length_is_a_finetune_option():
    parser = add_finetune_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["m", "--train", "t.jsonl", "--output-dir", "o", "--group-by-length"])
    assert args.group_by_length is True
    with pytest.raises(Exception, match="group_by_length must be True or False"):
        TrainingArguments(output_dir="o", group_by_length="yes").validate()


@pytest.mark.parametrize("use_expectation", [True, False])
def test_small_work_stays_on_the_callers_thread(monkeypatch, use_expectation):
    """A training step of short texts hands nothing to the pool (a hand-off costs more than the work it would
    split); long ones do."""
    from yoso_np import backend

    handed = []
    real_pool = backend._pool
    monkeypatch.setattr(backend, "_pool", lambda: handed.append(1) or real_pool())
    config = tiny_config(max_position_embeddings=700, use_expectation=use_expectation, num_hash=4, hash_code_len=6)
    model = YosoForSequenceClassification(config, seed=0)
    short = np.random.default_rng(0).integers(5, 100, (4, 128))
    model.forward_backward(short, labels=[0, 1, 0, 1], rng=0)
    assert handed == []
    long = np.random.default_rng(1).integers(5, 100, (1, 600))
    model.forward_backward(long, labels=[1], rng=0)
    assert handed or backend.cpu_threads() < 2  # one core: nothing to share out


def blas_threads():
    """NumPy's BLAS threads (scipy may load a BLAS of its own, which yoso_np's products do not use)."""
    from threadpoolctl import threadpool_info
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    return [p["num_threads"] for p in blas if "numpy" in p["filepath"]] or [p["num_threads"] for p in blas]


@pytest.mark.parametrize("use_expectation", [True, False])
def test_a_big_batch_runs_on_the_pool_alone_with_the_same_results(monkeypatch, use_expectation):
    """From POOL_MIN_TOKENS a call runs with single-threaded BLAS, its products and passes split over the pool:
    the same loss and gradients to float32 rounding (the row chunks sum LayerNorm's gradients in another order),
    and the host's BLAS setting back afterwards."""
    from yoso_np import backend

    if backend.cpu_threads() < 2 or not blas_threads():
        pytest.skip("one core or no BLAS seen: there is no pool section")
    config = tiny_config(max_position_embeddings=200, intermediate_size=256, use_expectation=use_expectation,
                         num_hash=4, hash_code_len=6)
    model = YosoForSequenceClassification(config, seed=0)
    ids = np.random.default_rng(0).integers(5, 100, (4, 130))
    mask = np.ones(ids.shape, np.int64)
    mask[1, 100:] = 0
    monkeypatch.setattr(backend, "POOL_MIN_TOKENS", ids.size + 1)
    expected, expected_grads = model.forward_backward(ids, attention_mask=mask, labels=[0, 1, 0, 1], rng=0)
    host = blas_threads()
    seen = []
    real_map = backend.parallel_map

    def recording_map(fn, items, xp):
        seen.append((backend.in_pool_section(), blas_threads()))
        return real_map(fn, items, xp)

    monkeypatch.setattr(backend, "parallel_map", recording_map)
    monkeypatch.setattr(backend, "POOL_MIN_TOKENS", ids.size)
    got, grads = model.forward_backward(ids, attention_mask=mask, labels=[0, 1, 0, 1], rng=0)
    assert len(seen) > 20 and all(on and set(threads) == {1} for on, threads in seen), seen[:3]
    assert blas_threads() == host and not backend.in_pool_section()
    again, grads_again = model.forward_backward(ids, attention_mask=mask, labels=[0, 1, 0, 1], rng=0)
    for name, g in grads.items():  # the chunks are fixed by the core count: a resumed run repeats it bit for bit
        np.testing.assert_array_equal(grads_again[name], g, err_msg=name)
    np.testing.assert_array_equal(again.logits, got.logits)
    np.testing.assert_allclose(got.loss, expected.loss, rtol=1e-5)
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-6)
    for name, g in expected_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_pool_section_gives_the_blas_setting_back_when_the_call_fails():
    from yoso_np import backend

    host = blas_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with backend.pool_section(backend.POOL_MIN_TOKENS):
            if backend.cpu_threads() > 1:
                assert backend.in_pool_section() and set(blas_threads()) <= {1}
            raise RuntimeError("inside")
    assert blas_threads() == host and not backend.in_pool_section()
    with backend.pool_section(backend.POOL_MIN_TOKENS - 1):
        assert not backend.in_pool_section()
