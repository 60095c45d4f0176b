"""NumPy reference of YOSO's sampling primitives against explicit formulas (CPU only, small sizes)."""
import numpy as np
import pytest

from yoso_np import lsh


def sylvester(dim):
    h = np.ones((1, 1))
    while h.shape[0] < dim:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def codes_from_bits(bits):
    """bits [..., L] (bit i at position i) -> integer codes."""
    return (bits.astype(np.int64) << np.arange(bits.shape[-1])).sum(-1)


def random_mask(rng, batch, n):
    mask = rng.integers(0, 2, (batch, n)).astype(np.int32)
    mask[0] = 1
    return mask


@pytest.fixture(params=["compiled", "numpy"])
def cpu_path(request, monkeypatch):
    """Run a test on the compiled loops of cpu_kernels (where numba is installed) and on the NumPy code."""
    if request.param == "numpy":
        monkeypatch.setattr(lsh.cpu_kernels, "lsh_cumulation", lambda: None)
        monkeypatch.setattr(lsh.cpu_kernels, "fast_hash", lambda: None)
        monkeypatch.setattr(lsh.cpu_kernels, "lsh_weighted_cumulation", lambda: None)
    elif lsh.cpu_kernels.lsh_cumulation() is None:
        pytest.skip("needs numba")
    return request.param


# ---------------------------------------------------------------------------------------------- hashing
@pytest.mark.parametrize("dim", [1, 2, 8, 32, 128])
def test_hadamard_transform_is_multiplication_by_sylvester_matrix(dim):
    a = np.random.default_rng(dim).standard_normal((3, 2, dim))
    np.testing.assert_allclose(lsh.hadamard_transform(a), a @ sylvester(dim), atol=1e-12)


@pytest.mark.parametrize("dim,num_hash,code_len,n", [(1, 2, 1, 7), (2, 3, 1, 7), (4, 5, 2, 7), (8, 5, 3, 7),
                                                    (16, 5, 4, 150), (32, 13, 4, 150), (64, 20, 9, 7), (64, 3, 1, 7),
                                                    (128, 20, 9, 150)])  # 150: blocks of tokens and a shorter last one
def test_fast_hash_matches_explicit_hadamard_transforms(dim, num_hash, code_len, n, cpu_path):
    rng = np.random.default_rng(dim + num_hash + 1)  # a draw with no bit at rounding level (checked below)
    batch = 2
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    mask = random_mask(rng, batch, n)
    dmat = lsh.draw_hash_matrices(rng, batch, dim, num_hash, code_len, use_fast_hash=True)
    per_part = dim // code_len
    assert dmat.shape == (batch, 3, max(1, -(-num_hash // per_part)), dim)

    h = sylvester(dim)
    expected = np.zeros((batch, n, num_hash), dtype=np.int64)
    smallest = np.inf
    for b in range(batch):
        for f in range(num_hash):
            p, g = divmod(f, per_part)
            d1, d2, d3 = (np.diag(dmat[b, r, p].astype(np.float64)) for r in range(3))
            y = (h @ d3 @ h @ d2 @ h @ d1 @ x[b].astype(np.float64).T).T      # [n, dim]
            chosen = y[:, g * code_len:(g + 1) * code_len]
            expected[b, :, f] = codes_from_bits(chosen > 0) * mask[b]
            smallest = min(smallest, np.abs(chosen).min())
    assert smallest > 1e-3  # no bit sits at rounding level, so the codes must agree exactly
    codes = lsh.fast_hash(mask, x, dmat, num_hash, code_len)
    assert codes.dtype == np.int32 and codes.shape == (batch, n, num_hash)
    np.testing.assert_array_equal(codes, expected)


def test_gaussian_hash_matches_sign_formula():
    rng = np.random.default_rng(1)
    batch, n, dim, num_hash, code_len = 3, 9, 5, 4, 6
    x = rng.standard_normal((batch, n, dim)).astype(np.float32)
    mask = random_mask(rng, batch, n).astype(bool)
    rmat = lsh.draw_hash_matrices(rng, batch, dim, num_hash, code_len, use_fast_hash=False)
    assert rmat.shape == (batch, dim, num_hash * code_len) and rmat.dtype == np.float32
    codes = lsh.gaussian_hash(mask, x, rmat, num_hash, code_len)
    for b in range(batch):
        for t in range(n):
            for f in range(num_hash):
                projection = x[b, t].astype(np.float64) @ rmat[b, :, f * code_len:(f + 1) * code_len]
                code = sum(1 << i for i in range(code_len) if projection[i] > 0) if mask[b, t] else 0
                assert codes[b, t, f] == code


def test_hash_codes_share_one_draw_and_pad_any_head_dim(cpu_path):
    rng = np.random.default_rng(2)
    batch, n, dim, num_hash, code_len = 2, 5, 12, 6, 4
    query = rng.standard_normal((batch, n, dim)).astype(np.float32)
    mask = np.ones((batch, n), dtype=np.int32)
    for fast in (True, False):
        q_codes, k_codes = lsh.hash_codes(mask, query, mask, query.copy(), num_hash=num_hash,
                                          hash_code_len=code_len, use_fast_hash=fast, rng=np.random.default_rng(7))
        np.testing.assert_array_equal(q_codes, k_codes)  # same vectors, same draw -> same codes
    # fast hashing pads 12 -> 16 with zeros and draws Dmat for dim 16 from the same generator state
    q_codes, _ = lsh.hash_codes(mask, query, mask, query, num_hash=num_hash, hash_code_len=code_len,
                                use_fast_hash=True, rng=np.random.default_rng(7))
    dmat = lsh.draw_hash_matrices(np.random.default_rng(7), batch, 16, num_hash, code_len, use_fast_hash=True)
    padded = np.concatenate([query, np.zeros((batch, n, 4), np.float32)], axis=-1)
    np.testing.assert_array_equal(q_codes, lsh.fast_hash(mask, padded, dmat, num_hash, code_len))


def test_draw_hash_matrices_is_reproducible_and_well_formed():
    a = lsh.draw_hash_matrices(np.random.default_rng(3), 2, 8, 7, 3, use_fast_hash=True)
    b = lsh.draw_hash_matrices(np.random.default_rng(3), 2, 8, 7, 3, use_fast_hash=True)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and set(np.unique(a)) == {-1.0, 1.0} and a.shape == (2, 3, 4, 8)
    g = lsh.draw_hash_matrices(np.random.default_rng(3), 2, 8, 7, 3, use_fast_hash=False)
    assert g.dtype == np.float32 and g.shape == (2, 8, 21) and abs(g.std() - 1) < 0.2


def unit_pairs(rng, batch, n, dim):
    """Unit vectors q, k at angles theta uniform in [0, pi]."""
    q = rng.standard_normal((batch, n, dim))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    u = rng.standard_normal((batch, n, dim))
    u -= (u * q).sum(-1, keepdims=True) * q
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    theta = rng.uniform(0, np.pi, (batch, n))
    k = np.cos(theta)[..., None] * q + np.sin(theta)[..., None] * u
    return q.astype(np.float32), k.astype(np.float32), theta


def collision_errors(use_fast_hash, seed=0, code_len=3):
    """RMS gap between collision frequencies and YOSO-E's (1 - theta/pi)**L, and the sampling error expected."""
    rng = np.random.default_rng(seed)
    q, k, theta = unit_pairs(rng, 50, 32, 16)
    mask = np.ones(q.shape[:2], dtype=bool)
    p = (1 - theta / np.pi) ** code_len
    result = {}
    for num_hash in (64, 1024):
        q_codes, k_codes = lsh.hash_codes(mask, q, mask, k, num_hash=num_hash, hash_code_len=code_len,
                                          use_fast_hash=use_fast_hash, rng=rng)
        frequency = (q_codes == k_codes).mean(-1)
        result[num_hash] = (np.sqrt(((frequency - p) ** 2).mean()), np.sqrt((p * (1 - p)).mean() / num_hash),
                            (frequency - p).mean())
    return result


def test_gaussian_collision_frequencies_converge_to_yoso_e_like_one_over_sqrt_m():
    errors = collision_errors(use_fast_hash=False)
    for num_hash, (rms, expected, bias) in errors.items():
        assert 0.9 < rms / expected < 1.1, (num_hash, rms, expected)
        assert abs(bias) < 2 * expected
    assert 3.3 < errors[64][0] / errors[1024][0] < 4.7


def test_fast_hash_collision_frequencies_approach_yoso_e(cpu_path):
    # Hadamard projections are only nearly Gaussian: allow a small bias, still require the 1/sqrt(m) shrinkage.
    errors = collision_errors(use_fast_hash=True)
    for num_hash, (rms, expected, bias) in errors.items():
        assert rms < 1.35 * expected, (num_hash, rms, expected)
        assert abs(bias) < 0.012
    assert errors[64][0] / errors[1024][0] > 2.7


# ---------------------------------------------------------------------------------------------- cumulation
def brute_force(query_mask, query_codes, key_mask, key_codes, value, query_weight=None, key_weight=None):
    """O(n^2) collision counts: out[b, q] = mask_q / m sum_k mask_k #(f: codes equal) (w_q . w_k) v_k."""
    collisions = (query_codes[:, :, None, :] == key_codes[:, None, :, :]).sum(-1).astype(np.float64)
    collisions *= query_mask[:, :, None] * key_mask[:, None, :] / query_codes.shape[-1]
    if query_weight is not None:
        collisions *= query_weight.astype(np.float64) @ key_weight.astype(np.float64).transpose(0, 2, 1)
    return collisions @ value.astype(np.float64)


def cumulation_inputs(seed, code_len, batch=3, n_q=13, n_k=11, d_v=7, d_w=4, num_hash=5, dtype=np.float32,
                      few_codes=True):
    rng = np.random.default_rng(seed)
    capacity = 2**code_len
    high = min(capacity, 4) if few_codes else capacity  # few distinct codes -> many collisions to sum
    query_codes = rng.integers(0, high, (batch, n_q, num_hash)).astype(np.int32)
    key_codes = rng.integers(0, high, (batch, n_k, num_hash)).astype(np.int32)
    query_codes[..., 0] ^= capacity - 1  # exercise the high bits too
    key_codes[..., 0] ^= capacity - 1
    query_mask = random_mask(rng, batch, n_q)
    key_mask = random_mask(rng, batch, n_k)
    key_mask[1] = 0  # a batch row with every key masked
    value = rng.standard_normal((batch, n_k, d_v)).astype(dtype)
    query_weight = rng.standard_normal((batch, n_q, d_w)).astype(dtype)
    key_weight = rng.standard_normal((batch, n_k, d_w)).astype(dtype)
    return query_mask, query_codes, key_mask, key_codes, value, query_weight, key_weight, capacity


@pytest.mark.parametrize("code_len", [3, 5, 9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lsh_cumulation_matches_brute_force(code_len, dtype, cpu_path):
    qm, qc, km, kc, v, _, _, cap = cumulation_inputs(code_len, code_len, dtype=dtype)
    out = lsh.lsh_cumulation(qm, qc, km.astype(bool), kc, v, cap)
    assert out.dtype == dtype and out.shape == (3, 13, 7)
    expected = brute_force(qm, qc, km, kc, v)
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not out[1].any()  # every key of row 1 is masked


@pytest.mark.parametrize("n_k", [9, 40])
def test_lsh_cumulation_table_by_code_or_by_present_code(n_k, cpu_path):
    # capacity 16: 40 keys index the table by code directly, 9 keys give rows only to the codes they have
    qm, qc, km, kc, v, _, _, cap = cumulation_inputs(n_k, 4, n_k=n_k, few_codes=False)
    qc[:, :3] = kc[:, :3]  # some certain collisions beside the random ones
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, qc, km, kc, v, cap), brute_force(qm, qc, km, kc, v),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch,n_q,n_k,d_v", [(0, 4, 5, 3), (2, 0, 5, 3), (2, 4, 0, 3), (2, 4, 5, 0)])
def test_cumulations_of_empty_shapes_are_zeros(batch, n_q, n_k, d_v, cpu_path):
    rng = np.random.default_rng(0)
    qc = rng.integers(0, 8, (batch, n_q, 3)).astype(np.int32)
    kc = rng.integers(0, 8, (batch, n_k, 3)).astype(np.int32)
    qm, km = np.ones((batch, n_q), np.int32), np.ones((batch, n_k), np.int32)
    qw, kw = np.ones((batch, n_q, 2), np.float32), np.ones((batch, n_k, 2), np.float32)
    v = np.ones((batch, n_k, d_v), np.float32)
    for out in (lsh.lsh_cumulation(qm, qc, km, kc, v, 8), lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, v, 8)):
        assert out.shape == (batch, n_q, d_v) and not out.any()


@pytest.mark.parametrize("code_len", [3, 5, 9])
def test_lsh_weighted_cumulation_matches_brute_force(code_len, cpu_path):
    qm, qc, km, kc, v, qw, kw, cap = cumulation_inputs(code_len + 10, code_len)
    out = lsh.lsh_weighted_cumulation(qm.astype(bool), qc, qw, km, kc, kw, v, cap)
    assert out.dtype == np.float32 and out.shape == (3, 13, 7)
    np.testing.assert_allclose(out, brute_force(qm, qc, km, kc, v, qw, kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_floats", [lsh.TABLE_BLOCK_FLOATS, 1])
def test_cumulations_with_one_bucket_sparse_codes_and_small_blocks(monkeypatch, block_floats, cpu_path):
    # block_floats 1: one (row, hash) per cache block
    monkeypatch.setattr(lsh, "TABLE_BLOCK_FLOATS", block_floats)
    qm, qc, km, kc, v, qw, kw, cap = cumulation_inputs(7, 4)
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, qc, km, kc, v, cap), brute_force(qm, qc, km, kc, v),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw, v, cap),
                               brute_force(qm, qc, km, kc, v, qw, kw), rtol=1e-5, atol=1e-5)
    # every key in one bucket: the longest walk
    zeros_q, zeros_k = np.zeros_like(qc), np.zeros_like(kc)
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, zeros_q, km, zeros_k, v, cap),
                               brute_force(qm, zeros_q, km, zeros_k, v), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lsh.lsh_weighted_cumulation(qm, zeros_q, qw, km, zeros_k, kw, v, cap),
                               brute_force(qm, zeros_q, km, zeros_k, v, qw, kw), rtol=1e-5, atol=1e-5)
    # codes spread over 2**20 buckets: buckets are found by binary search instead of a lookup table
    qm, qc, km, kc, v, qw, kw, cap = cumulation_inputs(6, 20, few_codes=False)
    qc[:, :4] = kc[:, :4]  # make sure some codes collide
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, qc, km, kc, v, cap), brute_force(qm, qc, km, kc, v),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- errors
def test_hashing_input_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    mask = np.ones((2, 3), np.int32)
    dmat = lsh.draw_hash_matrices(rng, 2, 8, 4, 3, use_fast_hash=True)
    rmat = lsh.draw_hash_matrices(rng, 2, 8, 4, 3, use_fast_hash=False)
    cases = [
        (TypeError, "x must be a floating", lambda: lsh.fast_hash(mask, x.astype(np.int32), dmat, 4, 3)),
        (TypeError, "x must be a numpy", lambda: lsh.fast_hash(mask, x.tolist(), dmat, 4, 3)),
        (ValueError, "power of two", lambda: lsh.fast_hash(mask, x[..., :6], dmat, 4, 3)),
        (ValueError, "hash_code_len must be <= the", lambda: lsh.fast_hash(mask, x, dmat, 4, 9)),
        (ValueError, "hash_code_len must be in", lambda: lsh.gaussian_hash(mask, x, rmat, 4, 25)),
        (ValueError, "num_hash must be >= 1", lambda: lsh.fast_hash(mask, x, dmat, 0, 3)),
        (TypeError, "num_hash must be an int", lambda: lsh.fast_hash(mask, x, dmat, 4.0, 3)),
        (ValueError, r"dmat must have shape \(2, 3, 3, 8\)", lambda: lsh.fast_hash(mask, x, dmat, 5, 3)),
        (ValueError, "dmat must hold only", lambda: lsh.fast_hash(mask, x, dmat * 2, 4, 3)),
        (ValueError, r"rmat must have shape \(2, 8, 12\)", lambda: lsh.gaussian_hash(mask, x, rmat[:, :4], 4, 3)),
        (ValueError, r"mask must have shape \(2, 3\)", lambda: lsh.gaussian_hash(mask[:, :2], x, rmat, 4, 3)),
        (ValueError, "mask must hold only 0 and 1", lambda: lsh.gaussian_hash(mask * 2, x, rmat, 4, 3)),
        (TypeError, "mask must be bool or integer", lambda: lsh.gaussian_hash(mask * 1.0, x, rmat, 4, 3)),
        (TypeError, "rng must be a numpy.random.Generator",
         lambda: lsh.hash_codes(mask, x, mask, x, num_hash=4, hash_code_len=3, use_fast_hash=True, rng=0)),
        (ValueError, "key must match query",
         lambda: lsh.hash_codes(mask, x, mask, x[..., :4], num_hash=4, hash_code_len=3, use_fast_hash=True, rng=rng)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


def test_cumulation_input_errors():
    qm, qc, km, kc, v, qw, kw, cap = cumulation_inputs(0, 3)
    cases = [
        (TypeError, "query_hash_code must be int32",
         lambda: lsh.lsh_cumulation(qm, qc.astype(np.int64), km, kc, v, cap)),
        (ValueError, r"key_hash_code must lie in \[0, 8\)", lambda: lsh.lsh_cumulation(qm, qc, km, kc + 8, v, cap)),
        (ValueError, "hashtable_capacity must be 2", lambda: lsh.lsh_cumulation(qm, qc, km, kc, v, 12)),
        (ValueError, r"key_mask must have shape \(3, 11\)", lambda: lsh.lsh_cumulation(qm, qc, km[:, :5], kc, v, cap)),
        (ValueError, "same number of hashes", lambda: lsh.lsh_cumulation(qm, qc[..., :2], km, kc, v, cap)),
        (ValueError, r"query_hash_code must have shape \(3, 13, num_hash\)",
         lambda: lsh.lsh_cumulation(qm, qc[:, :4], km, kc, v, cap)),
        (TypeError, "value must be a floating", lambda: lsh.lsh_cumulation(qm, qc, km, kc, v.astype(int), cap)),
        (ValueError, r"key_weight must have shape \(3, 11, 4\)",
         lambda: lsh.lsh_weighted_cumulation(qm, qc, qw, km, kc, kw[..., :3], v, cap)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
