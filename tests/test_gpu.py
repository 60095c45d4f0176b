"""The whole models on CuPy: the same reference cases as on NumPy, and CPU/GPU parity of both attention modes.
Runs only where CuPy and a CUDA device are present (marker gpu)."""
import numpy as np
import pytest

import yoso_np
from tests.fixtures_io import list_cases, load_case
from tests.test_parity import assert_close, tolerance

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", list_cases())
def test_reference_cases_on_gpu(cupy, name):
    case = load_case(name)
    model = getattr(yoso_np, case.cls_name).from_pretrained(case.path, dtype=np.dtype(case.dtype), device="cuda")
    inputs = case.model_inputs()
    if case.cls_name == "YosoModel":
        inputs["grad_last_hidden_state"] = case.inputs["grad_last_hidden_state"]
    out, grads = model.forward_backward(**inputs)
    tol = tolerance(case)
    for key, expected in case.outputs.items():
        if key in out and not key.startswith("grad_"):
            assert isinstance(out[key], cupy.ndarray), key
            assert_close(cupy.asnumpy(out[key]), expected, f"{name}/{key}", **tol)
    for key, expected in case.grads.items():
        assert isinstance(grads[key], cupy.ndarray)
        assert_close(cupy.asnumpy(grads[key]), expected, f"{name}/grad {key}", **tol)


def sampling_model(**kw):
    config = yoso_np.YosoConfig(vocab_size=50, hidden_size=64, num_attention_heads=2, num_hidden_layers=2,
                                intermediate_size=48, max_position_embeddings=300, use_expectation=False, num_hash=16,
                                hash_code_len=6, conv_window=3, **kw)
    return yoso_np.YosoForSequenceClassification(config, seed=0)


@pytest.mark.parametrize("use_fast_hash", [True, False])
def test_sampling_cpu_gpu_parity(cupy, use_fast_hash):
    """Same seed, same hash matrices (drawn on the host): the same codes except where a projection is at
    rounding level, so nearly every token agrees to float32 accuracy."""
    model = sampling_model(use_fast_hash=use_fast_hash)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (2, 257))
    mask = np.ones_like(ids)
    mask[1, 200:] = 0
    cpu = model(ids, mask, rng=11, output_hidden_states=True).hidden_states[-1]
    model.to("cuda")
    gpu = cupy.asnumpy(model(ids, mask, rng=11, output_hidden_states=True).hidden_states[-1])
    close = np.isclose(gpu, cpu, rtol=1e-4, atol=1e-4).all(axis=-1)
    assert close.mean() > 0.98, f"only {close.mean():.3f} of tokens agree"


def relative_error(actual, expected):
    return float(np.linalg.norm((actual - expected).ravel()) / max(np.linalg.norm(expected.ravel()), 1e-30))


@pytest.mark.parametrize("lsh_backward", [True, False])
def test_sampling_training_step_on_gpu(cupy, lsh_backward):
    """The GPU's gradients are the CPU's: the same hash draws give the same codes except where a projection is at
    rounding level (see the parity test above), which moves a gradient by far less than a wrong kernel would."""
    model = sampling_model(lsh_backward=lsh_backward)
    ids = np.random.default_rng(1).integers(0, 50, (2, 100))
    cpu_out, cpu_grads = model.forward_backward(ids, labels=[0, 1], rng=3)
    model.to("cuda")
    gpu_out, gpu_grads = model.forward_backward(ids, labels=[0, 1], rng=3)
    assert abs(float(gpu_out.loss) - float(cpu_out.loss)) < 1e-3
    assert set(gpu_grads) == set(cpu_grads)
    gpu_grads = {k: cupy.asnumpy(g) for k, g in gpu_grads.items()}
    errors = {k: relative_error(gpu_grads[k], g) for k, g in cpu_grads.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.05, f"{worst}: relative error {errors[worst]:.3g} against the CPU's gradient"
    whole = relative_error(np.concatenate([gpu_grads[k].ravel() for k in sorted(cpu_grads)]),
                           np.concatenate([cpu_grads[k].ravel() for k in sorted(cpu_grads)]))
    assert whole < 0.01, f"all gradients: relative error {whole:.3g} against the CPU's"
