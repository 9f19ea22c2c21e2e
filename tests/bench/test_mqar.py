"""bench/mqar.py: a two-step sweep writes one complete record per run at matched parameter
counts, a second invocation skips the finished runs, the report reads them back, and a run stops
once its accuracy plateaus."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _load_mqar():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # mqar imports bench/quality.py from beside it
    spec = importlib.util.spec_from_file_location("mqar", BENCH / "mqar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mqar = _load_mqar()

FIELDS = {"setting", "model", "params", "lr", "seed", "steps", "tokens", "curve", "final_acc",
          "acc_by_position", "plateaued", "seconds", "step_seconds", "num_queries", "d_model", "batch", "vocab",
          "segment", "acc_by_segment"}


def _sweep(out: Path, models: str = "hope,transformer", lrs: str = "1e-3,3e-3", *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "mqar.py"), "--settings", "64x4", "--models", models,
           "--lrs", lrs, "--seeds", "0", "--batch", "4", "--steps", "2", "--eval-every", "1",
           "--patience", "0", "--eval-examples", "8", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_sweep_records_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "mqar.jsonl"
    _sweep(out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["model"], r["lr"]) for r in records) == [
        ("hope", 1e-3), ("hope", 3e-3), ("transformer", 1e-3), ("transformer", 3e-3)]
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["setting"] == "64x4" and r["num_queries"] == 4 and r["steps"] == 2 and r["seed"] == 0
        assert r["vocab"] == mqar.ZOOLOGY_VOCAB
        assert r["tokens"] == 2 * 4 * 64 and [t for t, _ in r["curve"]] == [4 * 64, 2 * 4 * 64]
        assert r["final_acc"] == r["curve"][-1][1] and 0 <= r["final_acc"] <= 1
        assert len(r["acc_by_position"]) == 4 and r["plateaued"] is False
        # 64 positions in 16-token segments; the 4 pairs fill 0-7, so every segment holds queries
        assert r["segment"] == 16 and len(r["acc_by_segment"]) == 4 and None not in r["acc_by_segment"]
    params = [r["params"] for r in records]
    assert max(params) / min(params) - 1 <= mqar.PARAM_TOLERANCE

    with out.open("a") as f:  # a line cut short by a killed process does not stop the resume
        f.write('{"setting": "64x4", "model": "ho')
    again = _sweep(out)
    assert again.stdout.count("already in") == 4 and "not a complete record" in again.stderr
    assert len(out.read_text().splitlines()) == 5

    assert mqar.main(["--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### MQAR 64x4: vocab 8192, 4 queries, d_model 128, batch 4, up to 2 steps" in text
    assert "| model | params | best lr | acc (mean ± half-range) | seeds | lr 0.001 | lr 0.003 |" in text
    for model in ("hope", "transformer"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {model} |"))
        assert row.count("|") == 10 and "| 0/1 |" in row, row  # 9 columns; neither run stopped early
    assert "| tokens | hope | transformer |" in text and "| 256 |" in text and "| 512 |" in text
    assert "Accuracy by the query's position, in 16-token segments" in text
    assert "| model | seeds | 0–15 | 16–31 | 32–47 | 48–63 |" in text


def test_another_vocabulary_is_another_run_and_another_table(tmp_path, capsys):
    out = tmp_path / "mqar.jsonl"
    old = {"setting": "64x4", "model": "transformer", "d_model": 128, "lr": 1e-3, "seed": 0, "batch": 4,
           "max_steps": 2, "eval_every": 1, "patience": 0, "eval_examples": 8, "num_queries": 4, "params": 1,
           "curve": [[512, 0.0]], "final_acc": 0.0, "acc_by_position": [0.0] * 4, "plateaued": False, "steps": 2}
    out.write_text(json.dumps(old) + "\n")  # written before --vocab existed: Zoology's vocabulary
    assert "already in" in _sweep(out, "transformer", "1e-3").stdout
    small = _sweep(out, "transformer", "1e-3", "--vocab", "64")
    assert "already in" not in small.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("vocab") for r in records] == [None, 64]
    assert records[1]["params"] < 0.5 * mqar.param_count("transformer", 128, [])[0]
    assert mqar.main(["--report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### MQAR 64x4: vocab 64, 4 queries" in text and "### MQAR 64x4: vocab 8192, 4 queries" in text


def test_plateau_rule():
    assert not mqar.plateaued([0.0, 0.1, 0.2, 0.3, 0.4], patience=2)
    # at chance for as long as the patience: stops on the eval after it
    flat = [0.0, 0.0, 0.005, 0.0]
    assert [mqar.plateaued(flat[:n], patience=3) for n in range(1, 5)] == [False, False, False, True]
    # a slow climb is progress when it adds up to more than 0.01 over the patience
    assert not mqar.plateaued([0.5, 0.505, 0.51, 0.515], patience=3)
    assert mqar.plateaued([0.5, 0.503, 0.506, 0.509], patience=3)
    # a dip and a recovery above the old best within the patience
    assert not mqar.plateaued([0.3, 0.6, 0.2, 0.65], patience=2)
    assert not mqar.plateaued([0.0] * 50, patience=0)


def test_a_plateau_stops_the_run(monkeypatch):
    scripted = iter([0.10, 0.30, 0.305, 0.30, 0.308, 0.9, 0.9])  # flat after the 2nd eval

    def fake_evaluate(model, eval_set, device, segment=None):
        return {"accuracy": next(scripted), "accuracy_by_answer": [0.5] * 4, "accuracy_by_segment": [0.5] * 4}

    monkeypatch.setattr(mqar, "evaluate", fake_evaluate)
    args = type("Args", (), dict(queries=None, vocab=mqar.ZOOLOGY_VOCAB, batch=1, steps=20, eval_every=2, patience=3, d_model=64,
                                 eval_examples=0, device="cpu", segment=16))()
    r = mqar.run_one(("transformer", [], "transformer"), (64, 4), 1e-3, 0, 1, None, args)
    assert r["plateaued"] is True and r["steps"] == 10 and r["max_steps"] == 20
    assert [a for _, a in r["curve"]] == [0.10, 0.30, 0.305, 0.30, 0.308] and r["final_acc"] == 0.308
    assert r["best_acc"] == 0.308 and r["tokens"] == 10 * 64


def test_model_names_carry_overrides_and_missing_configs_are_unavailable(monkeypatch):
    one = mqar.parse_models("hope:model.chunk_size=16;model.cms_levels=[{hidden: 64, period: 1}],transformer", [])
    assert one == [("hope", ["model.chunk_size=16", "model.cms_levels=[{hidden: 64, period: 1}]"],
                    "hope:model.chunk_size=16;model.cms_levels=[{hidden: 64, period: 1}]"),
                   ("transformer", [], "transformer")]
    # --override names the run as the same override on the model does
    assert mqar.parse_models("hope", ["model.chunk_size=16"]) == mqar.parse_models("hope:model.chunk_size=16", [])
    with pytest.raises(SystemExit):
        mqar.parse_models("hope,nope", [])
    monkeypatch.setitem(mqar.CONFIGS, "absent", ("no-such-config.yaml", []))
    assert mqar.param_count("absent", 128, []) == (None, "configs/no-such-config.yaml does not exist")
    count, why = mqar.param_count("hope", 128, ["model.mixer=no-such-mixer"])
    assert count is None and "model.mixer" in why


def test_a_segment_below_one_is_refused_by_flag(capsys):
    with pytest.raises(SystemExit):
        mqar.main(["--segment", "0", "--out", "unused.jsonl"])
    assert "--segment must be at least 1, got 0" in capsys.readouterr().err


def test_a_diverged_run_stops_and_is_reported(tmp_path, monkeypatch):
    """A learning rate far past any window takes the weights to inf within a few steps; the run
    stops at the first eval that reads a non-finite loss instead of training NaN weights to the
    end, and the report says so."""
    monkeypatch.setattr(mqar, "evaluate", lambda model, eval_set, device, segment=None: {
        "accuracy": 0.0, "accuracy_by_answer": [0.0] * 4, "accuracy_by_segment": [0.0] * 4})
    args = type("Args", (), dict(queries=None, vocab=64, batch=2, steps=40, eval_every=4, patience=0, d_model=64,
                                 eval_examples=0, device="cpu", segment=16))()
    r = mqar.run_one(("transformer", [], "transformer"), (64, 4), 1e30, 0, 1, None, args)
    assert r["diverged"] is True and r["plateaued"] is False
    assert r["steps"] < 40 and r["steps"] % 4 == 0 and not math.isfinite(r["final_loss"])
    out = tmp_path / "mqar.jsonl"
    mqar.append_record(out, {**r, "eval_examples": 8})
    assert f"0/1; 1 diverged (non-finite loss, at step {r['steps']})" in mqar.report([out])


def test_report_gives_each_seeds_onset_at_the_best_lr(tmp_path):
    """The per-seed table reads the tokens to 0.5 and 0.9 off each run's curve at the model's best
    lr: the first eval at or above the level, "–" for a run that never reached it."""
    base = {"setting": "64x4", "vocab": 256, "d_model": 64, "batch": 64, "max_steps": 30, "eval_examples": 8,
            "num_queries": 4, "model": "m", "params": 1000, "acc_by_position": [], "plateaued": False,
            "final_loss": 1.0}
    runs = [(1e-3, 0, [[10_000, 0.2], [20_000, 0.6], [30_000, 0.95]]),
            (1e-3, 1, [[10_000, 0.1], [20_000, 0.3], [30_000, 0.55]]),
            (1e-2, 0, [[10_000, 0.01], [20_000, 0.01], [30_000, 0.01]])]
    out = tmp_path / "mqar.jsonl"
    out.write_text("".join(json.dumps({**base, "lr": lr, "seed": seed, "curve": curve, "final_acc": curve[-1][1],
                                       "steps": 30}) + "\n" for lr, seed, curve in runs))
    assert "| m | 0, 1 | 0.950 / 0.550 | 20k / 30k | 30k / – |" in mqar.report([out])
