"""Parity and modular arithmetic: does a model learn a formal language at its training length, and
does it carry it to 2x and 4x that length? Hope, its reductions and the baselines, across learning
rates and seeds.

Tasks (`hope_mega.eval.synthetic`, after Deletang et al. 2023, "Neural Networks and the Chomsky
Hierarchy"):
- parity:   n bits, a query token, the parity of the ones (chance 0.5);
- modarith: an expression of n symbols over {0..4} with + - * (usual precedence), '=', its value
            mod 5 (chance 0.2; n odd).

Every training batch is `--batch` examples of one length n, drawn uniformly from 1 to
`--train-len` L, one example per row. Training on all lengths up to L is Deletang et al.'s setup;
it gives the short examples that make the task learnable at all (at a fixed length with one answer
per example, bench/quality.py, no model here left chance). Loss on the answers only. Held-out
sets (`--eval-examples`, one example per row, fixed seeds) at n = L, 2L and 4L (the next odd
length for modarith) give the accuracy at the training length and beyond it.

Models are bench/mqar.py's (2 layers, 2 heads, width `--d-model`, parameter counts matched the
same way), overrides ride on a model name the same way, e.g.

    --models 'hope-no-selfmod,hope-no-selfmod:model.titans_beta_max=2'

(β ∈ (0, 2) lets the delta rule's transition α(I − β k kᵀ) have a negative eigenvalue, which a
finite-precision linear recurrence needs to track parity: Grazzi et al. 2025, "Unlocking State-
Tracking in Linear RNNs Through Negative Eigenvalues"). Note that with hope-tiny's chunk size 32
the examples at L = 16 are one chunk each, so Hope's self-modification acts only at 2L and 4L
unless `model.chunk_size` is overridden.

Each run trains with bench/quality.py's optimizer and step (warmup + cosine over `--steps`),
evaluates every `--eval-every` steps, stops once the training-length accuracy plateaus
(bench/mqar.py's rule, `--patience`) or the training loss goes non-finite (`diverged`, counted in
the report as bench/mqar.py counts it) and appends one JSON line to `--out`; finished runs are
skipped, so a sweep resumes. `--report FILE...` prints per task the best lr per model by the
training-length accuracy (ties, as at 1.0, broken by the accuracy at 2L and 4L), mean ±
half-range over seeds at L, 2L and 4L, and the tokens each run took to reach 0.9 at L.

    OMP_NUM_THREADS=1 python bench/formal.py --task parity --models hope-no-selfmod,gdn --out runs/formal/parity.jsonl
    python bench/formal.py --report runs/formal/parity.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mqar import (CONFIGS, add_run_arguments, append_record, diverged_note, evaluate, param_count, parse_models,
                  read_records, sizing, split_top, stop_reason)
from quality import build, mean_spread, optimizer, train_step

from hope_mega.eval.synthetic import SyntheticBatch, make_modarith, make_parity

VOCAB = 16  # ids 4..6 (parity) and 4..12 (modarith); 0..3 are the specials
EVAL_SEED = 2**62 + 777  # outside every training batch's seed range (seed * 2**32 + step)
RUN_KEY = ("task", "train_len", "model", "d_model", "lr", "seed", "batch", "max_steps", "eval_every",
           "patience", "eval_examples")
TABLE_KEY = ("task", "train_len", "d_model", "batch", "max_steps", "eval_examples")


def _parity(n: int, length: int, seed: int) -> SyntheticBatch:
    return make_parity(n, length + 2, VOCAB, seed=seed)


def _modarith(n: int, length: int, seed: int) -> SyntheticBatch:
    return make_modarith(n, length + 2, VOCAB, seed=seed)


# task -> (examples of n symbols, the lengths n a task has up to L, the eval length for k * L)
TASKS = {
    "parity": (_parity, lambda L: list(range(1, L + 1)), lambda kL: kL),
    "modarith": (_modarith, lambda L: list(range(1, L + 1, 2)), lambda kL: kL | 1),
}


def training_batch(task: str, rows: int, train_len: int, seed: int) -> SyntheticBatch:
    """`rows` examples of one length drawn uniformly from the task's lengths up to `train_len`,
    one per row. One length per batch keeps every row a single document: no padding, and
    no per-document loop in the models whose CPU forms take one document at a time (fla's naive
    GDN)."""
    make, lengths_of, _ = TASKS[task]
    rng = np.random.default_rng(seed)
    n = int(rng.choice(lengths_of(train_len)))
    return make(rows, n, int(rng.integers(2**62)))


def eval_sets(task: str, train_len: int, examples: int) -> dict[int, SyntheticBatch]:
    make, _, eval_len = TASKS[task]
    return {k: make(examples, eval_len(k * train_len), EVAL_SEED + k) for k in (1, 2, 4)}


def run_one(spec, lr: float, seed: int, params: int, sets: dict, args) -> dict:
    name, extra, label = spec
    tag = f"[{args.task} L={args.train_len} {label} lr={lr:g} seed={seed}]"
    start = time.perf_counter()
    _, model = build(name, VOCAB, args.device, seed, sizing(name, args.d_model, extra), CONFIGS)
    opt = optimizer(model, lr)
    model.train()
    loss_sum, since, step, tokens = torch.zeros((), device=args.device), 0, 0, 0
    loss, stopped, diverged, curve, accs = float("nan"), False, False, [], {}
    while step < args.steps:
        b = training_batch(args.task, args.batch, args.train_len, seed * 2**32 + step)
        loss_sum += train_step(model, opt, (b.input_ids, b.labels, b.loss_mask.float()), step, args.steps, lr,
                               args.device, answers_only=True)
        step, since, tokens = step + 1, since + 1, tokens + b.input_ids.numel()
        if step % args.eval_every and step < args.steps:
            continue
        loss = loss_sum.item() / since
        loss_sum.zero_()
        since = 0
        accs = {k: evaluate(model, s, args.device)["accuracy"] for k, s in sets.items()}
        curve.append([tokens, accs[1], accs[2], accs[4]])
        print(f"{tag} step {step} tokens {tokens} loss {loss:.3f} acc L {accs[1]:.3f} 2L {accs[2]:.3f} "
              f"4L {accs[4]:.3f}", flush=True)
        reason = stop_reason(loss, [c[1] for c in curve], args.patience)
        diverged, stopped = reason == "diverged", reason == "plateaued"
        if diverged:
            print(f"{tag} diverged: the training loss since the last eval is {loss}; stopped", flush=True)
            break
        if stopped:
            print(f"{tag} plateaued at the training length; stopped", flush=True)
            break
    reached = next((t for t, a, _, _ in curve if a >= 0.9), None)
    return {
        "task": args.task, "train_len": args.train_len, "model": label, "config": name,
        "overrides": extra, "params": params, "d_model": args.d_model, "lr": lr, "seed": seed, "batch": args.batch,
        "max_steps": args.steps, "eval_every": args.eval_every, "patience": args.patience,
        "eval_examples": args.eval_examples, "steps": step, "tokens": tokens,
        "curve": curve, "acc": accs[1], "acc_2x": accs[2], "acc_4x": accs[4], "tokens_to_0.9": reached,
        "final_loss": loss, "plateaued": stopped, "diverged": diverged, "seconds": round(time.perf_counter() - start, 2),
        "device": args.device,
    }


def sweep(args) -> int:
    specs = parse_models(args.models, args.override)
    params = {}
    for spec in specs:
        count, why = param_count(spec[0], args.d_model, spec[1], VOCAB)
        if why:
            raise SystemExit(f"{spec[2]}: unavailable ({why})")
        params[spec[2]] = count
        print(f"{spec[2]}: {count / 1e6:.3f}M parameters", flush=True)
    sets = eval_sets(args.task, args.train_len, args.eval_examples)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec, lr, seed in itertools.product(specs, [float(x) for x in split_top(args.lrs, ",")],
                                            [int(x) for x in split_top(args.seeds, ",")]):
        want = {k: getattr(args, k) for k in RUN_KEY if hasattr(args, k)}
        want.update(model=spec[2], lr=lr, seed=seed, max_steps=args.steps)
        if any(all(r.get(k) == want[k] for k in RUN_KEY) for r in read_records([out])):
            print(f"[{args.task} {spec[2]} lr={lr:g} seed={seed}] already in {out}, skipped", flush=True)
            continue
        append_record(out, run_one(spec, lr, seed, params[spec[2]], sets, args))
    print(report([out]))
    return 0


def report(paths) -> str:
    tables: dict[tuple, dict] = defaultdict(dict)
    for r in read_records(paths):
        if "task" in r:
            tables[tuple(r[k] for k in TABLE_KEY)][(r["model"], r["lr"], r["seed"])] = r
    if not tables:
        return "no formal-language records in " + ", ".join(map(str, paths))
    lines = []
    for key in sorted(tables):
        runs = tables[key]
        task, L, d_model, batch, max_steps, eval_examples = key
        lrs = sorted({lr for _, lr, _ in runs})
        lines += [f"### {task}: trained on lengths 1..{L}, d_model {d_model}, batch {batch}, "
                  f"up to {max_steps} steps, {eval_examples} eval examples per length", "",
                  "| model | params | best lr | acc at L | at 2L | at 4L | seeds | "
                  + " | ".join(f"lr {lr:g} (at L)" for lr in lrs) + " | tokens to 0.9 at L | plateaued |",
                  "|---" * (9 + len(lrs)) + "|"]
        for m in dict.fromkeys(m for m, _, _ in runs):
            by_lr = {lr: [r for (mm, ll, _), r in sorted(runs.items()) if mm == m and ll == lr] for lr in lrs}
            mean = {lr: sum(r["acc"] for r in rs) / len(rs) for lr, rs in by_lr.items() if rs}
            beyond = {lr: sum(r["acc_2x"] + r["acc_4x"] for r in by_lr[lr]) for lr in mean}
            # ties at L (1.0 is common) go to the lr that carried the task further
            best = max(mean, key=lambda lr: (mean[lr], beyond[lr] / len(by_lr[lr]), -lr))
            rs = by_lr[best]
            reached = ", ".join("–" if r["tokens_to_0.9"] is None else f"{r['tokens_to_0.9'] / 1e6:.2f}M" for r in rs)
            accs = " | ".join(mean_spread([r[k] for r in rs]) for k in ("acc", "acc_2x", "acc_4x"))
            lines.append(f"| {m} | {rs[0]['params'] / 1e6:.3f}M | {best:g} | {accs} | {len(rs)} | "
                         + " | ".join(f"{mean[lr]:.3f}" if lr in mean else "–" for lr in lrs)
                         + f" | {reached} | {sum(r['plateaued'] for r in rs)}/{len(rs)}{diverged_note(rs)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="parity", choices=sorted(TASKS))
    ap.add_argument("--train-len", type=int, default=16, help="the longest training example, in symbols (L)")
    ap.add_argument("--models", default="hope,hope-no-selfmod,transformer,gdn",
                    help="comma list; NAME:KEY=VALUE;KEY=VALUE adds config overrides to one model")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every model (repeatable)")
    ap.add_argument("--lrs", default="1e-3,3e-3")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128, help="examples per training step")
    ap.add_argument("--steps", type=int, default=2000, help="the schedule's length; a plateau ends a run sooner")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--patience", type=int, default=8,
                    help="evals without a gain above 0.01 at L before a run stops (0: never)")
    ap.add_argument("--eval-examples", type=int, default=500)
    add_run_arguments(ap, "runs/formal/sweep.jsonl")
    args = ap.parse_args(argv)
    if args.task == "modarith" and args.train_len % 2 == 0:  # else "at L" would score an untrained length
        ap.error(f"--train-len {args.train_len}: modarith expressions have odd lengths; give an odd L")
    if args.report:
        print(report(args.report))
        return 0
    torch.set_num_threads(args.threads)
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
