"""Shard compression: prep's default shards are read in place, with nothing written into the
dataset folder; a zstd dataset read from a shared folder is decompressed by the loader, safely
when several processes (the local leaders of several nodes) do it at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus_factory import make_documents, write_txt

from hope_mega.data.loader import LoaderError, build_train_loader, decompress_missing_shards, read_rows
from hope_mega.data.prep import PrepConfig, run_prep

SEQ_LEN = 15
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compression")
    return write_txt(tmp / "docs.txt", make_documents(400, seed=5, max_words=80))


def prep(corpus: Path, tokenizer_dir, out: Path, compression: str) -> Path:
    # Small shards, so that a split has many and concurrent readers meet on each of them.
    run_prep(PrepConfig(tokenizer=str(tokenizer_dir), inputs=[str(corpus)], output=str(out), seq_len=SEQ_LEN,
                        workers=1, split_val=0, shard_mb=0.004, compression=compression, quiet=True))
    return out


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_default_shards_are_uncompressed_and_training_reads_them_in_place(corpus, tokenizer_dir, tmp_path):
    out = prep(corpus, tokenizer_dir, tmp_path / "plain", "none")
    index = json.loads((out / "train" / "index.json").read_text())
    assert len(index["shards"]) > 5
    assert all(s["compression"] is None and s["zip_data"] is None for s in index["shards"])
    assert json.loads((out / "dataset_card.json").read_text())["compression"] == "none"
    before = files(out)
    loader = build_train_loader([str(out)], None, seq_len=SEQ_LEN, micro_batch=2, global_batch=2, dp_rank=0, dp_size=1, seed=0)
    n = sum(1 for _ in zip(range(50), loader))
    assert n == 50
    assert files(out) == before


def test_concurrent_decompression_of_a_zstd_dataset_is_safe(corpus, tokenizer_dir, tmp_path):
    plain = prep(corpus, tokenizer_dir, tmp_path / "plain", "none")
    packed = prep(corpus, tokenizer_dir, tmp_path / "zstd", "zstd")
    index = json.loads((packed / "train" / "index.json").read_text())
    shards = [s["raw_data"]["basename"] for s in index["shards"]]
    assert len(shards) > 5 and all(s["zip_data"] for s in index["shards"])
    assert not any((packed / "train" / s).exists() for s in shards)
    sequential = tmp_path / "sequential"
    shutil.copytree(packed, sequential)
    assert decompress_missing_shards(str(sequential / "train")) == len(shards)

    # Four processes start together on the same folder, as the local leaders of four nodes would.
    go = tmp_path / "go"
    script = (f"import os, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
              "from hope_mega.data.loader import decompress_missing_shards\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
              f"print(decompress_missing_shards({str(packed / 'train')!r}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    time.sleep(1.0)  # let every process import and reach the wait
    go.touch()
    written = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        written.append(int(out.split()[-1]))
    assert 0 < sum(written) and max(written) <= len(shards)
    for s in shards:
        assert (packed / "train" / s).read_bytes() == (sequential / "train" / s).read_bytes()
    assert not list(packed.rglob("*.tmp"))
    assert decompress_missing_shards(str(packed / "train")) == 0
    assert (read_rows(str(packed)) == read_rows(str(plain))).all()


def test_a_damaged_zstd_shard_is_named(corpus, tokenizer_dir, tmp_path):
    packed = prep(corpus, tokenizer_dir, tmp_path / "zstd", "zstd")
    index = json.loads((packed / "train" / "index.json").read_text())
    victim = packed / "train" / index["shards"][2]["zip_data"]["basename"]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(LoaderError, match=str(victim)):
        decompress_missing_shards(str(packed / "train"))
