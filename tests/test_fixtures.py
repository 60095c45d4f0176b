"""The reference fixture set itself is complete and consistent (no torch needed)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fixtures_io import CASE_FILES, REF_DIR, list_cases, load_case

CASES = list_cases()
HEAD_WEIGHTS = {  # name -> shape, given hidden size h and num_labels k
    "YosoModel": lambda h, k: {},
    "YosoForMaskedLM": lambda h, k: {
        "cls.predictions.transform.dense.weight": (h, h), "cls.predictions.transform.dense.bias": (h,),
        "cls.predictions.transform.LayerNorm.weight": (h,), "cls.predictions.transform.LayerNorm.bias": (h,),
    },
    "YosoForSequenceClassification": lambda h, k: {
        "classifier.dense.weight": (h, h), "classifier.dense.bias": (h,),
        "classifier.out_proj.weight": (k, h), "classifier.out_proj.bias": (k,),
    },
    "YosoForMultipleChoice": lambda h, k: {
        "pre_classifier.weight": (h, h), "pre_classifier.bias": (h,),
        "classifier.weight": (1, h), "classifier.bias": (1,),
    },
    "YosoForTokenClassification": lambda h, k: {"classifier.weight": (k, h), "classifier.bias": (k,)},
    "YosoForQuestionAnswering": lambda h, k: {"qa_outputs.weight": (2, h), "qa_outputs.bias": (2,)},
}


def num_labels(config):
    # transformers writes num_labels only through id2label, and leaves the default two labels out
    return len(config["id2label"]) if config.get("id2label") else 2


def expected_weights(case):
    """transformers' weight names and shapes for the case's class and config."""
    c = case.config
    h, inter, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    shapes = {
        "embeddings.word_embeddings.weight": (c["vocab_size"], h),
        "embeddings.position_embeddings.weight": (c["max_position_embeddings"] + 2, h),
        "embeddings.token_type_embeddings.weight": (c["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(c["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (h, h), (h,)
        shapes[layer + "intermediate.dense.weight"], shapes[layer + "intermediate.dense.bias"] = (inter, h), (inter,)
        shapes[layer + "output.dense.weight"], shapes[layer + "output.dense.bias"] = (h, inter), (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[layer + name + ".weight"], shapes[layer + name + ".bias"] = (h,), (h,)
        if c.get("conv_window") is not None:
            shapes[layer + "attention.self.conv.weight"] = (heads, 1, c["conv_window"], 1)
    if case.cls_name != "YosoModel":
        shapes = {"yoso." + name: shape for name, shape in shapes.items()}
    if case.cls_name == "YosoForMaskedLM":  # decoder.weight/bias are tied and not written
        shapes["cls.predictions.bias"] = (c["vocab_size"],)
    shapes.update(HEAD_WEIGHTS[case.cls_name](h, num_labels(c)))
    return shapes


def test_fixture_set_covers_every_class_and_variant():
    assert len(CASES) >= 12
    cases = [load_case(name) for name in CASES]
    assert {case.cls_name for case in cases} == set(HEAD_WEIGHTS)
    assert {"gelu", "gelu_new", "relu", "silu"} <= {case.config["hidden_act"] for case in cases}
    assert {5, 9} <= {case.config["hash_code_len"] for case in cases}
    assert any(case.config.get("conv_window") for case in cases)
    assert any(case.padded for case in cases) and any(case.dtype == "float64" for case in cases)
    for key in ("token_type_ids", "position_ids", "inputs_embeds"):
        assert any(key in case.inputs for case in cases), key
    problems = {case.config.get("problem_type") for case in cases if case.cls_name == "YosoForSequenceClassification"}
    assert problems == {"single_label_classification", "multi_label_classification", "regression"}
    # LayerNorm eps as checkpoints in the wild have it, in float32 (the compiled path) and float64 (NumPy)
    assert {(c.config["layer_norm_eps"], c.dtype) for c in cases} >= {(1e-5, "float32"), (1e-6, "float64")}
    assert any(c.config["initializer_range"] != 0.02 for c in cases)
    assert any(c.config["type_vocab_size"] > 2 for c in cases)


def test_unknown_case_is_a_clear_error():
    with pytest.raises(ValueError, match="name"):
        load_case("no_such_case")


@pytest.mark.parametrize("name", CASES)
def test_case_files_and_weights(name):
    case = load_case(name)
    for file in CASE_FILES:
        assert (REF_DIR / name / file).is_file(), file
    weights = load_file(f"{case.path}/model.safetensors")
    expected = expected_weights(case)
    assert set(weights) == set(expected)
    assert {k: v.shape for k, v in weights.items()} == expected
    assert set(case.grads) == set(weights)
    for key, grad in case.grads.items():
        assert grad.shape == weights[key].shape and grad.dtype == weights[key].dtype == np.dtype(case.dtype), key
        assert np.all(np.isfinite(grad)), key
    word = next(k for k in weights if k.endswith("word_embeddings.weight"))
    if "inputs_embeds" in case.inputs:
        assert not np.any(case.grads[word])
    elif case.cls_name != "YosoForMaskedLM":  # the MLM decoder (tied) gives the padding row a gradient
        assert not np.any(case.grads[word][case.config["pad_token_id"]])


@pytest.mark.parametrize("name", CASES)
def test_case_inputs_are_consistent(name):
    case = load_case(name)
    c, inputs = case.config, case.inputs
    assert ("input_ids" in inputs) != ("inputs_embeds" in inputs)
    mask = inputs["attention_mask"]
    shape = mask.shape
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert len(shape) == (3 if case.cls_name == "YosoForMultipleChoice" else 2)
    assert shape[-1] <= c["max_position_embeddings"]
    rows = mask.reshape(-1, shape[-1])
    assert np.all(rows[:, 0] == 1) and np.all(np.diff(rows, axis=1) <= 0)  # right padding
    assert case.padded == bool(np.any(mask == 0))
    if "input_ids" in inputs:
        ids = inputs["input_ids"]
        assert ids.shape == shape and ids.dtype == np.int64
        assert ids.min() >= 0 and ids.max() < c["vocab_size"]
        assert np.all(ids[mask == 0] == c["pad_token_id"])
    else:
        assert inputs["inputs_embeds"].shape == shape + (c["hidden_size"],)
    if "token_type_ids" in inputs:
        assert inputs["token_type_ids"].shape == shape and inputs["token_type_ids"].max() < c["type_vocab_size"]
        assert set(np.unique(inputs["token_type_ids"])) == set(range(c["type_vocab_size"]))  # every type used
    if "position_ids" in inputs:
        positions = inputs["position_ids"]
        assert positions.shape == shape and positions.min() >= 0
        assert positions.max() < c["max_position_embeddings"] + 2
    if case.cls_name == "YosoModel":
        assert inputs["grad_last_hidden_state"].shape == shape + (c["hidden_size"],)
        assert "labels" not in inputs
    if case.cls_name in ("YosoForMaskedLM", "YosoForTokenClassification"):
        labels = inputs["labels"]
        assert labels.shape == shape and np.any(labels == -100) and np.any(labels >= 0)
    if case.cls_name == "YosoForQuestionAnswering":
        positions = np.concatenate([inputs["start_positions"], inputs["end_positions"]])
        assert inputs["start_positions"].shape == (shape[0],)
        assert np.any(positions >= shape[-1]) and np.any(positions < shape[-1])  # one out of range, kept in range


@pytest.mark.parametrize("name", CASES)
def test_case_outputs_are_consistent(name):
    case = load_case(name)
    c, outputs = case.config, case.outputs
    shape = case.inputs["attention_mask"].shape
    rows, n, h = int(np.prod(shape[:-1])), shape[-1], c["hidden_size"]
    for key, value in outputs.items():
        assert value.dtype == np.dtype(case.dtype), key
        assert np.all(np.isfinite(value)), key
    assert case.num_hidden_states == c["num_hidden_layers"] + 1
    for i in range(case.num_hidden_states):
        assert outputs[f"hidden_states_{i}"].shape == (rows, n, h)
    heads = {
        "YosoModel": {"last_hidden_state": shape + (h,)},
        "YosoForMaskedLM": {"logits": shape + (c["vocab_size"],)},
        "YosoForSequenceClassification": {"logits": (shape[0], num_labels(c))},
        "YosoForMultipleChoice": {"logits": shape[:2]},
        "YosoForTokenClassification": {"logits": shape + (num_labels(c),)},
        "YosoForQuestionAnswering": {"start_logits": shape, "end_logits": shape},
    }[case.cls_name]
    for key, expected in heads.items():
        assert outputs[key].shape == expected, key
    if case.cls_name == "YosoModel":
        np.testing.assert_array_equal(outputs["last_hidden_state"], outputs[f"hidden_states_{c['num_hidden_layers']}"])
    else:
        assert outputs["loss"].shape == () and outputs["loss"] > 0
    if "inputs_embeds" in case.inputs:
        assert outputs["grad_inputs_embeds"].shape == case.inputs["inputs_embeds"].shape
        assert np.any(outputs["grad_inputs_embeds"])
    assert np.abs(outputs[next(iter(heads))]).mean() > 0.05  # not trivially near zero
