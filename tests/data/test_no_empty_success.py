"""Inputs with nothing to learn from are errors that say so, and leave no half-made output."""

from __future__ import annotations

import os

import pytest
from corpus_factory import make_documents, write_txt

from hope_mega.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "sentences_" not in err[0]
    return err[0]


@pytest.mark.parametrize("content", ["empty", "random"])
def test_prep_of_a_file_with_no_text_is_an_error_and_writes_nothing(tmp_path, tokenizer_dir, capsys, content):
    corpus = tmp_path / "corpus.txt"
    # Random bytes: blank-line-separated "documents", each with invalid UTF-8 somewhere.
    corpus.write_bytes(b"" if content == "empty" else os.urandom(64 << 10))
    out = tmp_path / "out"
    assert main(["prep", "--tokenizer", str(tokenizer_dir), "--input", str(corpus), "--output", str(out),
                 "--seq-len", "31", "--workers", "1", "--quiet"]) == 1
    line = _one_error_line(capsys)
    if content == "empty":
        assert line == f"error: {out}: nothing written: no text in the inputs (1 input file(s), 0 bytes): every document is empty"
    else:
        assert line.startswith(f"error: {out}: nothing written: no usable text in the inputs (1 input file(s), 65,536 bytes): all ")
        assert f"records were skipped, the first at {corpus}:line 1: undecodable bytes (invalid UTF-8" in line
    assert not out.exists()


def test_prep_into_an_existing_folder_leaves_it_as_it_was(tmp_path, tokenizer_dir, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["prep", "--tokenizer", str(tokenizer_dir), "--input", str(corpus), "--output", str(out),
                 "--seq-len", "31", "--workers", "1", "--quiet"]) == 1
    _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == [".prep.lock"]


def test_prep_whose_every_document_went_to_val_says_so(tmp_path, tokenizer_dir, capsys):
    corpus = write_txt(tmp_path / "small.txt", make_documents(3, seed=5))
    out = tmp_path / "out"
    assert main(["prep", "--tokenizer", str(tokenizer_dir), "--input", str(corpus), "--output", str(out),
                 "--seq-len", "31", "--workers", "1", "--split-val", "0.999999", "--quiet"]) == 1
    line = _one_error_line(capsys)
    assert "nothing written: all 3 documents went to the val split" in line and "--split-val 0.999999" in line
    assert not out.exists()


def test_tokenizer_on_an_empty_corpus_says_so_and_leaves_no_folder(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n   \n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--output", str(out), "--vocab-size", "300"]) == 1
    line = _one_error_line(capsys)
    assert line == "error: no text to train on (1 input file(s), 6 bytes): 0 documents read, 0 records skipped, no non-blank line"
    assert not out.exists()


def test_tokenizer_vocab_larger_than_the_text_supports_says_so(tmp_path, capsys):
    corpus = write_txt(tmp_path / "tiny.txt", ["one two three four five six", "seven eight nine"])
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--output", str(out), "--vocab-size", "4096"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith("error: --vocab-size 4096 is more than this text can fill (1 input file(s), ")
    limit = int(line.split("give at most ")[1].split(" pieces")[0])
    assert 260 < limit < 4096
    assert line.endswith("use a smaller --vocab-size or more text")
    assert not out.exists()
    # The limit it names is one that works.
    assert main(["tokenizer", "train", "--input", str(corpus), "--output", str(out), "--vocab-size", str(limit)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.model", "tokenizer.vocab", "tokenizer_card.json"]
