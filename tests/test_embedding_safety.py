"""Embedding yoso_np in a host: many threads calling one model or pipeline, calls from a user's thread pool,
forked workers, and the host's BLAS thread setting left exactly as it was. A regression here would hang, so
every wait has a deadline and the fork cases run in a child process with a timeout."""
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from yoso_np import YosoConfig, YosoForMaskedLM, backend

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120  # seconds; the cases below take a few


def blas_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


needs_blas = pytest.mark.skipif(not blas_threads(), reason="threadpoolctl sees no BLAS in this process")


def tiny_model():
    # at n >= 256 the sampling attention's rows are split over the library's pool, as real inputs' are (the fork
    # test checks that the pool was used)
    config = YosoConfig(vocab_size=50, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                        intermediate_size=256, max_position_embeddings=400, num_hash=8, hash_code_len=4)
    return YosoForMaskedLM(config, seed=1)


def inputs(n, seed):
    rng = np.random.default_rng(seed)
    return dict(input_ids=rng.integers(3, 50, (1, n)), attention_mask=np.ones((1, n), np.int64))


CASES = [(300, 0, True), (300, 1, False), (20, 2, True), (280, 3, False), (5, 4, True)]


def run_case(model, n, seed, expectation):
    model.config.use_expectation = expectation  # the same for every call of a case: read, never changed, below
    return model(**inputs(n, seed), rng=seed).logits


@pytest.fixture(scope="module")
def models():
    """One model per attention mode (a model's config is shared by its callers and must not change under them)."""
    e, s = tiny_model(), tiny_model()
    e.config.use_expectation, s.config.use_expectation = True, False
    return {True: e, False: s}


def call(models, case):
    n, seed, expectation = case
    return models[expectation](**inputs(n, seed), rng=seed).logits


def test_many_threads_calling_one_model_get_the_sequential_results(models):
    expected = [call(models, c) for c in CASES]
    jobs = CASES * 4
    with ThreadPoolExecutor(8) as user_pool:
        futures = [user_pool.submit(call, models, c) for c in jobs]
        results = [f.result(timeout=DEADLINE) for f in futures]
    for case, got in zip(jobs, results):
        # BLAS may run single- or multi-threaded under concurrent calls: the same numbers to rounding
        np.testing.assert_allclose(got, expected[CASES.index(case)], rtol=1e-5, atol=1e-6)


def test_a_call_from_inside_a_users_thread_pool_nested_in_parallel_map(models):
    """The user's pool threads call parallel_map themselves and the model inside it: nothing waits on a full
    pool, and the pool's own threads run nested calls in place."""
    expected = call(models, CASES[0])

    def job(i):
        return backend.parallel_map(lambda j: call(models, CASES[0]), range(2), np)

    with ThreadPoolExecutor(3) as user_pool:
        for result in user_pool.map(job, range(3), timeout=DEADLINE):
            for got in result:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pipelines_from_many_threads(tmp_path):
    from yoso_np import Tokenizer, pipeline

    config = YosoConfig(vocab_size=320, hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                        intermediate_size=256, max_position_embeddings=400)
    YosoForMaskedLM(config, seed=3).save_pretrained(tmp_path)
    Tokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tokenizer").save_pretrained(tmp_path)
    fill = pipeline("fill-mask", tmp_path)
    texts = ["Paris is the <mask> of France.", "a <mask> " + "word " * 140, "<mask>", "x " * 60 + "<mask> end"]
    expected = [fill(t, top_k=3) for t in texts]
    with ThreadPoolExecutor(6) as user_pool:
        results = list(user_pool.map(lambda t: fill(t, top_k=3), texts * 3, timeout=DEADLINE))
    for i, got in enumerate(results):
        want = expected[i % len(texts)]
        assert [p["token"] for p in got] == [p["token"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], rtol=1e-4)


# The BLAS cases run in a fresh interpreter: threadpoolctl (3.8) lets only one thread at a time change OpenBLAS's
# setting, and which thread holds it in the test process depends on the tests that ran before.
def overlapping_calls_from_threads():
    """Calls that enter and leave their parallel sections out of order from short-lived threads (as a server's
    request threads do) must leave the host's BLAS setting as it was, not single-threaded."""
    before = blas_threads()
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.01, (12, 6))

    def caller(row):
        for d in delays[row]:
            backend.parallel_map(lambda i: time.sleep(d * (i + 1)), range(3), np)

    threads = [threading.Thread(target=caller, args=(r,), daemon=True) for r in range(len(delays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "parallel_map from several threads did not finish"
    assert blas_threads() == before, (blas_threads(), before)


def first_in_sets_last_out_restores():
    before = blas_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with backend.single_threaded_blas():
            a_in.set()
            b_in.wait(DEADLINE)
        a_out.set()

    def b():
        a_in.wait(DEADLINE)
        with backend.single_threaded_blas():
            b_in.set()
            a_out.wait(DEADLINE)
            seen["b inside, a gone"] = blas_threads()
        seen["all out"] = blas_threads()

    threads = [threading.Thread(target=f, daemon=True) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert seen == {"b inside, a gone": [1] * len(before), "all out": before}, (seen, before)


@needs_blas
@pytest.mark.parametrize("case", ["overlapping_calls_from_threads", "first_in_sets_last_out_restores"])
def test_blas_threads_after_overlapping_calls_are_what_the_host_had(case):
    out = run_child(f"""
        from tests.test_embedding_safety import blas_threads, {case}
        if min(blas_threads()) < 2:
            print("skip: this BLAS runs one thread")
        else:
            {case}()
            print("ok")
    """)
    if out.startswith("skip"):
        pytest.skip(out)
    assert out.strip() == "ok"


def run_child(script):
    """Run ``script`` in a fresh interpreter; a hang fails the test instead of stopping the suite."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                              timeout=DEADLINE, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung (no answer in {DEADLINE} s)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_pool_after_the_parent_used_the_threads_runs():
    out = run_child("""
        import multiprocessing, numpy as np
        from tests.test_embedding_safety import sampled_logits
        from yoso_np import backend

        expected = [sampled_logits(s) for s in range(3)]
        assert backend._POOL is not None, "the parent never used the pool: the test tests nothing"
        with multiprocessing.get_context("fork").Pool(2) as workers:
            got = workers.map_async(sampled_logits, range(3)).get(timeout=90)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_another_thread_holds_the_pools_locks():
    """A lock held by a thread that does not exist in the child would stay held there forever."""
    out = run_child("""
        import multiprocessing, threading
        import numpy as np
        from yoso_np import backend

        held, release = threading.Event(), threading.Event()

        def hold():
            with backend._POOL_LOCK, backend._BLAS_LOCK, backend._BLAS_CONTROLLER_LOCK:
                held.set()
                release.wait(60)

        def child(queue):
            queue.put(backend.parallel_map(lambda i: float(np.ones((4, 4)) @ np.ones(4) @ np.ones(4)) + i,
                                           range(4), np))

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(60), "the holder thread did not take the locks"
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        worker = ctx.Process(target=child, args=(queue,))
        worker.start()
        print(queue.get(timeout=60))
        worker.join(60)
        release.set()
    """)
    assert out.strip() == "[16.0, 17.0, 18.0, 19.0]", out


def sampled_logits(seed):
    """A worker's job for the process-pool tests (importable by name, as spawn needs)."""
    model = tiny_model()
    model.config.use_expectation = False
    return model(**inputs(300, seed), rng=seed).logits


def test_a_spawn_pool_gives_the_parents_results():
    out = run_child("""
        import multiprocessing, numpy as np
        from tests.test_embedding_safety import sampled_logits

        if __name__ == "__main__":
            expected = [sampled_logits(s) for s in range(2)]
            with multiprocessing.get_context("spawn").Pool(2) as workers:
                got = workers.map_async(sampled_logits, range(2)).get(timeout=90)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
            print("ok")
    """)
    assert out.strip().endswith("ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@needs_blas
def test_a_fork_inside_a_parallel_section_gives_the_child_the_hosts_blas():
    out = run_child("""
        import multiprocessing
        from threadpoolctl import threadpool_info, threadpool_limits
        from yoso_np import backend

        def blas():
            return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

        def report(queue):
            queue.put(blas())

        with threadpool_limits(limits=2, user_api="blas"):
            before = blas()
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            with backend.single_threaded_blas():
                child = ctx.Process(target=report, args=(queue,))
                child.start()
                in_child = queue.get(timeout=60)
                child.join(60)
            print(before == in_child, before, in_child)
    """)
    assert out.startswith("True"), out


def test_a_tokenizer_shared_by_threads_truncating_and_not():
    """Truncation was set on the shared `tokenizers` backend for the length of a call, so a call without it on
    another thread could come back cut (or a truncating one uncut)."""
    from yoso_np import Tokenizer

    tok = Tokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tokenizer")
    long_text = "word " * 200
    full = tok(long_text, max_length=10_000)["input_ids"]
    cut = tok(long_text, truncation=True, max_length=12)["input_ids"]
    assert full.shape[1] > 12 and cut.shape[1] == 12

    def job(i):
        if i % 2:
            return tok(long_text, truncation=True, max_length=12)["input_ids"]
        return tok(long_text, max_length=10_000)["input_ids"]

    with ThreadPoolExecutor(4) as user_pool:
        for i, got in enumerate(user_pool.map(job, range(400), timeout=DEADLINE)):
            np.testing.assert_array_equal(got, cut if i % 2 else full)
