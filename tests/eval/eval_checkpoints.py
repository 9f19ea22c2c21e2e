"""Real training checkpoints for the conversion and evaluation tests, trained once per session.

Two 2-process runs of `hope-mega train`: TP=2 with ZeRO-2 (DP=1) and a vocabulary that TP pads
(515 -> 516 rows, so the padding really has to be cut), and DP=2 with ZeRO-2. Both evaluate on the
whole validation split after their last step, so the loss the trainer measured with its own
parallel model is on record (metrics.jsonl) for the converted weights to reproduce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN_TESTS = Path(__file__).resolve().parents[1] / "train"
if str(TRAIN_TESTS) not in sys.path:
    sys.path.insert(0, str(TRAIN_TESTS))

from train_launch import run_train  # noqa: E402

EOS, PAD = 2, 3
RUNS = {
    "tp2": ("parallel.tp=2", "parallel.zero_stage=2", "model.vocab_size=515"),
    "dp2": ("parallel.zero_stage=2",),
}
COMMON = ("train.steps=2", "train.eval_every=2", "train.eval_batches=1000")


def tiny_dataset(root: Path) -> Path:
    """A 512-token tokenizer and 32-token rows (2% validation) from 150 chapters of the built-in
    corpus, as tests/train builds it; plus held-out chapters that are in neither split."""
    from hope_mega.cli import main
    from hope_mega.data.default_corpus import iter_chapters

    if (root / "done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    chapters = [doc for _, doc in zip(range(153), iter_chapters())]
    with open(root / "corpus.jsonl", "w") as f:
        for doc in chapters[:150]:
            f.write(json.dumps(doc) + "\n")
    with open(root / "held_out.jsonl", "w") as f:
        for doc in chapters[150:]:  # cut so each document spans several 64-token windows, not dozens
            f.write(json.dumps({"text": doc["text"][:1500]}) + "\n")
    assert main(["tokenizer", "train", "--input", str(root / "corpus.jsonl"), "--output", str(root / "tok"),
                 "--vocab-size", "512"]) == 0
    assert main(["prep", "--tokenizer", str(root / "tok"), "--input", str(root / "corpus.jsonl"), "--output",
                 str(root / "data"), "--seq-len", "32", "--workers", "1", "--split-val", "0.02", "--quiet"]) == 0
    (root / "done").write_text("ok")
    return root


def trained(tmp_path_factory) -> dict[str, Path]:
    """{"data": dataset root, "tp2": save_dir, "dp2": save_dir}, trained on first use in this session."""
    base = tmp_path_factory.getbasetemp() / "hope_eval_checkpoints"
    out = {"data": tiny_dataset(base / "data")}
    for name, overrides in RUNS.items():
        save = base / name
        if not (save / "done").is_file():
            run_train(2, out["data"], save, *overrides, *COMMON)
            (save / "done").write_text("ok")
        out[name] = save
    return out


def logged_val_loss(save_dir: Path) -> float:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    (last,) = [r["val_loss"] for r in records if "val_loss" in r]
    return last
