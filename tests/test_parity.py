"""yoso_np against transformers: every reference case made by tests/make_fixtures.py, without torch."""
import numpy as np
import pytest

import yoso_np
from tests.fixtures_io import list_cases, load_case

CASES = list_cases()


def tolerance(case):
    return dict(rtol=1e-4, atol=1e-4) if case.dtype == "float32" else dict(rtol=1e-9, atol=1e-9)


def assert_close(actual, expected, name, rtol, atol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1.0)
    err = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert err <= atol * scale + rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def run_case(case):
    cls = getattr(yoso_np, case.cls_name)
    model = cls.from_pretrained(case.path, dtype=np.dtype(case.dtype))
    return model, model(**case.model_inputs(), output_hidden_states=True, output_attentions=True)


def test_there_are_cases():
    assert len(CASES) >= 12


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_transformers(name):
    case = load_case(name)
    model, out = run_case(case)
    tol = tolerance(case)
    for key, expected in case.outputs.items():
        if key.startswith("hidden_states_"):
            actual = out.hidden_states[int(key.rsplit("_", 1)[1])]
        elif key.startswith("grad_"):
            continue
        else:
            actual = out[key]
        assert actual is not None, f"{name}: output {key} missing"
        assert np.asarray(actual).dtype == np.dtype(case.dtype), f"{key} dtype {np.asarray(actual).dtype}"
        assert_close(actual, expected, f"{name}/{key}", **tol)
    assert len(out.attentions) == model.config.num_hidden_layers


@pytest.mark.parametrize("name", [c for c in CASES if load_case(c).padded])
def test_appended_padding_changes_nothing(name):
    """Outputs for real tokens do not change when more padding is appended."""
    case = load_case(name)
    model, out = run_case(case)
    inputs = dict(case.model_inputs())
    extra = 5
    for key in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
        if key in inputs:
            a = inputs[key]
            fill = 1 if key == "input_ids" else 0
            if key == "position_ids":
                fill = 2
            inputs[key] = np.concatenate([a, np.full(a.shape[:-1] + (extra,), fill, a.dtype)], axis=-1)
    for key in ("labels", "start_positions", "end_positions"):
        inputs.pop(key, None)
    if "inputs_embeds" in inputs:
        pytest.skip("inputs_embeds case")
    longer = model(**inputs)
    real = case.inputs["attention_mask"].astype(bool)
    field = "last_hidden_state" if case.cls_name == "YosoModel" else (
        "start_logits" if case.cls_name == "YosoForQuestionAnswering" else "logits")
    a, b = np.asarray(out[field]), np.asarray(longer[field])
    if case.cls_name in ("YosoModel", "YosoForMaskedLM", "YosoForTokenClassification", "YosoForQuestionAnswering"):
        a, b = a[real], b[:, :a.shape[1]][real]  # per-token outputs: compare the real tokens
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
