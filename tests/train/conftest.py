"""A tiny prepared dataset for `hope-mega train` runs."""

import json

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 512-token tokenizer and 32-token rows from 150 chapters of the built-in corpus."""
    from hope_mega.cli import main
    from hope_mega.data.default_corpus import iter_chapters

    root = tmp_path_factory.mktemp("tiny_data")
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, doc in zip(range(150), iter_chapters()):
            f.write(json.dumps(doc) + "\n")
    assert main(["tokenizer", "train", "--input", str(corpus), "--output", str(root / "tok"), "--vocab-size", "512"]) == 0
    assert main(["prep", "--tokenizer", str(root / "tok"), "--input", str(corpus), "--output", str(root / "data"),
                 "--seq-len", "32", "--workers", "1", "--split-val", "0.02", "--quiet"]) == 0
    return root

