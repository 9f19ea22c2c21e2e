"""The streaming loader: rank-disjoint epochs, exact resume, resume across dp sizes, mixing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus_factory import make_documents, write_txt
from ports import free_port

from hope_mega.data.dataset_card import DatasetCardError
from hope_mega.data.loader import LoaderError, build_train_loader, read_dataset_card, read_rows
from hope_mega.data.prep import PrepConfig, run_prep

SEQ_LEN = 15
RANK_SCRIPT = Path(__file__).with_name("loader_rank.py")


def prepared(tmp_path: Path, tokenizer_dir, tokenizer, name: str, rows_multiple: int, seed: int,
             words: int = 60) -> Path:
    """A dataset whose row count is a multiple of `rows_multiple` (so no rank gets padding
    samples) and whose rows are all distinct (so 'disjoint' means something)."""
    docs = make_documents(150, seed=seed, max_words=words)
    tokens = sum(len(tokenizer.encode(d)) + 1 for d in docs)
    while -(-tokens // (SEQ_LEN + 1)) % rows_multiple:
        docs.append(f"river {len(docs)}")
        tokens += len(tokenizer.encode(docs[-1])) + 1
    write_txt(tmp_path / f"{name}.txt", docs)
    out = tmp_path / name
    run_prep(PrepConfig(tokenizer=str(tokenizer_dir), inputs=[str(tmp_path / f"{name}.txt")],
                        output=str(out), seq_len=SEQ_LEN, workers=1, split_val=0, quiet=True))
    rows = read_rows(str(out))
    assert rows.shape[0] % rows_multiple == 0
    assert len({r.tobytes() for r in rows}) == rows.shape[0]
    return out


def run_ranks(tmp_path: Path, tag: str, cfg: dict) -> list[dict]:
    cfg = dict(cfg, port=free_port())
    cfg_path = tmp_path / f"{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    procs = [subprocess.Popen([sys.executable, str(RANK_SCRIPT), str(cfg_path), str(r),
                               str(tmp_path / f"{tag}-{r}.npz")], stderr=subprocess.PIPE, text=True)
             for r in range(cfg["dp_size"])]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    results = []
    for r in range(cfg["dp_size"]):
        data = np.load(tmp_path / f"{tag}-{r}.npz")
        meta = json.loads((tmp_path / f"{tag}-{r}.npz.json").read_text())
        results.append({"batches": data["batches"], "length": int(data["length"]), **meta})
    return results


def as_set(rows: np.ndarray) -> set[bytes]:
    return {r.astype(np.uint16).tobytes() for r in rows.reshape(-1, SEQ_LEN + 1)}


def test_two_ranks_two_workers_cover_the_epoch_and_resume_exactly(tmp_path, tokenizer_dir, tokenizer):
    micro, dp, workers, k = 2, 2, 2, 3
    data = prepared(tmp_path, tokenizer_dir, tokenizer, "ds", rows_multiple=micro * dp * workers * 2, seed=1)
    all_rows = read_rows(str(data))
    base = dict(paths=[str(data)], seq_len=SEQ_LEN, micro_batch=micro, global_batch=8, seed=7,
                num_workers=workers)
    full = run_ranks(tmp_path, "full", dict(base, dp_size=dp, save_state_after=k * 2))
    r0, r1 = full[0]["batches"], full[1]["batches"]
    assert r0.shape == r1.shape == (len(all_rows) // (micro * dp), micro, SEQ_LEN + 1)
    assert full[0]["length"] == r0.shape[0]
    s0, s1 = as_set(r0), as_set(r1)
    assert not s0 & s1
    assert s0 | s1 == as_set(all_rows)
    assert len(s0) == r0.shape[0] * micro  # no row twice within a rank either
    assert not np.array_equal(r0.reshape(-1, SEQ_LEN + 1), all_rows[: r0.shape[0] * micro])  # shuffled

    state = full[0]["state"]
    assert state == full[1]["state"]
    assert state["sample_in_epoch"] == k * 8 and state["epoch"] == 0
    assert full[0]["after_epoch"]["epoch"] == 1 and full[0]["after_epoch"]["sample_in_epoch"] == 0
    (tmp_path / "state.json").write_text(json.dumps(state))

    # Same world: each rank continues exactly where it was.
    resumed = run_ranks(tmp_path, "resume2", dict(base, dp_size=dp, resume=str(tmp_path / "state.json")))
    for r in range(dp):
        assert np.array_equal(resumed[r]["batches"], full[r]["batches"][k * 2:])

    # One rank, same global batch (4 accumulation steps): every optimizer step sees the same rows.
    single = run_ranks(tmp_path, "resume1", dict(base, dp_size=1, num_workers=2,
                                                 resume=str(tmp_path / "state.json")))
    one = single[0]["batches"].reshape(-1, 8, SEQ_LEN + 1)  # [steps, global batch, row]
    two = np.concatenate([r0.reshape(-1, 2, micro, SEQ_LEN + 1), r1.reshape(-1, 2, micro, SEQ_LEN + 1)],
                         axis=1).reshape(-1, 8, SEQ_LEN + 1)
    assert one.shape[0] == two.shape[0] - k
    for step in range(one.shape[0]):
        assert as_set(one[step]) == as_set(two[k + step])


def test_single_process_loader_is_deterministic_and_resumes_in_process(tmp_path, tokenizer_dir, tokenizer):
    data = prepared(tmp_path, tokenizer_dir, tokenizer, "ds", rows_multiple=4, seed=2)
    make = lambda seed: build_train_loader([str(data)], None, SEQ_LEN, 4, 8, 0, 1, seed)
    loader = make(3)
    first = [b.numpy() for b in loader]
    assert all(b.shape == (4, SEQ_LEN + 1) for b in first)
    assert np.array_equal(np.stack([b.numpy() for b in make(3)]), np.stack(first))
    assert not np.array_equal(np.stack([b.numpy() for b in make(4)]), np.stack(first))
    # Stop mid-epoch, then iterate again: the loader continues, it does not restart or skip.
    loader = make(3)
    it = iter(loader)
    head = [next(it).numpy() for _ in range(5)]
    state = loader.state_dict()
    del it
    rest = [b.numpy() for b in loader]
    assert np.array_equal(np.stack(head + rest), np.stack(first))
    other = make(3)
    other.load_state_dict(state)
    assert np.array_equal(np.stack([b.numpy() for b in other]), np.stack(first[5:]))


def test_mixing_weights_set_each_dataset_share(tmp_path, tokenizer_dir, tokenizer):
    a = prepared(tmp_path, tokenizer_dir, tokenizer, "a", rows_multiple=8, seed=3)
    b = prepared(tmp_path, tokenizer_dir, tokenizer, "b", rows_multiple=8, seed=4)
    rows_a, rows_b = as_set(read_rows(str(a))), as_set(read_rows(str(b)))
    assert not rows_a & rows_b
    loader = build_train_loader([str(a), str(b)], [3.0, 1.0], SEQ_LEN, 4, 4, 0, 1, seed=0)
    seen = [r.astype(np.uint16).tobytes() for batch in loader for r in batch.numpy()]
    total = len(rows_a) + len(rows_b)
    from_a = sum(r in rows_a for r in seen)
    assert sum(r in rows_b for r in seen) == len(seen) - from_a
    assert abs(len(seen) - total) < 4
    assert abs(from_a - 0.75 * total) <= 4


def test_cards_and_arguments_are_checked(tmp_path, tokenizer_dir, tokenizer):
    data = prepared(tmp_path, tokenizer_dir, tokenizer, "ds", rows_multiple=1, seed=5)
    card = read_dataset_card(data)
    assert card["tokenizer_hash"] == tokenizer.hash
    assert (card["seq_len"], card["eos_id"], card["vocab_size"]) == (SEQ_LEN, tokenizer.eos_id, tokenizer.vocab_size)
    with pytest.raises(DatasetCardError, match=str(tmp_path / "missing")):
        read_dataset_card(tmp_path / "missing")
    with pytest.raises(LoaderError, match="prepared with seq_len=15, but the loader was asked for seq_len=31"):
        build_train_loader([str(data)], None, 31, 2, 2, 0, 1, seed=0)
    with pytest.raises(LoaderError, match="global_batch=6 is not a multiple of micro_batch\\*dp_size=4\\*1"):
        build_train_loader([str(data)], None, SEQ_LEN, 4, 6, 0, 1, seed=0)
    with pytest.raises(LoaderError, match="dp_size=2 but WORLD_SIZE is not set"):
        build_train_loader([str(data)], None, SEQ_LEN, 2, 4, 0, 2, seed=0)
    with pytest.raises(LoaderError, match="has no 'val' split"):
        build_train_loader([str(data)], None, SEQ_LEN, 2, 2, 0, 1, seed=0, split="val")
    loader = build_train_loader([str(data)], None, SEQ_LEN, 2, 2, 0, 1, seed=0)
    state = loader.state_dict()
    other = build_train_loader([str(data)], None, SEQ_LEN, 2, 2, 0, 1, seed=1)
    with pytest.raises(LoaderError, match="saved with seed=0, this loader has seed=1"):
        other.load_state_dict(state)
