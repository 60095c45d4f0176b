"""Model classes: loading and saving, moving, input validation and its error messages."""
import json
import os
import warnings

import importlib

import numpy as np
import pytest

from yoso_np import YosoConfig, YosoForMaskedLM, YosoForMultipleChoice, YosoForSequenceClassification, YosoModel
from tests.fixtures_io import load_case
from tests.hubcache import make_hub_cache


def tiny(**kw):
    return YosoConfig(**{"vocab_size": 23, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                         "intermediate_size": 6, "max_position_embeddings": 10, **kw})


IDS = np.array([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def test_config_defaults_match_transformers():
    c = YosoConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == \
        (50265, 768, 12, 12, 3072)
    assert (c.max_position_embeddings, c.hash_code_len, c.num_hash, c.conv_window, c.use_expectation) == \
        (4096, 9, 64, None, True)
    assert (c.use_fast_hash, c.lsh_backward, c.pad_token_id, c.bos_token_id, c.eos_token_id) == (True, True, 1, 0, 2)
    assert (c.type_vocab_size, c.layer_norm_eps, c.hidden_act, c.num_labels) == (1, 1e-12, "gelu", 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=10, num_attention_heads=3), "multiple of"),
    (dict(hidden_act="nope"), "hidden_act"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(conv_window=4), "odd"),
    (dict(problem_type="ranking"), "problem_type"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        YosoConfig(**kwargs)


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    d = tiny(num_labels=3).to_dict()
    d["some_future_field"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = YosoConfig.from_json_file(tmp_path / "config.json")
    assert c.num_labels == 3 and c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    c.save_pretrained(tmp_path / "out")
    again = json.loads((tmp_path / "out" / "config.json").read_text())
    assert again["some_future_field"] == {"a": 1} and again["model_type"] == "yoso"
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        YosoConfig.from_json_file(tmp_path / "bad.json")


def test_save_load_round_trip_and_head_init(tmp_path):
    mlm = YosoForMaskedLM(tiny(), seed=3)
    mlm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["YosoForMaskedLM"]
    again = YosoForMaskedLM.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again(IDS, MASK).logits, mlm(IDS, MASK).logits)
    with pytest.warns(UserWarning, match="not used by the model: .*cls.predictions.bias"):
        base = YosoModel.from_pretrained(tmp_path)  # head checkpoint into the base model: cls.* unused
    np.testing.assert_allclose(base(IDS, MASK).last_hidden_state,
                               mlm(IDS, MASK, output_hidden_states=True).hidden_states[-1], rtol=1e-6)
    with pytest.warns(UserWarning, match="classifier.out_proj.weight"), \
            pytest.warns(UserWarning, match="not used by the model"):
        clf = YosoForSequenceClassification.from_pretrained(tmp_path, num_labels=4)
    assert clf(IDS, MASK).logits.shape == (2, 4)
    assert np.all(clf.weights["classifier.out_proj.bias"] == 0)
    assert 0.005 < clf.weights["classifier.out_proj.weight"].std() < 0.05  # normal(0, initializer_range)


def test_missing_and_misshapen_weights(tmp_path):
    model = YosoModel(tiny())
    weights = model.state_dict()
    del weights["encoder.layer.0.output.dense.weight"]
    with pytest.raises(ValueError, match="encoder.layer.0.output.dense.weight"):
        YosoModel(tiny(), weights)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"embeddings.position_embeddings.weight.*\(12, 8\).*\(22, 8\)"):
        YosoModel.from_pretrained(tmp_path, max_position_embeddings=20)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        YosoModel.from_pretrained(tmp_path)


def test_from_a_local_hub_cache(tmp_path):
    case = load_case("mlm_basic")
    cache = tmp_path / "hub"
    make_hub_cache(cache, "someone/yoso-tiny", {f: os.path.join(case.path, f)
                                                for f in ("config.json", "model.safetensors")})
    model = YosoForMaskedLM.from_pretrained("someone/yoso-tiny", cache_dir=str(cache), local_files_only=True)
    np.testing.assert_allclose(model(**case.model_inputs()).logits, case.outputs["logits"], rtol=1e-4, atol=1e-4)
    with pytest.raises(OSError):
        YosoForMaskedLM.from_pretrained("someone/not-there", cache_dir=str(cache), local_files_only=True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_ids=[[1, 2, 30]]), ValueError, r"input_ids must lie in \[0, 23\), got 30"),
    (dict(input_ids=[[1, -2, 3]]), ValueError, "got -2"),
    (dict(input_ids=np.zeros((1, 11), np.int64)), ValueError, "at most max_position_embeddings = 10, got 11"),
    (dict(input_ids=[[1.5, 2.0]]), TypeError, "input_ids must hold integers"),
    (dict(input_ids=[1, 2, 3]), ValueError, r"input_ids must have shape \(batch, sequence\)"),
    (dict(), ValueError, "exactly one of input_ids and inputs_embeds"),
    (dict(input_ids=IDS, attention_mask=MASK[:, :4]), ValueError, r"attention_mask must have shape \(2, 5\)"),
    (dict(input_ids=IDS, attention_mask=(1 - MASK) * -10000.0), ValueError, "0/1"),
    (dict(input_ids=IDS, token_type_ids=np.ones_like(IDS)), ValueError, r"token_type_ids must lie in \[0, 1\)"),
    (dict(input_ids=IDS, position_ids=np.full_like(IDS, 12)), ValueError, r"position_ids must lie in \[0, 12\)"),
    (dict(inputs_embeds=np.zeros((1, 3, 7), np.float32)), ValueError, r"\(batch, sequence, 8\)"),
    (dict(input_ids=IDS, rng="seed"), TypeError, "rng"),
])
def test_bad_inputs_are_named(kwargs, error, message):
    model = YosoModel(tiny())
    kwargs.setdefault("training", "rng" in kwargs)
    with pytest.raises(error, match=message):
        model(**kwargs)


def test_labels_are_checked():
    model = YosoForSequenceClassification(tiny(num_labels=3))
    with pytest.raises(ValueError, match="got 3"):
        model(IDS, MASK, labels=[0, 3])
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        model(IDS, MASK, labels=[0, 1, 2])


def test_fully_masked_rows_are_zero_not_nan():
    model = YosoModel(tiny(conv_window=3))
    out = model(IDS, np.zeros_like(MASK), output_attentions=True)
    assert np.all(np.isfinite(out.last_hidden_state))
    assert np.all(out.attentions[0] == 0)


def test_float64_and_dtype_follow_the_weights(tmp_path):
    model = YosoModel(tiny())
    model.save_pretrained(tmp_path)
    m64 = YosoModel.from_pretrained(tmp_path, dtype=np.float64)
    out = m64(IDS, MASK)
    assert out.last_hidden_state.dtype == np.float64
    np.testing.assert_allclose(out.last_hidden_state, model(IDS, MASK).last_hidden_state, atol=2e-5)


def test_sampling_needs_and_uses_rng():
    model = YosoModel(tiny(use_expectation=False, num_hash=4, hash_code_len=3))
    a = model(IDS, MASK, rng=5).last_hidden_state
    b = model(IDS, MASK, rng=np.random.default_rng(5)).last_hidden_state
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(model(IDS, MASK).last_hidden_state))  # no rng: fresh entropy


@pytest.mark.torch
def test_transformers_loads_what_we_save(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = YosoForMaskedLM(tiny(conv_window=3), seed=7)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.YosoForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = theirs(input_ids=torch.tensor(IDS[:1])).logits.numpy()
    np.testing.assert_allclose(model(IDS[:1]).logits, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lsh_backward", [True, False])
def test_training_step_is_reproducible_from_rng(lsh_backward):
    config = tiny(num_labels=2, use_expectation=False, num_hash=4, hash_code_len=3, lsh_backward=lsh_backward)
    model = YosoForSequenceClassification(config)
    a_out, a = model.forward_backward(IDS, MASK, labels=[0, 1], training=True, rng=3)
    b_out, b = model.forward_backward(IDS, MASK, labels=[0, 1], training=True, rng=np.random.default_rng(3))
    _, c = model.forward_backward(IDS, MASK, labels=[0, 1], training=True, rng=4)
    assert float(a_out.loss) == float(b_out.loss)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert set(a) == set(model.state_dict()) and all(a[k].shape == model.weights[k].shape for k in a)


@pytest.mark.parametrize("cls", [YosoForSequenceClassification, YosoForMultipleChoice])
@pytest.mark.parametrize("extra", [dict(conv_window=3), dict(use_expectation=False, num_hash=8, hash_code_len=2)])
def test_first_token_heads_compute_only_the_first_token_in_the_last_layer(monkeypatch, cls, extra):
    """The last layer's dense layers see one row per sequence, and the logits, loss and gradients (float64) are
    those of the whole layer, with padding, a conv window or sampled attention."""
    config = tiny(num_hidden_layers=2, num_labels=3, **extra)
    model = cls(config, {k: v.astype(np.float64) for k, v in cls(config, seed=1).weights.items()})
    ids, mask, labels = (IDS, MASK, [0, 2]) if cls is YosoForSequenceClassification else (IDS[None], MASK[None], [1])
    encoder = importlib.import_module("yoso_np.layers.encoder")
    real, rows_seen = encoder.linear, []
    monkeypatch.setattr(encoder, "linear", lambda p, x: rows_seen.append(x.shape[1]) or real(p, x))
    out, grads = model.forward_backward(ids, mask, labels=labels, rng=3)
    assert rows_seen == [5, 5, 5, 1, 1, 1]  # per layer: attention output, feed-forward in and out
    plain = model(ids, mask, rng=3).logits
    monkeypatch.setattr(model, "head_rows", None)
    full_out, full_grads = model.forward_backward(ids, mask, labels=labels, rng=3)
    assert rows_seen[6:] == [5, 5, 5, 1, 1, 1] + [5] * 6  # the plain call's, then the whole layer's
    np.testing.assert_allclose(out.loss, full_out.loss, rtol=1e-12)
    np.testing.assert_allclose(out.logits, full_out.logits, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(plain, full_out.logits, rtol=1e-12, atol=1e-14)
    for k, g in full_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-10, atol=1e-13, err_msg=k)
    monkeypatch.undo()  # asking for the hidden states or contexts computes every position
    hidden = model(ids, mask, rng=3, output_hidden_states=True).hidden_states
    assert hidden[-1].shape == hidden[0].shape
    assert model(ids, mask, rng=3, output_attentions=True).attentions[-1].shape == hidden[0].shape


def test_forward_backward_needs_a_target():
    with pytest.raises(ValueError, match="needs labels"):
        YosoForSequenceClassification(tiny()).forward_backward(IDS, MASK)
    with pytest.raises(ValueError, match="grad_last_hidden_state"):
        YosoModel(tiny()).forward_backward(IDS, MASK)


def test_legacy_pytorch_model_bin_repo_through_the_hub_cache(tmp_path):
    """An older hub repository (as uw-madison/yoso-4096 may be): config.json and only pytorch_model.bin, with the
    tied decoder and the position_ids buffer inside. Read without torch, it gives the reference outputs."""
    legacy = os.path.join(os.path.dirname(__file__), "fixtures", "legacy")
    make_hub_cache(tmp_path, "uw-madison/yoso-4096", {f: os.path.join(legacy, f) for f in os.listdir(legacy)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the buffer and the tied decoder are expected, not "unused"
        model = YosoForMaskedLM.from_pretrained("uw-madison/yoso-4096", cache_dir=str(tmp_path),
                                                local_files_only=True)
    case = load_case("mlm_basic")
    np.testing.assert_allclose(model(**case.model_inputs()).logits, case.outputs["logits"], rtol=1e-4, atol=1e-4)
