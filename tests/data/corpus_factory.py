"""Generated corpora in every input format, for the data tests."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

WORDS = (
    "the of and to in is was for on that with as by at from this be are an or it which "
    "river mountain engine signal memory token layer garden window market theory number "
    "quickly slowly north south über café naïve 東京 данные 42 2024 3.14 x=1 {a: b}"
).split()


def make_documents(n: int, seed: int, min_words: int = 3, max_words: int = 120) -> list[str]:
    """Documents of random words; some have inner single newlines (paragraph lines)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(1, 3)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))))
        docs.append("\n".join(lines))
    return docs


def write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(d + "\n\n" for d in docs), encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    data = "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, docs: list, field: str = "text", row_group_size: int = 50) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({field: pa.array(docs, pa.string()), "score": list(range(len(docs)))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


