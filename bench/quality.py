"""Does Hope learn better? hope-tiny against Transformer++, MLP memories and ablations, on CPU.

Five models of equal parameter count (±5%), each trained from the same seed with the same
optimizer (CMS-aware AdamW, warmup + cosine) and the same tokens:

- hope            configs/hope-tiny.yaml
- hope-mlp        configs/hope-mlp-tiny.yaml (the paper's MLP memories, spec §2b)
- transformer     configs/transformer-tiny.yaml (Transformer++)
- hope-no-selfmod hope with one chunk per sequence: the adaptive memories stay at their
                  learned initial states within a sequence (spec §2: it is then Gated DeltaNet
                  with a learned initial state)
- hope-no-cms     hope with one CMS level of period 1 and the summed hidden width

Tasks (each a fresh model, trained on that task only):
- lm:      language modelling on the built-in corpus (`hope-mega demo`'s data); held-out
           perplexity and bits per byte on the val split
- mqar:    multi-query associative recall, trained on 4 and 8 pairs, scored at each
- parity / modarith: trained at length L, scored at L, 2L and 4L (length generalisation)

    python bench/quality.py --seed 0 --out runs/quality/seed0.json
    python bench/quality.py --seed 0 --lm-steps 20000 --task-steps 5000 --device cuda   # bigger
    # the LM only, on another corpus (its tokenizer and shards are built in --workdir):
    python bench/quality.py --tasks lm --models hope --corpus CORPUS_DIR --workdir runs/lm/work --lm-steps 1200 --batch 16

MQAR and the formal tasks here are the early, tiny-budget versions; bench/mqar.py and
bench/formal.py measure recall and length generalisation properly.

The defaults take about 30 minutes on one CPU core (run two seeds side by side on two cores, each
with its own --workdir: two processes reading the same local MDS folder at the same moment can
collide on streaming's shared-memory names).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from hope_mega.config import load_config
from hope_mega.eval.scoring import score
from hope_mega.eval.synthetic import make_modarith, make_mqar, make_parity
from hope_mega.model.lm import HopeLM
from hope_mega.ops.common import host_to_device
from hope_mega.optim.cms_adamw import CMSAdamW, cosine_lr, param_groups
from hope_mega.params import parameter_counts

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "hope": ("hope-tiny.yaml", []),
    "hope-mlp": ("hope-mlp-tiny.yaml", []),
    "transformer": ("transformer-tiny.yaml", []),
    "hope-no-selfmod": ("hope-tiny.yaml", ["model.chunk_size=1048576"]),
    "hope-no-cms": ("hope-tiny.yaml", ["model.cms_levels=[{hidden: 512, period: 1}]"]),
}
TASKS = ("lm", "mqar", "parity", "modarith")
TASK_VOCAB = 64  # synthetic tasks: ids 4..63 (0-3 are the tokenizer's specials)


def model_config(name: str, vocab: int, extra=(), models=MODELS):
    """The config of `models[name]` at `vocab`, with `extra` overrides applied last."""
    file, overrides = models[name]
    return load_config(ROOT / "configs" / file, [*overrides, f"model.vocab_size={vocab}", *extra])


def build(name: str, vocab: int, device: str, seed: int, extra=(), models=MODELS):
    cfg = model_config(name, vocab, extra, models)
    torch.manual_seed(seed)
    return cfg, HopeLM(cfg.model, eos_id=2).to(device)


def optimizer(model, lr: float) -> CMSAdamW:
    return CMSAdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))


def forward(model, ids: torch.Tensor, device: str, labels: torch.Tensor | None = None) -> torch.Tensor:
    """model(ids) for a host batch: the document layout is worked out on the host and everything
    is copied asynchronously, so that on a GPU the step never waits for the device."""
    docs = model.documents(ids).to(device)
    ids = host_to_device(ids, device)
    return model(ids, None if labels is None else host_to_device(labels, device), docs)


def train_step(model, opt, batch, step: int, steps: int, lr: float, device: str,
               answers_only: bool = False) -> torch.Tensor:
    """One step at the warmup + cosine lr of `step` of `steps`; batch = (input_ids, labels,
    loss_mask) on the host, the mask 0/1. The loss stays on the device: reading it waits for the
    step. answers_only: the LM head runs at the masked positions only, for the same loss and
    gradients; where answers are few (MQAR: 4 of 64 tokens, 8192 ids) that halves the step."""
    for group in opt.param_groups:
        group["lr"] = cosine_lr(step, lr, max(1, steps // 20), steps, 0.1)
    ids, labels, mask = batch
    if answers_only:
        at = mask.t().flatten().nonzero().squeeze(1)  # on the host: a device nonzero would wait
        hidden = model.hidden_states(host_to_device(ids, device), model.documents(ids).to(device))
        hidden = hidden.flatten(0, 1).index_select(0, host_to_device(at, device))
        targets = host_to_device(labels.t().flatten()[at], device)
        loss = model.layers.cross_entropy(model.logits(hidden)[:, None], targets[:, None]).mean()
    else:
        per_token = forward(model, ids, device, labels.clamp_min(0))
        mask = host_to_device(mask, device)
        loss = (per_token * mask).sum() / mask.sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.detach()


def train(model, cfg, batches, steps: int, lr: float, device: str) -> list[float]:
    """batches(step) -> (input_ids, labels, loss_mask). Returns the loss of every step."""
    opt = optimizer(model, lr)
    model.train()
    return [train_step(model, opt, batches(step), step, steps, lr, device).item() for step in range(steps)]


def lm_data(workdir: Path, seq_len: int, corpus: Path | None = None):
    """A 4K tokenizer and MDS shards of `corpus` (the built-in demo corpus when None), built in
    `workdir` on first use, as train and val token rows. One workdir per corpus: what is already
    built there is reused whatever `corpus` says."""
    from hope_mega.cli import main
    from hope_mega.data.default_corpus import write_default_corpus
    from hope_mega.data.loader import read_rows
    from hope_mega.data.tokenizer import load_tokenizer

    tok, data = workdir / "tokenizer", workdir / "data"
    if corpus is None:
        corpus = workdir / "corpus"
        if not corpus.is_dir():
            write_default_corpus(corpus)
    elif not corpus.is_dir():
        raise SystemExit(f"--corpus {corpus}: no such directory")
    if not (tok / "tokenizer.model").is_file():
        main(["tokenizer", "train", "--input", str(corpus), "--output", str(tok), "--vocab-size", "4096"])
    if not (data / "dataset_card.json").is_file():
        main(["prep", "--tokenizer", str(tok), "--input", str(corpus), "--output", str(data),
              "--seq-len", str(seq_len), "--workers", "2", "--split-val", "0.01", "--quiet"])
    return (torch.from_numpy(read_rows(str(data), "train").astype(np.int64)),
            torch.from_numpy(read_rows(str(data), "val").astype(np.int64)), load_tokenizer(tok))


@torch.no_grad()
def lm_eval(model, val: torch.Tensor, tok, device: str, pad_id: int) -> dict:
    model.eval()
    nll, tokens, n_bytes = 0.0, 0, 0
    for start in range(0, len(val), 16):
        rows = val[start : start + 16].to(device)
        inputs, labels = rows[:, :-1], rows[:, 1:]
        mask = labels != pad_id
        nll += (model(inputs, labels) * mask).sum().item()
        tokens += mask.sum().item()
        for row, m in zip(labels.cpu(), mask.cpu()):
            n_bytes += len(tok.decode(row[m].tolist()).encode("utf-8"))
    return {"ppl": math.exp(nll / tokens), "bpb": nll / math.log(2) / n_bytes, "tokens": tokens}


def synthetic_batches(make, batch: int, seed: int):
    def batches(step: int):
        b = make(batch, seed * 1_000_003 + step)
        return b.input_ids, b.labels, b.loss_mask.float()

    return batches


def run(args) -> dict:
    device, seed = args.device, args.seed
    results: dict = {"seed": seed, "args": vars(args), "models": {}}
    names = args.tasks.split(",")
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise SystemExit(f"--tasks: unknown {', '.join(unknown)} (known: {', '.join(TASKS)})")
    if "lm" in names:
        train_rows, val_rows, tok = lm_data(Path(args.workdir), args.seq_len,
                                            Path(args.corpus) if args.corpus else None)
    L = args.formal_len
    tasks = {
        "mqar": (lambda n, s: make_mqar(n, 64, TASK_VOCAB, num_pairs=4 + 4 * (s % 2), seed=s),
                 {"mqar-4pairs": lambda s: make_mqar(256, 64, TASK_VOCAB, num_pairs=4, seed=s),
                  "mqar-8pairs": lambda s: make_mqar(256, 64, TASK_VOCAB, num_pairs=8, seed=s)}),
        "parity": (lambda n, s: make_parity(n, L, TASK_VOCAB, seed=s),
                   {f"parity@{k}L": (lambda s, k=k: make_parity(256, k * L, TASK_VOCAB, seed=s)) for k in (1, 2, 4)}),
        "modarith": (lambda n, s: make_modarith(n, L + 1, TASK_VOCAB, seed=s),
                     {f"modarith@{k}L": (lambda s, k=k: make_modarith(256, k * L + 1, TASK_VOCAB, seed=s)) for k in (1, 2, 4)}),
    }
    for name in args.models.split(","):
        start = time.perf_counter()
        cfg, model = build(name, 4096, device, seed)
        entry = {"params_lm": parameter_counts(cfg.model)["total_params"]}
        if "lm" in names:
            gen = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(train_rows), generator=gen)

            def lm_batches(step):
                idx = order[(step * args.batch + torch.arange(args.batch)) % len(order)]
                rows = train_rows[idx]
                labels = rows[:, 1:]
                return rows[:, :-1], labels, (labels != tok.pad_id).float()

            losses = train(model, cfg, lm_batches, args.lm_steps, args.lr, device)
            entry["lm"] = {"train_loss_last50": float(np.mean(losses[-50:])),
                           "train_tokens": args.lm_steps * args.batch * (args.seq_len - 1),
                           "epochs": args.lm_steps * args.batch / len(train_rows),
                           **lm_eval(model, val_rows, tok, device, tok.pad_id)}
        for task, (make_train, evals) in tasks.items():
            if task not in names:
                continue
            cfg_t, model_t = build(name, TASK_VOCAB, device, seed)
            losses = train(model_t, cfg_t, synthetic_batches(make_train, args.batch, seed + 17), args.task_steps, args.lr, device)
            entry[task] = {"train_loss_last50": float(np.mean(losses[-50:]))}
            model_t.eval()
            for label, make_eval in evals.items():
                entry[task][label] = score(lambda ids: model_t(ids.to(device)).float().cpu(), make_eval(10_000 + seed))["accuracy"]
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results["models"][name] = entry
        print(json.dumps({name: entry}), flush=True)
    return results


def mean_spread(values: list[float], digits: int = 3) -> str:
    """Mean ± half the range: with two or three seeds, the spread is the range, not a deviation."""
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} ±{(max(values) - min(values)) / 2:.{digits}f}"


def lm_report(paths: list[str]) -> str:
    """One row per model and learning rate over the result files of its seeds: held-out
    perplexity and bits per byte (mean ± half-range), the seeds, the training tokens and the wall
    time per seed."""
    runs: dict[tuple[str, float], list[tuple[int, dict]]] = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        for name, entry in results["models"].items():
            if "lm" in entry:
                runs.setdefault((name, results["args"]["lr"]), []).append((results["seed"], entry))
    lines = ["| model | params | lr | held-out ppl | bits per byte | seeds | train tokens (epochs) | s per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, lr), rs in runs.items():
        rs.sort(key=lambda r: r[0])
        lm = [e["lm"] for _, e in rs]
        tokens = sorted({x["train_tokens"] for x in lm})
        if len(tokens) > 1:
            raise SystemExit(f"{name}: seeds trained on different token counts {tokens}; report each budget apart")
        seeds = ", ".join(str(seed) for seed, _ in rs)
        seconds = ", ".join(f"{e['seconds']:.0f}" for _, e in rs)
        lines.append(f"| {name} | {rs[0][1]['params_lm'] / 1e6:.2f}M | {lr:g} | {mean_spread([x['ppl'] for x in lm], 2)} | "
                     f"{mean_spread([x['bpb'] for x in lm])} | {seeds} | {tokens[0] / 1e6:.2f}M ({lm[0]['epochs']:.2f}) | "
                     f"{seconds} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    cols = ["lm ppl", "lm bpb", "mqar-4pairs", "mqar-8pairs", "parity@1L", "parity@2L", "parity@4L",
            "modarith@1L", "modarith@2L", "modarith@4L"]
    lines = ["| model | params | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, e in results["models"].items():
        vals = [f"{e['lm']['ppl']:.1f}", f"{e['lm']['bpb']:.3f}"] if "lm" in e else ["–", "–"]
        for task, labels in (("mqar", cols[2:4]), ("parity", cols[4:7]), ("modarith", cols[7:])):
            vals += [f"{e[task][c]:.3f}" if task in e else "–" for c in labels]
        lines.append(f"| {name} | {e['params_lm'] / 1e6:.2f}M | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tasks", default=",".join(TASKS), help="which of " + ", ".join(TASKS))
    ap.add_argument("--corpus", default=None,
                    help="a folder of .txt/.jsonl files to train the LM on instead of the built-in corpus")
    ap.add_argument("--lm-steps", type=int, default=600)
    ap.add_argument("--task-steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--formal-len", type=int, default=16, help="training length L of parity / modarith")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="runs/demo", help="where the demo corpus, tokenizer and data are (or go)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="print the LM table (mean ± half-range over seeds) of these --out files and exit")
    args = ap.parse_args()
    if args.report:
        print(lm_report(args.report))
        return
    torch.set_num_threads(args.threads)
    results = run(args)
    print(table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
