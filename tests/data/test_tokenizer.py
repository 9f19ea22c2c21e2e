"""`hope-mega tokenizer train` and `load_tokenizer`: real SentencePiece models on tiny corpora."""

from __future__ import annotations

import hashlib
import json

import pytest

from hope_mega.cli import main
from hope_mega.data.tokenizer import TokenizerError, load_tokenizer

from corpus_factory import make_documents, write_jsonl, write_txt


def test_cli_writes_model_vocab_and_card(tmp_path):
    corpus = write_txt(tmp_path / "a.txt", make_documents(200, seed=1))
    extra = write_jsonl(tmp_path / "b.jsonl", make_documents(50, seed=2))
    out = tmp_path / "tok"
    rc = main(["tokenizer", "train", "--input", str(tmp_path / "*.txt"), str(extra),
               "--vocab-size", "380", "--output", str(out)])
    assert rc == 0
    card = json.loads((out / "tokenizer_card.json").read_text())
    assert card["vocab_size"] == 380
    assert card["hash"] == hashlib.sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    assert card["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
    assert [i["path"] for i in card["inputs"]] == [str(corpus), str(extra)]
    assert card["documents_read"] == 250
    assert card["options"]["byte_fallback"] is True and card["options"]["split_digits"] is True
    vocab_lines = (out / "tokenizer.vocab").read_text().splitlines()
    assert len(vocab_lines) == 380
    tok = load_tokenizer(out)
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (380, 0, 1, 2, 3)
    assert tok.hash == card["hash"]
    assert [tok.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]


def test_encode_decode_is_lossless_with_byte_fallback_and_split_digits(tokenizer):
    text = "  The river 2024 über  东京🦜\n\tindent  x=1 {a: b}  "
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_id not in ids  # unseen characters become byte pieces, not <unk>
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert not [p for p in pieces if not p.startswith("<0x") and sum(c.isdigit() for c in p) > 1]
    digit_pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("year 2024")]
    assert [sum(c.isdigit() for c in p) for p in digit_pieces if any(c.isdigit() for c in p)] == [1] * 4


def test_hash_tracks_the_model(tmp_path, tokenizer_dir):
    corpus = write_txt(tmp_path / "a.txt", make_documents(200, seed=5))
    args = ["tokenizer", "train", "--input", str(corpus), "--vocab-size"]
    assert main(args + ["360", "--output", str(tmp_path / "a")]) == 0
    assert main(args + ["360", "--output", str(tmp_path / "b")]) == 0
    assert main(args + ["370", "--output", str(tmp_path / "c")]) == 0
    h = {k: load_tokenizer(tmp_path / k).hash for k in "abc"}
    assert h["a"] == h["b"]  # training is deterministic for a seed
    assert h["a"] != h["c"]
    card_c = json.loads((tmp_path / "c" / "tokenizer_card.json").read_text())
    assert card_c["hash"] == h["c"]
    # Replacing the model file changes the hash the loader reports, whatever the card says.
    (tmp_path / "a" / "tokenizer.model").write_bytes((tmp_path / "c" / "tokenizer.model").read_bytes())
    assert load_tokenizer(tmp_path / "a").hash == h["c"]


def test_sample_sentences_bounds_the_lines_used(tmp_path):
    corpus = write_txt(tmp_path / "a.txt", make_documents(300, seed=7))
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "350",
                 "--sample-sentences", "120", "--output", str(out)]) == 0
    card = json.loads((out / "tokenizer_card.json").read_text())
    assert card["lines_seen"] > 400
    assert card["lines_sampled"] == 120
    assert card["options"]["input_sentence_size"] == 120


def test_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(TokenizerError, match=str(tmp_path / "nope")):
        load_tokenizer(tmp_path / "nope")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing*.txt"),
                 "--output", str(tmp_path / "t")]) == 1
    assert "no input files match" in capsys.readouterr().err
    write_txt(tmp_path / "a.txt", ["hello world"])
    assert main(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "100",
                 "--output", str(tmp_path / "t")]) == 2
    assert "--vocab-size 100" in capsys.readouterr().err
