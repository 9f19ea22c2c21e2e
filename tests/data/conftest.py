"""Shared fixtures: a tiny real SentencePiece tokenizer trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus_factory import make_documents, write_txt


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from hope_mega.data.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = write_txt(root / "corpus.txt", make_documents(400, seed=123))
    out = root / "tokenizer"
    train_tokenizer([str(corpus)], out, vocab_size=400, sample_sentences=100_000, num_threads=2)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from hope_mega.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)
