"""MQAR the way Zoology measures it: recall accuracy of Hope, its ablations and the baselines,
across sequence lengths, learning rates and seeds.

Multi-query associative recall (Arora et al. 2023, "Zoology"): a sequence opens with key-value
pairs, and later some keys appear again, each to be followed by its value. This script uses
Zoology's standard settings: vocabulary 8192; (seq_len, pairs) in {(64, 4), (128, 8), (256, 16)};
as many queries as pairs (`--queries`); models of width `--d-model` (128), 2 layers, 2 heads;
every training batch fresh from a seeded stream; accuracy on a held-out set of fixed seed
(`--eval-examples`, the same for every model, lr and seed). Unlike Zoology, queries are drawn with
replacement and placed uniformly (`hope_mega.eval.synthetic.make_mqar`), so no answer follows by
elimination; chance is 1/4093 (the scorer's argmax is over the value ids). `--vocab` changes the
vocabulary (chance 1/((vocab - 5) // 2)): a smaller one is not Zoology's setting, but recall
appears there after far fewer tokens, which makes a CPU comparison of the models possible.

Models (`--models`, a comma list), each built from its config with vocab, width, 2 layers and
2 heads overridden, and CMS widths in units of d_model so the parameter counts match (±5%,
printed before the sweep and shown in the report):

- hope             configs/hope-tiny.yaml, CMS 2d + 2d at periods 1 and 4
- hope-no-selfmod  hope with one chunk per sequence (Gated DeltaNet with a learned initial state)
- hope-mlp         configs/hope-mlp-tiny.yaml (MLP memories), CMS 0.75d + 0.75d at periods 1 and 4
- transformer      configs/transformer-tiny.yaml (Transformer++), one CMS level of 6d
- gdn              configs/gdn-tiny.yaml (Gated DeltaNet, fla's recurrence), one CMS level of 5.625d
- hope-no-cms      hope with one CMS level of 4d at period 1

A model whose config is missing or that this checkout cannot build is reported as unavailable
and skipped. Extra config overrides ride on a model name after a colon, separated by
semicolons, or apply to every model with `--override KEY=VALUE` (repeatable); either way they
become part of the model's name in the results, so ablations need no code change:

    --models 'hope,hope:model.chunk_size=16;model.conv_size=2'
    --models hope --override model.chunk_size=16          # recorded as hope:model.chunk_size=16

Every (setting, model, lr, seed) run trains with the CMS-aware AdamW, warmup + cosine over
`--steps` (bench/quality.py's optimizer and step), evaluates every `--eval-every` steps (accuracy
and the accuracy of each query position) and stops early once the best of its last `--patience`
evals is no more than 0.01 above the best before them (`plateaued`; MQAR often sits at chance for
a few hundred steps before recall appears, so keep patience x eval-every well above that). A run
whose training loss since the last eval is not finite stops there (`diverged`; the report counts
such runs at the best lr). The record also keeps the last eval's accuracy by where the query
sits, in `--segment`-token spans: 16 by default, so that at 64x4 the spans split at Hope's chunk
boundary (32) and tell recall within the chunk that wrote the pairs from recall across a
boundary. The curve is accuracy against training tokens (steps x batch x seq_len).

Each finished run appends one JSON line to `--out`; a run whose line is already there is skipped,
so a sweep resumes where it stopped and can be split over processes by `--models` / `--lrs`
(give them disjoint runs; they may share the file). `--report FILE...` prints markdown tables:
per setting and model the best lr (by final accuracy averaged over seeds), mean ± half-range over
seeds, the accuracy at every lr, per-query accuracy at the best lr, the curves at the best lr, and
each seed's final accuracy and tokens to 0.5 and 0.9 at the best lr (the onset, which varies with
the seed more than between models).

    # CPU: one thread per process, e.g. two processes on two cores
    OMP_NUM_THREADS=1 python bench/mqar.py --models hope,hope-no-selfmod --out runs/mqar/sweep.jsonl
    OMP_NUM_THREADS=1 python bench/mqar.py --models transformer,hope-mlp,gdn --out runs/mqar/sweep.jsonl
    python bench/mqar.py --report runs/mqar/sweep.jsonl

    # GPU: the whole sweep in one process
    python bench/mqar.py --device cuda --out runs/mqar/sweep-gpu.jsonl

Cost on one CPU thread, batch 64, d_model 128, at 64x4 (two 12-step runs per model, the
machine's other core busy): seconds per training step hope 0.85, hope-no-selfmod 0.7-0.9,
hope-mlp 2.8-3.1, transformer 0.4-0.5, gdn 1.15; an eval of 1000 examples 5-6 s (transformer,
gdn), 9 s (hope) and 16-18 s (hope-mlp). A run of the default 2000 steps with 20 evals at 64x4
thus takes about 17 minutes (transformer), 30 (hope, hope-no-selfmod), 40 (gdn) and 105
(hope-mlp), and about 2x and 4x that at 128x8 and 256x16 (tokens per step double each time).
The default sweep (3 settings x 5 models x 3 lrs x 2 seeds) is days of CPU unless runs plateau
early: size a CPU sweep with --settings, --steps and --models, or run it on a GPU. The loss is
taken at the answers only: the LM head runs at those positions, for the same gradients in half
the step time on CPU (a third for the transformer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from quality import MODELS, ROOT, build, forward, mean_spread, model_config, optimizer, train_step

from hope_mega.config import ConfigError
from hope_mega.eval.scoring import score
from hope_mega.eval.synthetic import make_mqar
from hope_mega.params import parameter_counts

ZOOLOGY_VOCAB = 8192
N_LAYERS, N_HEADS = 2, 2
CONFIGS = {**MODELS, "gdn": ("gdn-tiny.yaml", [])}
# CMS levels as (hidden width in units of d_model, period): each model keeps its tiny config's
# shape at any --d-model, with parameter counts within 3% of hope's at d_model 64, 128 and 256.
# hope-mlp's memories hold more parameters than hope's matrices, so its CMS is narrower;
# Transformer++'s attention and Gated DeltaNet's mixer hold fewer, so their one level is wider.
CMS = {
    "hope": [(2, 1), (2, 4)],
    "hope-no-selfmod": [(2, 1), (2, 4)],
    "hope-no-cms": [(4, 1)],
    "hope-mlp": [(0.75, 1), (0.75, 4)],
    "transformer": [(6, 1)],
    "gdn": [(5.625, 1)],
}
PARAM_TOLERANCE = 0.05
MIN_GAIN = 0.01  # an eval must beat the best so far by more than this to count as progress
# Training batch `step` of seed s is drawn from seed s * 2**32 + step; the eval set's seed lies
# outside that range for every seed below 2**30, so it is never a training batch.
EVAL_SEED = 2**62 + 12345
EVAL_TOKENS = {"cpu": 4096, "cuda": 65536}  # per eval batch: logits are tokens x 8192 floats
# What makes two runs the same run (resume) and two runs comparable (one report table).
RUN_KEY = ("setting", "vocab", "model", "d_model", "lr", "seed", "batch", "max_steps", "eval_every", "patience",
           "eval_examples", "num_queries")
TABLE_KEY = ("setting", "vocab", "d_model", "batch", "max_steps", "eval_examples", "num_queries")


def split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets and braces (override values may hold lists)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def parse_models(models: str, overrides: list[str]) -> list[tuple[str, list[str], str]]:
    """[(config name, extra overrides, label)]: the label names the run in the results."""
    specs = []
    for item in split_top(models, ","):
        name, _, rest = item.partition(":")
        name = name.strip()
        if name not in CONFIGS:
            raise SystemExit(f"--models: unknown model {name!r} (known: {', '.join(CONFIGS)})")
        extra = [*split_top(rest, ";"), *overrides]
        specs.append((name, extra, name + (":" + ";".join(extra) if extra else "")))
    return specs


def parse_settings(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(s), int(p)) for s, p in (item.split("x") for item in split_top(text, ","))]
    except ValueError:
        raise SystemExit(f"--settings: expected SEQxPAIRS[,SEQxPAIRS...], got {text!r}") from None


def sizing(name: str, d_model: int, extra: list[str]) -> list[str]:
    out = [f"model.d_model={d_model}", f"model.n_layers={N_LAYERS}", f"model.n_heads={N_HEADS}"]
    if name in CMS:
        levels = ", ".join(f"{{hidden: {int(w * d_model)}, period: {p}}}" for w, p in CMS[name])
        out.append(f"model.cms_levels=[{levels}]")
    return [*out, *extra]


def param_count(name: str, d_model: int, extra: list[str], vocab: int = ZOOLOGY_VOCAB) -> tuple[int | None, str | None]:
    """(parameters, None), or (None, why the model is unavailable in this checkout)."""
    file = CONFIGS[name][0]
    if not (ROOT / "configs" / file).is_file():
        return None, f"configs/{file} does not exist"
    try:
        cfg = model_config(name, vocab, sizing(name, d_model, extra), CONFIGS)
        return parameter_counts(cfg.model)["total_params"], None
    except (ConfigError, ImportError, NotImplementedError, ValueError, KeyError) as err:
        return None, f"{type(err).__name__}: {err}"


def plateaued(accuracies: list[float], patience: int, min_gain: float = MIN_GAIN) -> bool:
    """Whether the last `patience` evals failed to beat the best eval before them by more than
    `min_gain` (never before there are more than `patience` evals; patience 0: never)."""
    if patience <= 0 or len(accuracies) <= patience:
        return False
    return max(accuracies[-patience:]) <= max(accuracies[:-patience]) + min_gain


def stop_reason(loss: float, accuracies: list[float], patience: int) -> str | None:
    """Why a run stops at this eval: "diverged" when the training loss since the last eval is not
    finite, "plateaued" when `plateaued` says so, None to go on. A diverged run stops because
    clipping cannot bring back non-finite weights: every later step would cost a step's time and
    leave the accuracy where NaN logits put it."""
    if not math.isfinite(loss):
        return "diverged"
    return "plateaued" if plateaued(accuracies, patience) else None


def evaluate(model, eval_set, device: str, segment: int | None = None) -> dict:
    model.eval()
    per_batch = max(1, EVAL_TOKENS.get(torch.device(device).type, 4096) // eval_set.input_ids.shape[1])
    result = score(lambda ids: forward(model, ids, device), eval_set, batch_size=per_batch, segment=segment)
    model.train()
    return result


def run_one(spec, setting, lr: float, seed: int, params: int, eval_set, args) -> dict:
    name, extra, label = spec
    seq_len, pairs = setting
    queries = args.queries or pairs
    tag = f"[{seq_len}x{pairs} {label} lr={lr:g} seed={seed}]"
    start = time.perf_counter()
    _, model = build(name, args.vocab, args.device, seed, sizing(name, args.d_model, extra), CONFIGS)
    opt = optimizer(model, lr)
    model.train()
    loss_sum, since, train_s = torch.zeros((), device=args.device), 0, 0.0
    curve, result, stopped, diverged, step, loss = [], None, False, False, 0, float("nan")
    t0 = time.perf_counter()
    while step < args.steps:
        b = make_mqar(args.batch, seq_len, args.vocab, pairs, seed=seed * 2**32 + step, num_queries=queries)
        loss_sum += train_step(model, opt, (b.input_ids, b.labels, b.loss_mask.float()), step, args.steps, lr,
                               args.device, answers_only=True)
        step, since = step + 1, since + 1
        if step % args.eval_every and step < args.steps:
            continue
        loss = loss_sum.item() / since  # the only read-back of the training loop; waits for the step
        loss_sum.zero_()
        since = 0
        train_s += time.perf_counter() - t0
        result = evaluate(model, eval_set, args.device, args.segment)
        tokens = step * args.batch * seq_len
        curve.append([tokens, result["accuracy"]])
        print(f"{tag} step {step} tokens {_tokens(tokens)} loss {loss:.3f} acc {result['accuracy']:.4f}", flush=True)
        reason = stop_reason(loss, [a for _, a in curve], args.patience)
        diverged, stopped = reason == "diverged", reason == "plateaued"
        if diverged:
            print(f"{tag} diverged: the training loss since the last eval is {loss}; stopped", flush=True)
            break
        if stopped:
            print(f"{tag} plateaued: no gain above {MIN_GAIN} in the last {args.patience} evals; stopped", flush=True)
            break
        t0 = time.perf_counter()
    return {
        "setting": f"{seq_len}x{pairs}", "seq_len": seq_len, "num_pairs": pairs, "num_queries": queries,
        "vocab": args.vocab, "model": label, "config": name, "overrides": extra, "params": params, "d_model": args.d_model,
        "lr": lr, "seed": seed, "batch": args.batch, "max_steps": args.steps, "eval_every": args.eval_every,
        "patience": args.patience, "eval_examples": args.eval_examples, "steps": step,
        "tokens": step * args.batch * seq_len, "curve": curve, "final_acc": curve[-1][1],
        "best_acc": max(a for _, a in curve), "acc_by_position": result["accuracy_by_answer"],
        "segment": args.segment, "acc_by_segment": result["accuracy_by_segment"],
        "final_loss": loss, "plateaued": stopped, "diverged": diverged, "seconds": round(time.perf_counter() - start, 2),
        "step_seconds": round(train_s / step, 4), "device": args.device,
    }


def read_records(paths) -> list[dict]:
    """The runs recorded in `paths`; a line cut short (a process killed while writing it) is
    passed over, so that its run is done again."""
    records = []
    for path in paths:
        if not Path(path).is_file():
            continue
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                print(f"{path}:{n}: not a complete record, ignored", file=sys.stderr)
                continue
            record.setdefault("vocab", ZOOLOGY_VOCAB)  # records from before --vocab existed
            records.append(record)
    return records


def append_record(out: Path, record: dict) -> None:
    """One write per line, so that concurrent appenders do not interleave; after a line cut short
    (a process killed while writing it), a new line, so that the record does not join it."""
    cut = out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n")
    with out.open("a") as f:
        f.write(("\n" if cut else "") + json.dumps(record) + "\n")


def add_run_arguments(ap: argparse.ArgumentParser, out: str) -> None:
    """The arguments every sweep script here shares: where it runs and where its records go."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=out, help="JSON lines, appended; finished runs are skipped")
    ap.add_argument("--report", nargs="+", metavar="FILE", help="print the tables of these JSON-lines files and exit")


def sweep(args) -> int:
    settings = parse_settings(args.settings)
    specs = parse_models(args.models, args.override)
    lrs = [float(x) for x in split_top(args.lrs, ",")]
    seeds = [int(x) for x in split_top(args.seeds, ",")]
    available, params = [], {}
    for spec in specs:
        count, why = param_count(spec[0], args.d_model, spec[1], args.vocab)
        if why:
            print(f"{spec[2]}: unavailable, skipped ({why})", flush=True)
        else:
            available.append(spec)
            params[spec[2]] = count
    if not available:
        print("no model of --models is available", file=sys.stderr)
        return 1
    ref = next((label for _, _, label in available if label == "hope"), available[0][2])
    for label, count in params.items():
        off = count / params[ref] - 1
        flag = f"  (outside ±{PARAM_TOLERANCE:.0%} of {ref})" if abs(off) > PARAM_TOLERANCE else ""
        print(f"{label}: {count / 1e6:.3f}M parameters, {off:+.1%} against {ref}{flag}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seq_len, pairs in settings:
        queries = args.queries or pairs
        eval_set = make_mqar(args.eval_examples, seq_len, args.vocab, pairs, seed=EVAL_SEED, num_queries=queries)
        for spec, lr, seed in itertools.product(available, lrs, seeds):
            want = {"setting": f"{seq_len}x{pairs}", "vocab": args.vocab, "model": spec[2], "d_model": args.d_model, "lr": lr,
                    "seed": seed, "batch": args.batch, "max_steps": args.steps, "eval_every": args.eval_every,
                    "patience": args.patience, "eval_examples": args.eval_examples, "num_queries": queries}
            # read again before every run: another process may share the file
            if any(all(r.get(k) == want[k] for k in RUN_KEY) for r in read_records([out])):
                print(f"[{want['setting']} {spec[2]} lr={lr:g} seed={seed}] already in {out}, skipped", flush=True)
                continue
            append_record(out, run_one(spec, (seq_len, pairs), lr, seed, params[spec[2]], eval_set, args))
    print(report([out]))
    return 0


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)


def _curve_at(curve: list, tokens: int) -> float | None:
    """Accuracy of a run at `tokens`: its last eval at or before it (a stopped run keeps its last)."""
    seen = [a for t, a in curve if t <= tokens]
    return seen[-1] if seen else None


def _tokens_to(curve: list, accuracy: float) -> str:
    """Tokens at a run's first eval at or above `accuracy`, "–" if none reached it."""
    return next((_tokens(t) for t, a in curve if a >= accuracy), "–")


def _seed_table(best_runs: dict) -> list[str]:
    """Each seed of each model at its best lr: the final accuracy and the tokens to 0.5 and 0.9.
    Accuracy at a fixed budget mostly says when recall set in, which varies with the seed more
    than between models, so a comparison of two variants reads the onsets, seed by seed."""
    lines = ["", "Each seed at its model's best lr: final accuracy, and tokens to the first eval at 0.5 and at "
             "0.9 (– never):", "", "| model | seeds | final acc | tokens to 0.5 | tokens to 0.9 |", "|---" * 5 + "|"]
    for m, rs in best_runs.items():
        lines.append(f"| {m} | {', '.join(str(r['seed']) for r in rs)} | "
                     + " / ".join(f"{r['final_acc']:.3f}" for r in rs) + " | "
                     + " / ".join(_tokens_to(r["curve"], 0.5) for r in rs) + " | "
                     + " / ".join(_tokens_to(r["curve"], 0.9) for r in rs) + " |")
    return lines


def diverged_note(runs: list[dict]) -> str:
    """The report's note on the runs whose final loss is not finite, "; N diverged (non-finite
    loss, at step S, ...)", or "" when none is. Read from the loss, not the record's "diverged"
    field, so that records written before the field existed are counted too."""
    steps = [str(r["steps"]) for r in runs if not math.isfinite(r.get("final_loss", 0.0))]
    return f"; {len(steps)} diverged (non-finite loss, at step {', '.join(steps)})" if steps else ""


def _segment_table(best_segments: dict) -> list[str]:
    """Accuracy by the query's position at each model's best lr, for the runs that recorded it
    with one segment length (runs from before --segment, or with another length, are left out)."""
    spans = {span for runs in best_segments.values() for span, _ in runs}
    if len(spans) != 1:
        return [] if not spans else ["", f"(accuracy by query position left out: runs use segments of {sorted(spans)})"]
    span = spans.pop()
    n = max(len(acc) for runs in best_segments.values() for _, acc in runs)
    lines = ["", f"Accuracy by the query's position, in {span}-token segments, at each model's best lr (mean over the "
             "seeds that recorded it; – where no query falls):", "",
             "| model | seeds | " + " | ".join(f"{i * span}–{(i + 1) * span - 1}" for i in range(n)) + " |",
             "|---" * (n + 2) + "|"]
    for m, runs in best_segments.items():
        if not runs:
            continue
        cells = []
        for i in range(n):
            vals = [acc[i] for _, acc in runs if i < len(acc) and acc[i] is not None]
            cells.append(f"{sum(vals) / len(vals):.2f}" if vals else "–")
        lines.append(f"| {m} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def report(paths, curve_rows: int = 12) -> str:
    tables: dict[tuple, dict] = defaultdict(dict)
    for r in read_records(paths):  # a run recorded twice: the later line counts
        tables[tuple(r[k] for k in TABLE_KEY)][(r["model"], r["lr"], r["seed"])] = r
    if not tables:
        return "no MQAR records in " + ", ".join(map(str, paths))
    lines = []
    for key in sorted(tables, key=lambda k: (int(k[0].split("x")[0]), *k[1:])):
        runs = tables[key]
        setting, vocab, d_model, batch, max_steps, eval_examples, queries = key
        models = list(dict.fromkeys(m for m, _, _ in runs))
        lrs = sorted({lr for _, lr, _ in runs})
        ref = "hope" if "hope" in models else models[0]
        ref_params = next(r["params"] for (m, _, _), r in runs.items() if m == ref)
        lines += [f"### MQAR {setting}: vocab {vocab}, {queries} queries, d_model {d_model}, batch {batch}, up to {max_steps} steps, "
                  f"{eval_examples} eval examples", "",
                  "| model | params | best lr | acc (mean ± half-range) | seeds | "
                  + " | ".join(f"lr {lr:g}" for lr in lrs) + " | per-query acc at best lr | plateaued |",
                  "|---" * (7 + len(lrs)) + "|"]
        best_runs, best_segments = {}, {}
        for m in models:
            by_lr = {lr: [r for (mm, ll, _), r in sorted(runs.items(), key=lambda kv: kv[0][2]) if mm == m and ll == lr]
                     for lr in lrs}
            mean = {lr: sum(r["final_acc"] for r in rs) / len(rs) for lr, rs in by_lr.items() if rs}
            best = max(mean, key=lambda lr: (mean[lr], -lr))
            rs = by_lr[best]
            best_runs[m] = rs
            best_segments[m] = [(r["segment"], r["acc_by_segment"]) for r in rs if r.get("acc_by_segment")]
            positions = [r["acc_by_position"] for r in rs if r["acc_by_position"]]
            per_query = " ".join(f"{sum(c) / len(c):.2f}" for c in zip(*positions)) if positions else "–"
            params = rs[0]["params"]
            stops = ", ".join(f"{r['steps']}" for r in rs if r["plateaued"])
            lines.append(f"| {m} | {params / 1e6:.2f}M ({params / ref_params - 1:+.1%}) | {best:g} | "
                         f"{mean_spread([r['final_acc'] for r in rs])} | {len(rs)} | "
                         + " | ".join(f"{mean[lr]:.3f}" if lr in mean else "–" for lr in lrs)
                         + f" | {per_query} | {sum(r['plateaued'] for r in rs)}/{len(rs)}"
                         + (f" (at step {stops})" if stops else "")
                         + diverged_note(rs) + " |")
        points = sorted({t for rs in best_runs.values() for r in rs for t, _ in r["curve"]})
        if len(points) > curve_rows:  # evenly spaced rows, always the last
            points = [points[round(i * (len(points) - 1) / (curve_rows - 1))] for i in range(curve_rows)]
        lines += ["", "Accuracy against training tokens at each model's best lr (mean over seeds; a run that "
                  "stopped early keeps its last accuracy):", "",
                  "| tokens | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for t in points:
            cells = []
            for m in models:
                vals = [v for v in (_curve_at(r["curve"], t) for r in best_runs[m]) if v is not None]
                cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "–")
            lines.append(f"| {_tokens(t)} | " + " | ".join(cells) + " |")
        lines += _seed_table(best_runs)
        lines += _segment_table(best_segments)
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="64x4,128x8,256x16", help="SEQxPAIRS, comma-separated")
    ap.add_argument("--models", default="hope,hope-no-selfmod,hope-mlp,transformer,gdn",
                    help="comma list; NAME:KEY=VALUE;KEY=VALUE adds config overrides to one model")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every model (repeatable)")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--vocab", type=int, default=ZOOLOGY_VOCAB, help="vocabulary size (Zoology's: 8192)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--queries", type=int, default=None, help="queries per sequence (default: the number of pairs)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="the schedule's length; a plateau ends a run sooner")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8,
                    help="evals without a gain above 0.01 before a run stops (0: never)")
    ap.add_argument("--eval-examples", type=int, default=1000)
    ap.add_argument("--segment", type=int, default=16,
                    help="the final eval also reports accuracy by the position of the query, in spans of this "
                         "many tokens (set it to a chunk size to split within-chunk from cross-chunk recall)")
    add_run_arguments(ap, "runs/mqar/sweep.jsonl")
    args = ap.parse_args(argv)
    if args.segment < 1:
        ap.error(f"--segment must be at least 1, got {args.segment}")
    if args.report:
        print(report(args.report))
        return 0
    torch.set_num_threads(args.threads)
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
