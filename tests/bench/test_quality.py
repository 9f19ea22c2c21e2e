"""bench/quality.py: --tasks runs only the tasks named (the LM corpus is not built unless the LM
is asked for), and bad --tasks / --corpus values stop with an error naming the flag."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quality(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--workdir", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=600)


def test_only_the_named_tasks_run_and_the_table_marks_the_others(tmp_path):
    out = tmp_path / "q.json"
    r = _quality(tmp_path, "--tasks", "mqar", "--models", "transformer", "--task-steps", "2", "--batch", "4",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    entry = json.loads(out.read_text())["models"]["transformer"]
    assert set(entry) == {"params_lm", "mqar", "seconds"}
    for label in ("mqar-4pairs", "mqar-8pairs"):
        assert 0.0 <= entry["mqar"][label] <= 1.0
    assert not (tmp_path / "work").exists()  # no corpus, tokenizer or shards for a run without the LM
    row = next(line for line in r.stdout.splitlines() if line.startswith("| transformer |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == ["–", "–"] and cells[6:] == ["–"] * 6
    assert cells[4] == f"{entry['mqar']['mqar-4pairs']:.3f}"


def test_bad_tasks_and_corpus_are_refused_by_flag(tmp_path):
    r = _quality(tmp_path, "--tasks", "lm,recall")
    assert r.returncode != 0 and "--tasks: unknown recall" in r.stderr
    r = _quality(tmp_path, "--tasks", "lm", "--corpus", str(tmp_path / "missing"))
    assert r.returncode != 0 and f"--corpus {tmp_path / 'missing'}: no such directory" in r.stderr


def _lm_result(path: Path, seed: int, ppl: float, bpb: float, tokens: int = 2_440_000, lr: float = 3e-3) -> str:
    entry = {"params_lm": 2_500_000, "seconds": 10.0 + seed,
             "lm": {"ppl": ppl, "bpb": bpb, "train_tokens": tokens, "epochs": 0.5, "tokens": 99}}
    path.write_text(json.dumps({"seed": seed, "args": {"lr": lr},
                                "models": {"hope": entry, "transformer": {"params_lm": 1, "mqar": {}}}}))
    return str(path)


def test_report_gives_mean_and_half_range_over_seeds(tmp_path):
    files = [_lm_result(tmp_path / "b.json", 1, 42.0, 2.10), _lm_result(tmp_path / "a.json", 0, 40.0, 2.00),
             _lm_result(tmp_path / "d.json", 0, 50.0, 2.30, lr=1e-2)]
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--report", *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| hope |")]
    # the transformer entry has no LM result and gets no row; another lr is another row, not a seed
    assert "| transformer |" not in r.stdout
    assert rows == ["| hope | 2.50M | 0.003 | 41.00 ±1.00 | 2.050 ±0.050 | 0, 1 | 2.44M (0.50) | 10, 11 |",
                    "| hope | 2.50M | 0.01 | 50.00 ±0.00 | 2.300 ±0.000 | 0 | 2.44M (0.50) | 10 |"]
    files.append(_lm_result(tmp_path / "c.json", 2, 41.0, 2.05, tokens=1_000_000))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--report", *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "hope: seeds trained on different token counts [1000000, 2440000]" in r.stderr
