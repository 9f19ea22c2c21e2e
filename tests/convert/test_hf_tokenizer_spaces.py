"""The exported Hugging Face tokenizer encodes and decodes exactly as the SentencePiece model it was
made from, on text with leading, trailing and repeated whitespace (transformers' own Llama
conversion drops the first `▁` of a text that starts with a space)."""

import pytest

STRINGS = [
    "river engine", " river", "  river", "   ", " ", "", "river ", "river  ", "a  b   c", " a b ",
    "\n river", " \n river", "\t tab", "river\n\n  garden", "  über café 東京 42  ", "x</s>y", "<s> start",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    from hope_mega.convert.export import _tokenizer_files
    from hope_mega.data.tokenizer import load_tokenizer
    from hope_mega.data.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("hf_tok")
    words = "river mountain engine signal memory token layer garden window über café 東京 42 3.14".split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(lines) + "\n")
    train_tokenizer([str(root / "corpus.txt")], root / "tok", vocab_size=320, num_threads=1)
    (root / "hf").mkdir()
    _tokenizer_files(root / "tok", root / "hf", 320)
    return load_tokenizer(root / "tok"), AutoTokenizer.from_pretrained(root / "hf")


@pytest.mark.parametrize("text", STRINGS)
def test_round_trip_equals_sentencepiece(tokenizers, text):
    sp, hf = tokenizers
    ids = hf(text, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(text)
    assert hf.decode(ids) == sp.decode(ids) == text


def test_batch_encoding_equals_one_by_one(tokenizers):
    sp, hf = tokenizers
    assert hf(STRINGS, add_special_tokens=False)["input_ids"] == [sp.encode(t) for t in STRINGS]
