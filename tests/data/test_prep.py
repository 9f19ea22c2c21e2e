"""`hope-mega prep`: exact round trip, bad input, resume after kill -9, refusal of foreign outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from corpus_factory import make_documents, write_jsonl, write_parquet, write_txt

from hope_mega.cli import main
from hope_mega.data.loader import read_dataset_card, read_rows
from hope_mega.data.prep import PrepConfig, PrepError, is_validation_document, run_prep
from hope_mega.data.readers import InputError, UnitReader, expand_inputs, plan_units

SEQ_LEN = 31


def make_corpus(root: Path) -> dict[str, list[str]]:
    """One file per format plus a JSONL file full of bad records; returns each file's good docs
    in file order (what prep must write, in that order)."""
    root.mkdir(parents=True, exist_ok=True)
    good = {}
    docs = make_documents(60, seed=10)
    good[str(write_txt(root / "a.txt", docs))] = docs
    docs = make_documents(40, seed=11)
    good[str(write_jsonl(root / "b.jsonl", docs))] = docs
    docs = make_documents(30, seed=12)
    good[str(write_jsonl(root / "c.jsonl.gz", docs))] = docs
    docs = make_documents(30, seed=13)
    good[str(write_jsonl(root / "d.jsonl.zst", docs))] = docs
    docs = make_documents(120, seed=14)
    good[str(write_parquet(root / "e.parquet", docs, row_group_size=25))] = docs
    bad_lines = [
        json.dumps({"text": "fine document one"}).encode(),
        b"{not json",
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": ""}).encode(),
        b'{"text": "bad \xff\xfe bytes"}',
        json.dumps({"text": 17}).encode(),
        json.dumps({"text": "fine document two"}).encode(),
    ]
    (root / "f_bad.jsonl").write_bytes(b"\n".join(bad_lines) + b"\n")
    good[str(root / "f_bad.jsonl")] = ["fine document one", "fine document two"]
    return good


BAD_LOG = [
    ("f_bad.jsonl", 2, "not JSON"),
    ("f_bad.jsonl", 3, "no field 'text'"),
    ("f_bad.jsonl", 4, "empty document"),
    ("f_bad.jsonl", 5, "undecodable bytes"),
    ("f_bad.jsonl", 6, "field 'text' is int, not a string"),
]


def expected_stream(tokenizer, good: dict[str, list[str]], split="train", split_val=0.0):
    ids = []
    for path in sorted(good):
        for doc in good[path]:
            if is_validation_document(doc, split_val) == (split == "val"):
                ids += tokenizer.encode(doc) + [tokenizer.eos_id]
    return np.array(ids, dtype=np.int64)


def flat_tokens(out: Path, split: str, card: dict) -> np.ndarray:
    rows = read_rows(str(out), split).astype(np.int64)
    assert rows.shape[1] == SEQ_LEN + 1
    flat = rows.reshape(-1)
    pad = card["splits"][split]["padding_tokens"]
    assert pad < SEQ_LEN + 1
    assert (flat[flat.size - pad:] == card["pad_id"]).all()
    return flat[: flat.size - pad]


def prep(tokenizer_dir, inputs, out, **kw) -> dict:
    cfg = dict(seq_len=SEQ_LEN, workers=1, split_val=0.0, chunk_mb=0.004, quiet=True)
    cfg.update(kw)
    return run_prep(PrepConfig(tokenizer=str(tokenizer_dir), inputs=[str(i) for i in inputs],
                               output=str(out), **cfg))


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip_all_formats_with_a_bad_file(tmp_path, tokenizer_dir, tokenizer, workers):
    good = make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    card = prep(tokenizer_dir, [tmp_path / "in"], out, workers=workers)
    expected = expected_stream(tokenizer, good)
    assert np.array_equal(flat_tokens(out, "train", card), expected)
    assert card["tokens_written"] == expected.size
    n_good = sum(map(len, good.values()))
    assert card["documents_written"] == n_good
    assert card["documents_skipped"] == len(BAD_LOG)
    assert card["documents_read"] == n_good + len(BAD_LOG)
    assert card["splits"]["train"]["rows"] == -(-expected.size // (SEQ_LEN + 1))
    assert card["splits"]["train"]["parts"] == workers
    assert card["tokenizer_hash"] == tokenizer.hash and card["eos_id"] == tokenizer.eos_id
    log = (out / "skipped.log").read_text().splitlines()
    assert len(log) == len(BAD_LOG)
    for line, (name, lineno, reason) in zip(log, BAD_LOG):
        assert line.startswith(f"{tmp_path / 'in' / name}:line {lineno}: {reason}")
    assert not (out / ".prep").exists()
    # Rows do not depend on the worker count, only their spread over part folders does.
    if workers == 2:
        one = tmp_path / "one"
        prep(tokenizer_dir, [tmp_path / "in"], one, workers=1)
        assert np.array_equal(read_rows(str(one)), read_rows(str(out)))


def test_val_split_is_deterministic_and_disjoint(tmp_path, tokenizer_dir, tokenizer):
    good = make_corpus(tmp_path / "in")
    card = prep(tokenizer_dir, [tmp_path / "in"], tmp_path / "out", workers=2, split_val=0.25)
    for split in ("train", "val"):
        assert np.array_equal(flat_tokens(tmp_path / "out", split, card),
                              expected_stream(tokenizer, good, split, 0.25))
    docs = [d for ds in good.values() for d in ds]
    n_val = sum(is_validation_document(d, 0.25) for d in docs)
    assert card["splits"]["val"]["documents"] == n_val and 0.15 < n_val / len(docs) < 0.35
    assert card["splits"]["train"]["documents"] == len(docs) - n_val


def test_text_files_cut_into_units_keep_documents_and_line_numbers(tmp_path):
    text = b"\n\n  first doc\nline two\n\n\n \t \nsecond\n\n" + b"bad \xff byte\n\n" + b"xy z\n\n" * 300
    path = tmp_path / "a.txt"
    path.write_bytes(text + b"\n\nlast doc\n")
    whole = [d for u in plan_units([path], 1 << 30, "text") for d in UnitReader(u).documents()]
    units = plan_units([path], 100, "text")
    assert len(units) > 10 and units[-1].stop == path.stat().st_size
    readers = [UnitReader(u) for u in units]
    cut = [d for r in readers for d in r.documents()]
    assert cut == whole
    assert whole[:2] == ["first doc\nline two", "second"] and whole[-1] == "last doc"
    assert readers[0].skipped == [(10, "undecodable bytes (invalid UTF-8 at byte 4 of the document)")]


def test_truncated_compressed_file_is_an_error_and_work_is_kept(tmp_path, tokenizer_dir, tokenizer, capsys):
    good = make_corpus(tmp_path / "in")
    gz = tmp_path / "in" / "c.jsonl.gz"
    full = gz.read_bytes()
    gz.write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    args = ["prep", "--tokenizer", str(tokenizer_dir), "--input", str(tmp_path / "in"),
            "--output", str(out), "--seq-len", str(SEQ_LEN), "--workers", "2",
            "--split-val", "0", "--chunk-mb", "0.004"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{gz}: compressed data is truncated or corrupt" in err
    kept = list((out / ".prep" / "units").glob("*.json"))
    n_units = len(plan_units(expand_inputs([str(tmp_path / "in")]), int(0.004 * 2**20), "text"))
    assert len(kept) == n_units - 1
    assert not (out / "dataset_card.json").exists()
    zst = tmp_path / "in" / "d.jsonl.zst"
    zst_full = zst.read_bytes()
    zst.write_bytes(zst_full[:-7])
    with pytest.raises(InputError, match="d.jsonl.zst: compressed data is truncated"):
        list(UnitReader(plan_units([zst], 1 << 20, "text")[0]).documents())
    zst.write_bytes(zst_full)
    gz.write_bytes(full)  # the user replaces the file and reruns the same command
    assert main(args) == 0
    # Both rewritten files (the .gz and the .zst above) are new content: encoded again.
    assert f"{n_units - 2} already done" in capsys.readouterr().err
    card = read_dataset_card(out)
    assert np.array_equal(flat_tokens(out, "train", card), expected_stream(tokenizer, good))


def test_parquet_without_the_column_is_refused_before_any_work(tmp_path, tokenizer_dir, capsys):
    write_txt(tmp_path / "a.txt", ["one doc"])
    write_parquet(tmp_path / "p.parquet", ["x", "y"], field="content")
    rc = main(["prep", "--tokenizer", str(tokenizer_dir), "--input", str(tmp_path / "a.txt"),
               str(tmp_path / "p.parquet"), "--output", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.parquet'}: parquet file has no column 'text' (columns: content, score)" in err
    assert not (tmp_path / "out" / ".prep" / "units").exists() or not any((tmp_path / "out" / ".prep" / "units").iterdir())


def test_parquet_nulls_and_empty_rows_are_skipped_with_their_row(tmp_path, tokenizer_dir, tokenizer):
    write_parquet(tmp_path / "p.parquet", ["one", None, "two", "  ", "three"], row_group_size=2)
    card = prep(tokenizer_dir, [tmp_path / "p.parquet"], tmp_path / "out", chunk_mb=1e-6)
    assert (tmp_path / "out" / "skipped.log").read_text().splitlines() == [
        f"{tmp_path / 'p.parquet'}:row 2: null text", f"{tmp_path / 'p.parquet'}:row 4: empty document"]
    assert np.array_equal(flat_tokens(tmp_path / "out", "train", card),
                          expected_stream(tokenizer, {"p": ["one", "two", "three"]}))


def test_foreign_outputs_are_refused_and_finished_ones_left_alone(tmp_path, tokenizer_dir):
    from hope_mega.data.tokenizer_train import train_tokenizer

    write_txt(tmp_path / "a.txt", make_documents(30, seed=3))
    out = tmp_path / "out"
    prep(tokenizer_dir, [tmp_path / "a.txt"], out)
    index = out / "train" / "index.json"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    assert prep(tokenizer_dir, [tmp_path / "a.txt"], out)["tokens_written"] > 0  # no-op rerun
    with pytest.raises(PrepError, match=r"seq_len: 31 there, 63 now"):
        prep(tokenizer_dir, [tmp_path / "a.txt"], out, seq_len=63)
    with pytest.raises(PrepError, match=r"compression: 'none' there, 'zstd' now"):
        prep(tokenizer_dir, [tmp_path / "a.txt"], out, compression="zstd")
    other_tok = tmp_path / "tok2"
    train_tokenizer([str(tmp_path / "a.txt")], other_tok, vocab_size=340)
    with pytest.raises(PrepError, match="other options .*tokenizer_hash"):
        prep(other_tok, [tmp_path / "a.txt"], out)
    write_txt(tmp_path / "b.txt", ["another"])
    with pytest.raises(PrepError, match="made from other input files"):
        prep(tokenizer_dir, [tmp_path / "a.txt", tmp_path / "b.txt"], out)
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(PrepError, match="not empty and was not made by `hope-mega prep`"):
        prep(tokenizer_dir, [tmp_path / "a.txt"], tmp_path / "junk")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".prep.lock"}


def test_kill_9_mid_prep_then_rerun_equals_an_uninterrupted_run(tmp_path, tokenizer_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        write_txt(inputs / f"part{i}.txt", make_documents(1500, seed=100 + i))
    write_jsonl(inputs / "more.jsonl", make_documents(1500, seed=200))
    opts = ["--seq-len", str(SEQ_LEN), "--workers", "2", "--split-val", "0.05",
            "--chunk-mb", "0.05"]
    reference = tmp_path / "reference"
    prep(tokenizer_dir, [inputs], reference, workers=2, split_val=0.05, chunk_mb=0.05)
    n_units = len(plan_units(expand_inputs([str(inputs)]), int(0.05 * 2**20), "text"))

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hope_mega.cli", "prep", "--tokenizer", str(tokenizer_dir),
           "--input", str(inputs), "--output", str(out), *opts]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units_dir = out / ".prep" / "units"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = len(list(units_dir.glob("*.json"))) if units_dir.exists() else 0
        if done >= 3:
            break
        assert proc.poll() is None, "prep exited before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # workers die with their parent (PR_SET_PDEATHSIG)
    done_at_kill = len(list(units_dir.glob("*.json")))
    assert 3 <= done_at_kill < n_units, (done_at_kill, n_units)
    assert not (out / "dataset_card.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n_units} work units, {done_at_kill} already done" in rerun.stderr
    assert _tree(out) == _tree(reference)
