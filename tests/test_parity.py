"""yoso_np against transformers: every reference case made by tests/make_fixtures.py, without torch."""
import numpy as np
import pytest

import yoso_np
from safetensors.numpy import load_file
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
    plain = model(**case.model_inputs())  # no hidden states asked for: a first-token head's last layer is one row
    for key in ("logits", "loss", "start_logits", "end_logits", "last_hidden_state"):
        if key in case.outputs:
            assert_close(plain[key], case.outputs[key], f"{name}/{key} (plain call)", **tol)


PADDED = [c for c in CASES if load_case(c).padded and "inputs_embeds" not in load_case(c).inputs]


@pytest.mark.parametrize("name", PADDED)
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
    longer = model(**inputs)
    real = case.inputs["attention_mask"].astype(bool)
    field = "last_hidden_state" if case.cls_name == "YosoModel" else (
        "start_logits" if case.cls_name == "YosoForQuestionAnswering" else "logits")
    a, b = np.asarray(out[field]), np.asarray(longer[field])
    if case.cls_name in ("YosoModel", "YosoForMaskedLM", "YosoForTokenClassification", "YosoForQuestionAnswering"):
        a, b = a[real], b[:, :a.shape[1]][real]  # per-token outputs: compare the real tokens
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


EPS_CASES = [c for c in CASES if load_case(c).config["layer_norm_eps"] >= 1e-6]


@pytest.mark.parametrize("name", EPS_CASES)
def test_eps_cases_depend_on_eps(name):
    """The eps cases can tell eps inside the square root from eps outside it: the same model with an eps too small
    to matter misses the reference by far more than the tolerance."""
    case = load_case(name)
    eps = case.config["layer_norm_eps"]
    model = getattr(yoso_np, case.cls_name).from_pretrained(case.path, dtype=np.dtype(case.dtype),
                                                            layer_norm_eps=1e-15)
    field = "logits" if "logits" in case.outputs else "last_hidden_state"
    err = float(np.abs(model(**case.model_inputs())[field] - case.outputs[field]).max())
    scale = max(float(np.abs(case.outputs[field]).max()), 1.0)
    tol = tolerance(case)
    assert err > 10 * (tol["atol"] + tol["rtol"]) * scale, f"eps {eps} changes {field} by only {err:.3g}"


def test_fresh_weights_follow_initializer_range_as_transformers():
    """A case keeps the weights transformers' own init drew with initializer_range 0.5: yoso_np's fresh weights of the
    same config have the same zeros, ones, zeroed padding row and standard deviation."""
    case = load_case("seqcls_type_vocab3_init_range0.5")
    theirs = load_file(f"{case.path}/model.safetensors")
    ours = getattr(yoso_np, case.cls_name)(yoso_np.YosoConfig.from_dict(case.config), seed=0).weights
    assert case.config["initializer_range"] == 0.5 and set(ours) == set(theirs)
    random_theirs, random_ours = [], []
    for key, w in theirs.items():
        if np.all(w == w.reshape(-1)[0]):  # a constant: LayerNorm weight 1, biases 0
            assert np.array_equal(ours[key], w), key
            continue
        zero_rows = lambda a: np.flatnonzero(~a.any(axis=-1)).tolist()
        assert zero_rows(ours[key]) == zero_rows(w), f"{key}: zero rows"  # the padding row of the word embeddings
        random_theirs.append(w.ravel())
        random_ours.append(ours[key].ravel())
    std_theirs, std_ours = np.concatenate(random_theirs).std(), np.concatenate(random_ours).std()
    # about 12 000 samples each: a relative sampling error near 0.7 %
    assert abs(std_ours / std_theirs - 1) < 0.04 and abs(std_theirs / 0.5 - 1) < 0.04, (std_ours, std_theirs)
