"""Hand-written backward against torch autograd through transformers (the fixtures' grads.safetensors)."""
import numpy as np
import pytest

import yoso_np
from tests.fixtures_io import list_cases, load_case
from tests.test_parity import assert_close, tolerance

CASES = list_cases()


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_torch_autograd(name):
    case = load_case(name)
    model = getattr(yoso_np, case.cls_name).from_pretrained(case.path, dtype=np.dtype(case.dtype))
    inputs = case.model_inputs()
    if case.cls_name == "YosoModel":
        inputs["grad_last_hidden_state"] = case.inputs["grad_last_hidden_state"]
    out, grads = model.forward_backward(**inputs)
    assert set(grads) == set(model.weights) == set(case.grads)
    tol = tolerance(case)
    for key, expected in case.grads.items():
        assert grads[key].shape == model.weights[key].shape
        assert grads[key].dtype == model.weights[key].dtype
        assert_close(grads[key], expected, f"{name}/grad {key}", **tol)
    if "grad_inputs_embeds" in case.outputs:
        assert_close(out.grad_inputs_embeds, case.outputs["grad_inputs_embeds"], f"{name}/grad_inputs_embeds", **tol)
    if "loss" in case.outputs:
        assert_close(out.loss, case.outputs["loss"], f"{name}/loss", **tol)
