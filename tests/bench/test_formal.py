"""bench/formal.py: training batches hold correct examples of every length up to L, drawn
uniformly, the eval sets sit at L, 2L and 4L, and a sweep records, resumes and reports."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hope_mega.eval.synthetic import IGNORE, evaluate_modular

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _load_formal():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # formal imports bench/mqar.py and bench/quality.py from beside it
    spec = importlib.util.spec_from_file_location("formal", BENCH / "formal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


formal = _load_formal()
def _lengths(task: str, train_len: int, steps: int) -> list[int]:
    return [formal.training_batch(task, 4, train_len, seed).input_ids.shape[1] - 2 for seed in range(steps)]


def test_parity_batches_hold_correct_examples_of_every_length_up_to_L():
    lengths = _lengths("parity", 16, 800)
    assert set(lengths) == set(range(1, 17))
    counts = [lengths.count(n) for n in range(1, 17)]
    assert min(counts) > 25 and max(counts) < 80  # uniform: 50 each
    b = formal.training_batch("parity", 64, 16, seed=5)
    n = b.input_ids.shape[1] - 2
    bits = b.input_ids[:, :n] - 4
    assert set(bits.flatten().tolist()) <= {0, 1} and bool((b.input_ids[:, n] == 6).all())
    assert torch.equal(b.input_ids[:, n + 1], 4 + bits.sum(1) % 2)
    # one answer per example, predicted from the query position
    assert torch.equal(b.loss_mask.nonzero()[:, 1], torch.full((64,), n))
    assert torch.equal(b.labels[:, n], b.input_ids[:, n + 1]) and bool((b.labels[:, -1] == IGNORE).all())
    again = formal.training_batch("parity", 64, 16, seed=5)
    assert torch.equal(again.input_ids, b.input_ids)
    assert not torch.equal(formal.training_batch("parity", 64, 16, seed=6).input_ids[:, :2], b.input_ids[:, :2])


def test_modarith_batches_hold_odd_expressions_with_their_values():
    assert set(_lengths("modarith", 9, 200)) == {1, 3, 5, 7, 9}
    b = formal.training_batch("modarith", 8, 9, seed=1)
    for row in b.input_ids.tolist():
        expr, eq, value = row[:-2], row[-2], row[-1]
        assert eq == 4 + 5 + 3
        numbers = [t - 4 for t in expr[0::2]]
        ops = "".join("+-*"[t - 9] for t in expr[1::2])
        assert value - 4 == evaluate_modular(numbers, ops, 5)


def test_eval_sets_are_one_example_per_row_at_L_2L_4L():
    sets = formal.eval_sets("parity", 16, 10)
    assert {k: s.input_ids.shape for k, s in sets.items()} == {1: (10, 18), 2: (10, 34), 4: (10, 66)}
    assert all(int(s.loss_mask.sum()) == 10 for s in sets.values())
    mod = formal.eval_sets("modarith", 9, 4)  # expressions must be of odd length: 18 -> 19, 36 -> 37
    assert [mod[k].input_ids.shape[1] - 2 for k in (1, 2, 4)] == [9, 19, 37]


def _sweep(out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "formal.py"), "--models", "gdn,transformer", "--lrs", "1e-3", "--seeds", "0",
           "--batch", "2", "--steps", "2", "--eval-every", "1", "--patience", "0", "--eval-examples", "4",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_sweep_records_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "parity.jsonl"
    _sweep(out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in records] == ["gdn", "transformer"]
    for r in records:
        lengths = [formal.training_batch("parity", 2, 16, step).input_ids.shape[1] for step in (0, 1)]
        assert r["task"] == "parity" and r["train_len"] == 16 and r["steps"] == 2 and r["tokens"] == 2 * sum(lengths)
        assert [c[0] for c in r["curve"]] == [2 * lengths[0], r["tokens"]] and all(len(c) == 4 for c in r["curve"])
        assert [r["acc"], r["acc_2x"], r["acc_4x"]] == r["curve"][-1][1:]
        assert all(a in (0, 0.25, 0.5, 0.75, 1) for a in r["curve"][-1][1:])  # 4 examples per length
    assert _sweep(out).stdout.count("already in") == 2
    assert len(out.read_text().splitlines()) == 2
    assert formal.main(["--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### parity: trained on lengths 1..16, d_model 64, batch 2, up to 2 steps" in text
    row = next(line for line in text.splitlines() if line.startswith("| gdn |"))
    assert row.count("|") == 11 and row.endswith("| – | 0/1 |"), row


def test_report_breaks_a_tie_at_L_by_the_longer_lengths(tmp_path):
    base = {"task": "parity", "train_len": 16, "d_model": 64, "batch": 128, "max_steps": 10, "eval_examples": 4,
            "model": "m", "seed": 0, "params": 1e5, "acc": 1.0, "tokens_to_0.9": 1000, "plateaued": True}
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(json.dumps({**base, "lr": lr, "acc_2x": a2, "acc_4x": a4})
                             for lr, a2, a4 in [(1e-3, 0.6, 0.5), (3e-3, 0.99, 0.9), (1e-2, 0.9, 0.5)]) + "\n")
    row = next(line for line in formal.report([out]).splitlines() if line.startswith("| m |"))
    assert row.startswith("| m | 0.100M | 0.003 | 1.000 ±0.000 | 0.990 ±0.000 | 0.900 ±0.000 | 1 |"), row


def test_an_even_training_length_for_modarith_is_refused(capsys):
    with pytest.raises(SystemExit):
        formal.main(["--task", "modarith", "--train-len", "16"])
    assert "--train-len 16: modarith expressions have odd lengths" in capsys.readouterr().err


def test_a_diverged_run_stops_and_is_reported(tmp_path, monkeypatch):
    """As in bench/mqar.py: weights driven to inf by a learning rate far past any window stop the run
    at the first eval that reads a non-finite loss, and the report counts the run."""
    monkeypatch.setattr(formal, "evaluate", lambda model, eval_set, device: {"accuracy": 0.0})
    args = type("Args", (), dict(task="parity", train_len=8, batch=2, steps=40, eval_every=4, patience=0,
                                 d_model=64, eval_examples=4, device="cpu"))()
    r = formal.run_one(("transformer", [], "transformer"), 1e30, 0, 1, {1: None, 2: None, 4: None}, args)
    assert r["diverged"] is True and r["plateaued"] is False
    assert r["steps"] < 40 and r["steps"] % 4 == 0 and not math.isfinite(r["final_loss"])
    out = tmp_path / "formal.jsonl"
    formal.append_record(out, r)
    assert f"0/1; 1 diverged (non-finite loss, at step {r['steps']})" in formal.report([out])
