"""scipy is optional: without it the LSH tables are summed by NumPy, with the same results."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_lsh import brute_force, cumulation_inputs
from yoso_np import lsh


@pytest.fixture
def no_scipy(monkeypatch):
    """scipy and its submodules unimportable, as on an install without it."""
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy then raises ImportError
    monkeypatch.setattr(lsh.cpu_kernels, "lsh_cumulation", lambda: None)  # the path that used scipy
    lsh._scipy_sparse.cache_clear()  # looked for once per process
    assert lsh._scipy_sparse() is None
    yield
    lsh._scipy_sparse.cache_clear()


@pytest.mark.parametrize("code_len,n_k", [(3, 11), (5, 40), (9, 11)])
def test_cumulation_without_scipy_matches_brute_force(no_scipy, code_len, n_k):
    qm, qc, km, kc, v, _, _, cap = cumulation_inputs(code_len, code_len, n_k=n_k)
    np.testing.assert_allclose(lsh.lsh_cumulation(qm, qc, km, kc, v, cap), brute_force(qm, qc, km, kc, v),
                               rtol=1e-5, atol=1e-5)


def test_sampling_model_runs_where_scipy_cannot_be_imported():
    code = """
import sys
sys.modules["scipy"] = None
import numpy as np, yoso_np
config = yoso_np.YosoConfig(vocab_size=50, hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                            intermediate_size=16, use_expectation=False, num_hash=4, hash_code_len=5)
out = yoso_np.YosoModel(config)(np.arange(40).reshape(2, 20) % 50, rng=0).last_hidden_state
assert np.isfinite(out).all()
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "YOSO_NP_NUMBA": "0"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
