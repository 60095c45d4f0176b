"""Write the tiny RoBERTa-style tokenizer under tests/fixtures/tokenizer/ (needs only the `tokenizers` library).

    python tests/make_tokenizer_fixture.py

A byte-level BPE trained on the short text below, laid out as RoBERTa's tokenizer is: `<s>`, `<pad>`, `</s>`,
`<unk>` at ids 0..3, the 256 byte symbols, the merges, and `<mask>` as the last id (lstrip=True, so the space
before it belongs to it). The same tokenizer is written twice, as tokenizer.json and as vocab.json + merges.txt,
with special_tokens_map.json and tokenizer_config.json beside them; the tests copy the files they need.
"""
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FOLDER = Path(__file__).parent / "fixtures" / "tokenizer"
VOCAB_SIZE = 320  # including <mask>
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MASK = "<mask>"

TEXT = """
The river runs past the old mill and the mill wheel turns all day. In the morning the baker walks to the
mill to buy flour, and in the evening he walks back home with bread for the village. The village has a
small school, a church with a tall tower, a market on the square and a bridge over the river. Children
play by the water while their parents work in the fields. When the rain comes the river grows wide and
brown, and the farmers watch the sky. When the sun comes back the fields turn green again and the
children return to the water. Paris is the capital of France. Rome is the capital of Italy. Berlin is the
capital of Germany. Madrid is the capital of Spain. The capital of a country is often its largest city,
but not always. A model reads a sentence and predicts the word that is hidden behind the mask. It learns
from many sentences, one word at a time, and it gets better with every pass over the data. The attention
of the model looks at every word in the sentence and decides which words matter for the hidden one.
Sampling a few hash codes is enough to estimate the attention, so the cost grows linearly with the length
of the sequence and not with its square. This is why the model can read long documents of four thousand
tokens on a single card. Numbers such as 1, 2, 3, 10, 42 and 2021 appear in text too, as do dates like
12 May 2021 and prices like 3.50 euros. Some words are rare: zephyr, quixotic, jukebox, xylophone. Others
are common: the, a, of, and, to, in, is, it, that, was, he, she, they, we, you. Good tokenizers split
rare words into pieces and keep common words whole. The quick brown fox jumps over the lazy dog. The lazy
dog sleeps in the sun by the door of the house. A cat sits on the wall and looks at the birds in the
tree. The birds sing in the morning and fly away in the evening. She reads a book about the sea, the
ships and the sailors who crossed it long ago. He writes a letter to his friend in the city and tells
her about the village, the river, the mill and the market. They meet on the bridge at noon, talk about
the weather and walk to the square for lunch. We like the summer because the days are long and warm.
You like the winter because the nights are long and the snow is white. Café, naïve and Zürich carry
accents; emoji like 🙂 are bytes the model has never seen as a whole.
"""


def build():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 1, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line for line in TEXT.splitlines() if line], trainer=trainer)
    tok.add_special_tokens([AddedToken(MASK, lstrip=True, rstrip=False, normalized=False, special=True)])
    assert tok.token_to_id(MASK) == tok.get_vocab_size() - 1 == VOCAB_SIZE - 1
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok


def main():
    FOLDER.mkdir(parents=True, exist_ok=True)
    tok = build()
    tok.save(str(FOLDER / "tokenizer.json"))

    model = json.loads(tok.to_str())["model"]
    vocab = tok.get_vocab(with_added_tokens=True)
    (FOLDER / "vocab.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                                                  ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (FOLDER / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    mask = {"content": MASK, "lstrip": True, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": mask,
                   "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    (FOLDER / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512, "add_prefix_space": False,
              "trim_offsets": True, "errors": "replace"}
    (FOLDER / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in FOLDER.iterdir())
    print(f"wrote {FOLDER} ({total} bytes, vocab {tok.get_vocab_size()}, {len(merges)} merges)")


if __name__ == "__main__":
    main()
