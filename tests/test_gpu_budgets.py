"""What the GPU path pays, counted by the CuPy stand-in (yoso_np.testing.emulated_cuda(): gpu.counts), pinned so
that a regression fails here: launches of YOSO-E per layer whatever the head count, n and batch; no device-to-host
transfer in a forward or a training step once the inputs are validated; host-to-device transfers independent of the
layer count. And the GPU routines behind those budgets against their NumPy twins."""
import importlib

import numpy as np
import pytest

import yoso_np
from yoso_np import lsh
from yoso_np.raw_kernels import cumulation, expectation
from yoso_np.testing import emulated_cuda, emulator

attention = importlib.import_module("yoso_np.layers.attention")  # the module (yoso_np.layers exports the function)

pytestmark = pytest.mark.skipif(not emulator.available(), reason="the CUDA emulator needs GCC (g++)")

YOSO_E_LAUNCHES = 40  # a YOSO-E attention layer's forward (issue 18)
YOSO_E_BACKWARD_LAUNCHES = 60


@pytest.fixture
def gpu():
    with emulated_cuda() as cupy:
        yield cupy


class Counted:
    """gpu.counts spent inside a with block."""

    def __init__(self, gpu):
        self.gpu = gpu

    def __enter__(self):
        self.start = dict(self.gpu.counts)
        return self

    def __exit__(self, *exc):
        self.spent = {k: v - self.start[k] for k, v in self.gpu.counts.items()}


def attention_inputs(batch, n, heads=12, head_dim=4, seed=0):
    rng = np.random.default_rng(seed)
    hidden = heads * head_dim
    p = {f"{name}.{kind}": rng.standard_normal((hidden, hidden) if kind == "weight" else hidden).astype(np.float32)
         for name in ("query", "key", "value") for kind in ("weight", "bias")}
    x = rng.standard_normal((batch, n, hidden)).astype(np.float32)
    mask = np.ones((batch, n), np.float32)
    mask[-1, n - n // 4:] = 0
    config = yoso_np.YosoConfig(hidden_size=hidden, num_attention_heads=heads, use_expectation=True, hash_code_len=8)
    return p, x, mask, config


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_weights_kernel_matches_its_numpy_twin(gpu, dtype):
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, (3, 17, 29)).astype(dtype)
    s[0, 0, :4] = [1.0, -1.0, np.nextafter(dtype(1), dtype(2)), np.nextafter(dtype(-1), dtype(-2))]  # rounding past
    expected = attention.collision_probability(s.copy(), 8, (np.empty_like(s), np.empty_like(s)))
    on_device = gpu.asarray(s)
    with Counted(gpu) as spent:
        assert expectation.collision_probability(on_device, 8) is on_device
    assert spent.spent["launches"] == 1
    actual = on_device.get()
    assert np.isfinite(actual).all()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-12)


def test_fused_weights_kernel_refuses_what_it_cannot_take(gpu):
    with pytest.raises(TypeError, match="s must be float32 or float64, got dtype int32"):
        expectation.collision_probability(gpu.zeros(4, dtype=np.int32), 2)
    with pytest.raises(ValueError, match="tau must be a positive int, got 0"):
        expectation.collision_probability(gpu.zeros(4, dtype=np.float32), 0)
    with pytest.raises(ValueError, match="s must be C-contiguous"):
        expectation.collision_probability(gpu.zeros((4, 4), dtype=np.float32).T, 2)


def test_the_backend_chooses_the_blocking_in_one_place(gpu):
    assert attention.expectation_blocking(np) == (attention.BLOCK_ELEMENTS, None)
    block, weights = attention.expectation_blocking(gpu)
    assert block == gpu.cuda.Device().mem_info[1] // 64 and weights is expectation.collision_probability


@pytest.mark.parametrize("batch,n", [(1, 16), (2, 40), (3, 24)])
def test_yoso_e_layer_launches_are_few_and_independent_of_heads_n_and_batch(gpu, batch, n):
    p, x, mask, config = attention_inputs(batch, n)
    expected, cpu_cache = attention.attention(p, x, mask, config)
    d_expected = attention.attention_backward(np.ones_like(expected), cpu_cache, config)
    p_gpu = {k: gpu.asarray(v) for k, v in p.items()}
    x_gpu, mask_gpu = gpu.asarray(x), gpu.asarray(mask)
    with Counted(gpu) as forward:
        out, cache = attention.attention(p_gpu, x_gpu, mask_gpu, config)
    dout = gpu.ones_like(out)
    with Counted(gpu) as backward:
        dx, grads = attention.attention_backward(dout, cache, config)
    # 23 and 46 at the time of writing: products, norms, the weights kernel; before, ~25 launches per weights slice
    # (a slice of 2^17 elements: 3 300 launches a head at n = 4096)
    assert forward.spent["launches"] <= YOSO_E_LAUNCHES
    assert backward.spent["launches"] <= YOSO_E_BACKWARD_LAUNCHES
    for spent in (forward.spent, backward.spent):
        assert spent["device_to_host"] == spent["host_to_device"] == 0
    np.testing.assert_allclose(out.get(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx.get(), d_expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_yoso_e_chunks_by_the_gpu_memory_budget(gpu, monkeypatch, dtype):
    """A budget smaller than all heads' weights: stacks of whole heads, then row blocks of one head, same results."""
    p, x, mask, config = attention_inputs(2, 24, heads=3)
    p, x, mask = {k: v.astype(dtype) for k, v in p.items()}, x.astype(dtype), mask.astype(dtype)
    expected, cpu_cache = attention.attention(p, x, mask, config)
    d_expected = attention.attention_backward(np.ones_like(expected), cpu_cache, config)
    for budget in (8 * 24 * 24 * 2, 8 * 24 * 5):  # two heads' W; five rows of one head's W (8-byte elements)
        monkeypatch.setattr(attention, "GPU_BLOCK_BYTES", budget)
        out, cache = attention.attention({k: gpu.asarray(v) for k, v in p.items()}, gpu.asarray(x),
                                         gpu.asarray(mask), config)
        dx, _ = attention.attention_backward(gpu.ones_like(out), cache, config)
        np.testing.assert_allclose(out.get(), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx.get(), d_expected[0], rtol=1e-4, atol=1e-4)


def small_model(layers, use_expectation):
    config = yoso_np.YosoConfig(vocab_size=100, hidden_size=48, num_attention_heads=12, num_hidden_layers=layers,
                                intermediate_size=20, max_position_embeddings=40, use_expectation=use_expectation,
                                num_hash=4, hash_code_len=4)
    return yoso_np.YosoForSequenceClassification(config, seed=0)


def spent_on_a_step(gpu, layers, use_expectation, training):
    model = small_model(layers, use_expectation)
    ids = np.random.default_rng(0).integers(5, 100, (2, 16))
    mask = np.ones((2, 16), np.int64)
    mask[1, 12:] = 0
    model.to("cuda")
    with Counted(gpu) as step:
        if training:
            model.forward_backward(ids, mask, labels=np.array([0, 1]), training=True, rng=1)
        else:
            model(ids, mask, rng=1)
    return step.spent


@pytest.mark.parametrize("use_expectation", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_no_transfer_grows_with_the_layers(gpu, use_expectation, training):
    """Transfers each way are the inputs' and their validation's (ids, mask, labels: a sync each to check their
    values), the same for one layer as for three: no per-layer mask, matrix or range check crosses."""
    one, three = (spent_on_a_step(gpu, layers, use_expectation, training) for layers in (1, 3))
    for kind in ("device_to_host", "host_to_device"):
        assert one[kind] == three[kind], kind
    assert three["device_to_host"] <= 4 and three["host_to_device"] <= 3
    assert three["synchronizations"] == three["device_queries"] == 0


def cumulation_inputs(seed, batch, n, num_hash, code_len, d, share=0.5):
    """Codes of 2**code_len where about `share` of the queries have a key's code (the rest meet no key)."""
    rng = np.random.default_rng(seed)
    key_codes = rng.integers(0, 2**code_len, (batch, n, num_hash)).astype(np.int32)
    query_codes = rng.integers(0, 2**code_len, (batch, n, num_hash)).astype(np.int32)
    take = rng.random((batch, n, num_hash)) < share
    query_codes[take] = key_codes[:, rng.permutation(n)][take]
    key_codes[:, :n // 8] = key_codes[:, n // 8:n // 4]  # buckets of several keys
    masks = [rng.integers(0, 2, (batch, n)).astype(np.int32) for _ in range(2)]
    weights = [rng.standard_normal((batch, n, d)).astype(np.float32) for _ in range(2)]
    value = rng.standard_normal((batch, n, d)).astype(np.float32)
    return masks, query_codes, key_codes, weights, value


def test_compacted_codes_give_the_same_sums_on_numpy():
    (qm, km), qc, kc, (qw, kw), value = cumulation_inputs(2, 2, 50, 3, 16, 4)
    cqc, ckc, capacity = cumulation.compact_codes(qc, kc, 2**16)
    assert capacity == 64 and cqc.dtype == ckc.dtype == np.int32 and 0 <= cqc.min() and cqc.max() <= 50
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, cqc, km, ckc, value, capacity),
                               lsh.lsh_cumulation(qm, qc, km, kc, value, 2**16), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lsh.lsh_weighted_cumulation(qm, cqc, qw, km, ckc, kw, value, capacity),
                               lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, value, 2**16), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_gpu_hash_tables_grow_with_the_keys_not_2_to_the_code_length(gpu, weighted):
    """hash_code_len 20 on 1000 tokens: a 2**20-row table per (row, hash) before (the weighted backward's tables
    would have been terabytes at L = 16); now n_k + 1 rows, in shared memory, and the same sums as NumPy."""
    (qm, km), qc, kc, (qw, kw), value = cumulation_inputs(3, 1, 1000, 2, 20, 4)
    args = (qm, qc, qw, km, kc, kw, value) if weighted else (qm, qc, km, kc, value)
    run = lsh.lsh_weighted_cumulation if weighted else lsh.lsh_cumulation
    expected = run(*args, 2**20)
    with Counted(gpu) as spent:
        actual = run(*(gpu.asarray(a) for a in args), 2**20).get()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    assert spent.spent["launches"] <= 40


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("code_len", [3, 12])
def test_float64_cumulation_keeps_float64_on_the_gpu(gpu, weighted, code_len):
    """A float64 model's sampled attention gets float64 sums (the kernels' float atomics would round to float32)."""
    (qm, km), qc, kc, (qw, kw), value = cumulation_inputs(4, 3, 40, 3, code_len, 5)
    qw, kw, value = qw.astype(np.float64), kw.astype(np.float64), value.astype(np.float64)
    args = (qm, qc, qw, km, kc, kw, value) if weighted else (qm, qc, km, kc, value)
    run = lsh.lsh_weighted_cumulation if weighted else lsh.lsh_cumulation
    expected = run(*args, 2**code_len)
    actual = run(*(gpu.asarray(a) for a in args), 2**code_len)
    assert actual.dtype == np.float64
    np.testing.assert_allclose(actual.get(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_fast_hash", [True, False])
def test_a_float64_sampling_model_stays_float64_on_the_gpu(gpu, use_fast_hash):
    """The stand-in's generator draws as NumPy's, so the emulated GPU samples the CPU's hash matrices: a float64
    step then agrees with the CPU's to float64 rounding (it was float32's before)."""
    config = yoso_np.YosoConfig(vocab_size=100, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                intermediate_size=20, max_position_embeddings=40, use_expectation=False, num_hash=4,
                                hash_code_len=4, use_fast_hash=use_fast_hash)
    model = yoso_np.YosoForSequenceClassification(config, seed=0)
    model.weights = {k: v.astype(np.float64) for k, v in model.weights.items()}
    ids = np.random.default_rng(0).integers(5, 100, (2, 16))
    mask = np.ones((2, 16))
    mask[1, 12:] = 0
    cpu, cpu_grads = model.forward_backward(ids, mask, labels=np.array([0, 1]), rng=1)
    model.to("cuda")
    out, grads = model.forward_backward(ids, mask, labels=np.array([0, 1]), rng=1)
    assert out.logits.dtype == np.float64
    np.testing.assert_allclose(out.logits.get(), cpu.logits, rtol=1e-12, atol=1e-14)
    for key, expected in cpu_grads.items():
        np.testing.assert_allclose(grads[key].get(), expected, rtol=1e-9, atol=1e-14, err_msg=key)
