"""text-classification, token-classification, question-answering and feature-extraction pipelines on tiny random
checkpoints: against transformers' pipelines where torch is installed (each text alone, so that transformers'
0/1-mask quirk never meets padding; question-answering against transformers 4.x's arithmetic written out here, as
5.x removed that pipeline), and the batching, output shapes and errors without torch."""
import warnings

import numpy as np
import pytest

from yoso_np import (Tokenizer, YosoConfig, YosoForMaskedLM, YosoForQuestionAnswering,
                     YosoForSequenceClassification, YosoForTokenClassification, pipeline)
from yoso_np.pipelines import Pipeline
from tests.test_pipelines_cli import FIXTURE

SIZE = dict(vocab_size=320, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37,
            max_position_embeddings=64)
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = ["the old mill", "Paris is the capital of France, zephyr jukebox.", "a", "Café naïve 🙂 Zürich",
         "The river runs past the old mill and the mill wheel turns all day."]
CONTEXT = ("The village has a small school, a church with a tall tower, a market on the square and a bridge over "
           "the river. Paris is the capital of France. Rome is the capital of Italy.")


def save(folder, model):
    model.save_pretrained(folder)
    Tokenizer.from_pretrained(FIXTURE).save_pretrained(folder)
    return folder


def make_checkpoints(root):
    """A tiny random checkpoint of each head, with the fixture tokenizer, in folders below root."""
    return {
        "cls": save(root / "cls", YosoForSequenceClassification(
            YosoConfig(**SIZE, id2label={0: "neg", 1: "pos", 2: "neu"}), seed=1)),
        "ner": save(root / "ner", YosoForTokenClassification(YosoConfig(**SIZE, id2label=NER_LABELS), seed=2)),
        "qa": save(root / "qa", YosoForQuestionAnswering(YosoConfig(**SIZE), seed=4)),
        "mlm": save(root / "mlm", YosoForMaskedLM(YosoConfig(**SIZE), seed=3)),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("pipelines"))


def transformers_pipeline(task, folder):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.pipeline(task, model=str(folder))


def close(ours, theirs):
    """Equal structures, with floats to 1e-5."""
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs)
        for k in theirs:
            close(ours[k], theirs[k])
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            close(a, b)
    elif isinstance(theirs, (float, np.floating)):
        assert isinstance(ours, float) and ours == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
    else:
        assert ours == theirs


# ------------------------------------------------------------------------------------------------ against transformers
@pytest.mark.torch
def test_text_classification_matches_transformers(checkpoints):
    theirs = transformers_pipeline("text-classification", checkpoints["cls"])
    ours = pipeline("sentiment-analysis", checkpoints["cls"])
    for text in TEXTS + [{"text": "the old mill", "text_pair": "Paris is the capital"}]:
        close(ours(text), theirs(text))
        for kwargs in ({"top_k": None}, {"top_k": 2}, {"top_k": 1}, {"function_to_apply": "sigmoid"},
                       {"top_k": None, "function_to_apply": "none"}):
            close(ours(text, **kwargs), theirs(text, **kwargs))
    close(ours(TEXTS, batch_size=2), [theirs(t)[0] for t in TEXTS])


@pytest.mark.torch
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(checkpoints, strategy):
    theirs = transformers_pipeline("token-classification", checkpoints["ner"])
    ours = pipeline("ner", checkpoints["ner"], aggregation_strategy=strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' "fallback heuristic" note for byte-level BPE words
        expected = [theirs(t, aggregation_strategy=strategy) for t in TEXTS]
        unfiltered = theirs(TEXTS[1], aggregation_strategy=strategy, ignore_labels=[])
    assert any(expected)  # the random head does find entities
    for text, want in zip(TEXTS, expected):
        close(ours(text), want)
    close(ours(TEXTS, batch_size=2), expected)
    close(ours(TEXTS[1], ignore_labels=[]), unfiltered)


@pytest.mark.torch
def test_feature_extraction_matches_transformers(checkpoints):
    theirs = transformers_pipeline("feature-extraction", checkpoints["mlm"])
    ours = pipeline("feature-extraction", checkpoints["mlm"])
    for text in TEXTS:
        np.testing.assert_allclose(np.array(ours(text)), np.array(theirs(text)), atol=1e-5)
    for got, text in zip(ours(TEXTS, batch_size=3), TEXTS):
        np.testing.assert_allclose(np.array(got), np.array(theirs(text)), atol=1e-5)


def qa_reference_4x(folder, question, context, *, max_seq_len, doc_stride, top_k=1, max_answer_len=15,
                    handle_impossible_answer=False):
    """transformers 4.x's QuestionAnsweringPipeline, written out: transformers' fast tokenizer makes the windows,
    transformers' model the logits; spans by brute force over (start, end)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.YosoForQuestionAnswering.from_pretrained(str(folder)).eval()
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    answers, null = [], 1e6
    for w, ids in enumerate(enc["input_ids"]):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        start, end = out.start_logits[0].numpy().astype(np.float64), out.end_logits[0].numpy().astype(np.float64)
        seq = enc.sequence_ids(w)
        ok = np.array([s == 1 or i == tok.cls_token_id for s, i in zip(seq, ids)])
        ps = np.exp(np.where(ok, start, -1e4) - np.where(ok, start, -1e4).max())
        ps /= ps.sum()
        pe = np.exp(np.where(ok, end, -1e4) - np.where(ok, end, -1e4).max())
        pe /= pe.sum()
        null = min(null, ps[0] * pe[0])
        ps[0] = pe[0] = 0.0
        spans = sorted(((ps[s] * pe[e], s, e) for s in range(len(ids)) for e in range(s, min(len(ids), s +
                        max_answer_len)) if ok[s] and ok[e]), key=lambda x: -x[0])[:top_k]
        encoding = enc.encodings[w]
        for score, s, e in spans:
            begin = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
            finish = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            same = [a for a in answers if a["answer"].lower() == context[begin:finish].lower()]
            if same:
                same[0]["score"] += score
            else:
                answers.append({"score": score, "start": begin, "end": finish, "answer": context[begin:finish]})
    if handle_impossible_answer:
        answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda a: -a["score"])[:top_k]
    return answers[0] if len(answers) == 1 else answers


@pytest.mark.torch
def test_question_answering_matches_transformers_4x(checkpoints):
    qa = pipeline("question-answering", checkpoints["qa"])
    question = "What is the capital of France?"
    for kwargs in ({"max_seq_len": 64, "doc_stride": 16}, {"max_seq_len": 40, "doc_stride": 10, "top_k": 3},
                   {"max_seq_len": 64, "doc_stride": 30, "top_k": 2, "handle_impossible_answer": True},
                   {"max_seq_len": 48, "doc_stride": 8, "max_answer_len": 3}):
        want = qa_reference_4x(checkpoints["qa"], question, CONTEXT, **kwargs)
        got = qa(question=question, context=CONTEXT, **kwargs)
        close(got, want)
    both = qa([{"question": question, "context": CONTEXT}, {"question": "Where?", "context": "In the mill."}],
              max_seq_len=40, doc_stride=10, batch_size=3)
    close(both[0], qa_reference_4x(checkpoints["qa"], question, CONTEXT, max_seq_len=40, doc_stride=10))
    close(both[1], qa_reference_4x(checkpoints["qa"], "Where?", "In the mill.", max_seq_len=40, doc_stride=10))


# ------------------------------------------------------------------------------------------------ without torch
def test_batches_are_sorted_by_length_and_results_in_input_order(checkpoints):
    clf = pipeline("text-classification", checkpoints["cls"], batch_size=2)
    widths = []
    forward = clf.forward

    def spy(batch, lengths, **options):
        widths.append((batch["input_ids"].shape[1], sorted(lengths.tolist())))
        return forward(batch, lengths, **options)

    clf.forward = spy
    texts = TEXTS * 3
    got = clf(texts, top_k=None)
    lengths = sorted(len(clf.tokenizer.encode(t)) for t in texts)
    assert [w for w, _ in widths] == [max(lengths[i:i + 2]) for i in range(0, len(texts), 2)]
    assert all(width == max(rows) for width, rows in widths)  # each batch pads to its own longest row
    alone = [clf(t, top_k=None) for t in texts]
    close(got, alone)
    widths.clear()
    unsorted = clf.run(clf.tokenize(texts), sort=False, batch_size=4)
    assert [w for w, _ in widths][0] == max(len(clf.tokenizer.encode(t)) for t in texts[:4])
    for a, b in zip(unsorted, clf.run(clf.tokenize(texts))):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert clf([]) == [] and isinstance(clf, Pipeline)


def test_text_classification_outputs_and_functions(checkpoints, tmp_path):
    clf = pipeline("text-classification", checkpoints["cls"])
    one = clf("the old mill")
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    assert len(clf(["a", "b"])) == 2 and isinstance(clf(["a", "b"])[0], dict)
    everything = clf("the old mill", top_k=None)
    assert [d["label"] for d in everything] == sorted((d["label"] for d in everything),
                                                      key=lambda l: -next(x["score"] for x in everything
                                                                          if x["label"] == l))
    assert sum(d["score"] for d in everything) == pytest.approx(1.0)
    assert everything[0] == one[0] and clf("the old mill", top_k=2) == everything[:2]
    assert isinstance(clf({"text": "a", "text_pair": "b"}), dict)
    assert [len(r) for r in clf(["a", "b"], top_k=1)] == [1, 1]
    for problem_type, num_labels, expected in (("regression", 1, "none"), ("multi_label_classification", 3,
                                                                           "sigmoid"), (None, 1, "sigmoid")):
        model = YosoForSequenceClassification(YosoConfig(**SIZE, num_labels=num_labels, problem_type=problem_type))
        p = pipeline("text-classification", model, tokenizer=FIXTURE)
        assert p.default_function() == expected
    with pytest.raises(ValueError, match="function_to_apply must be one of"):
        clf("a", function_to_apply="tanh")
    with pytest.raises(ValueError, match="top_k must be a positive int, got 0"):
        clf("a", top_k=0)
    with pytest.raises(ValueError, match=r"inputs\[1\] must be a dict with a 'text'"):
        clf(["a", {"txt": "b"}])
    with pytest.raises(TypeError, match=r"inputs\[0\]: text_pair must be a str, got int"):
        clf({"text": "a", "text_pair": 3})
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than the limit of 64"):
        clf(["a", "the river " * 40])
    assert len(clf(["a", "the river " * 40], truncation=True)) == 2


def test_task_needs_its_checkpoint_class(checkpoints):
    with pytest.raises(TypeError, match="text-classification needs a YosoForSequenceClassification checkpoint, "
                                        "but .* holds a YosoForMaskedLM"):
        pipeline("text-classification", checkpoints["mlm"])
    with pytest.raises(TypeError, match="question-answering needs a YosoForQuestionAnswering, got YosoForMaskedLM"):
        pipeline("question-answering", YosoForMaskedLM.from_pretrained(checkpoints["mlm"]), tokenizer=FIXTURE)
    with pytest.raises(ValueError, match="aggregation_strategy must be one of"):
        pipeline("ner", checkpoints["ner"], aggregation_strategy="longest")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        pipeline("ner", checkpoints["ner"], batch_size=0)
    assert type(pipeline("ner", checkpoints["ner"])).task == "token-classification"


def test_token_classification_offsets_and_groups(checkpoints):
    ner = pipeline("token-classification", checkpoints["ner"])
    text = TEXTS[1]
    tokens = ner(text, ignore_labels=[])
    assert [t["index"] for t in tokens] == list(range(1, len(ner.tokenizer.encode(text)) - 1))
    for t in tokens:  # character spans: the token's own text, without the space a byte-level token carries
        assert text[t["start"]:t["end"]] == ner.tokenizer.convert_tokens_to_string([t["word"]]).strip()
    words = ner(text, aggregation_strategy="first", ignore_labels=[])
    assert "".join(text[w["start"]:w["end"]] for w in words).replace(" ", "") == text.replace(" ", "")
    for w in words:
        assert w["entity_group"] in {"PER", "LOC", "O"} and text[w["start"]:w["end"]].strip() in w["word"]


def test_question_answering_windows_and_arguments(checkpoints):
    qa = pipeline("question-answering", checkpoints["qa"])
    long_context = " ".join([CONTEXT] * 4)
    windows = qa.tokenizer.encodings(["Where?"], [long_context], truncation="only_second", max_length=40, stride=10)
    assert len(windows[0].overflowing) >= 3  # the context needs several windows
    out = qa(question="Where?", context=long_context, max_seq_len=40, doc_stride=10, top_k=3)
    assert isinstance(out, list) and len(out) == 3
    for a in out:
        assert set(a) == {"score", "start", "end", "answer"} and a["answer"] == long_context[a["start"]:a["end"]]
        assert 0 < a["score"] <= 1 + 1e-9
    assert [a["score"] for a in out] == sorted((a["score"] for a in out), reverse=True)
    best = qa(question="Where?", context=long_context, max_seq_len=40, doc_stride=10)
    assert isinstance(best, dict) and best["score"] <= out[0]["score"]  # top_k spans per window add up
    with_null = qa(question="Where?", context="In the mill.", handle_impossible_answer=True, top_k=5)
    assert any(a["answer"] == "" and a["start"] == a["end"] == 0 for a in with_null)
    many = qa(question=["Where?", "Who?"], context="In the mill.")
    assert len(many) == 2
    close(many[0], qa({"question": "Where?", "context": "In the mill."}))
    short = qa(question="Where?", context=long_context, max_seq_len=40, doc_stride=10, max_answer_len=1,
               align_to_words=False, top_k=4)
    for a in short:  # one token each
        assert len(qa.tokenizer.encode(a["answer"], add_special_tokens=False)) <= 2
    for kwargs, message in (({"doc_stride": 50, "max_seq_len": 40}, "doc_stride must be in \\[0, max_seq_len=40\\]"),
                            ({"max_answer_len": 0}, "max_answer_len must be a positive int"),
                            ({"max_seq_len": 65}, "max_seq_len must be at most the model's limit of 64")):
        with pytest.raises(ValueError, match=message):
            qa(question="Where?", context="In the mill.", **kwargs)
    with pytest.raises(ValueError, match=r"inputs\[0\]\['context'\] must not be empty"):
        qa(question="Where?", context="")
    with pytest.raises(ValueError, match=r"text 1 has a question of \d+ tokens, which leaves -?\d+ of the "
                                         r"40-token window to the context, not more than doc_stride=10"):
        qa(question=["Where?", "where is the old mill " * 4], context="In the mill.", max_seq_len=40, doc_stride=10)
    with pytest.raises(ValueError, match="needs question= and context="):
        qa(question="Where?")
    with pytest.raises(ValueError, match="question and context must have the same length"):
        qa(question=["a", "b"], context=["c"])


def test_feature_extraction_pooling(checkpoints):
    embed = pipeline("feature-extraction", checkpoints["mlm"])
    tokens = [np.array(embed(t))[0] for t in TEXTS]
    mean = embed(TEXTS, pooling="mean", return_tensors=True, batch_size=2)
    for got, full in zip(mean, tokens):
        assert got.shape == (32,)
        np.testing.assert_allclose(got, full.mean(axis=0), rtol=1e-5, atol=1e-6)
    cls = embed(TEXTS, pooling="cls")
    for got, full in zip(cls, tokens):
        assert isinstance(got, list) and len(got) == 32
        np.testing.assert_allclose(got, full[0], rtol=1e-5, atol=1e-6)
    unit = embed(TEXTS[1], pooling="mean", normalize=True)
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(unit, tokens[1].mean(0) / np.linalg.norm(tokens[1].mean(0)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed("a", pooling="max")
