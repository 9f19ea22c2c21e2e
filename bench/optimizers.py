"""Does M3 train Hope better than AdamW, and does it help Hope more than attention? On CPU.

hope-tiny and transformer-tiny (Transformer++), each trained with CMS AdamW and with M3 (spec §5;
AdamW for the non-matrix parameters) over a small learning-rate sweep per optimizer (M3's lr is
not AdamW's), from the same seed on the same tokens of the built-in corpus (`hope-mega demo`'s
data), warmup + cosine, gradient clipping at 1. Prints, per run, the held-out loss every
--eval-every steps on a fixed slice of the val split, the final perplexity on the whole val split
and the wall time per step; then, per model, the best M3 run against the best AdamW run as ratios
(perplexity, time per step) measured in this process.

    OMP_NUM_THREADS=1 python bench/optimizers.py --seed 0 --workdir runs/bench-opt0 --out runs/optimizers/seed0.json

Two seeds side by side on two cores, each with its own --workdir (see bench/quality.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import build, lm_data, lm_eval  # noqa: E402  (the same models, data and scoring)

from hope_mega.config import load_config  # noqa: E402
from hope_mega.optim.cms_adamw import CMSAdamW, cosine_lr, param_groups  # noqa: E402
from hope_mega.optim.m3 import M3, m3_param_groups  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_optimizer(model, kind: str, lr: float, adamw_lr: float, m3_settings: list[str]):
    if kind == "adamw":
        return CMSAdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95)), lr
    cfg = load_config(ROOT / "configs" / "hope-tiny.yaml",
                      [f"train.lr={adamw_lr}", f"m3.lr={lr}", "train.optimizer=m3", *m3_settings])  # fmt: skip
    return M3(m3_param_groups(model.named_parameters(), cfg), lr=adamw_lr), adamw_lr


@torch.no_grad()
def held_out_loss(model, rows: torch.Tensor, pad_id: int) -> float:
    model.eval()
    inputs, labels = rows[:, :-1], rows[:, 1:]
    mask = (labels != pad_id).float()
    loss = ((model(inputs, labels) * mask).sum() / mask.sum()).item()
    model.train()
    return loss


def train_one(name, kind, lr, args, train_rows, val_rows, tok) -> dict:
    cfg, model = build(name, 4096, "cpu", args.seed)
    opt, base_lr = make_optimizer(model, kind, lr, args.adamw_lr, args.m3)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed))
    curve_rows = val_rows[: args.curve_rows]
    curve, seconds = [], 0.0
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, base_lr, max(1, args.steps // 20), args.steps, 0.1)
        rows = train_rows[order[(step * args.batch + torch.arange(args.batch)) % len(order)]]
        start = time.perf_counter()
        labels = rows[:, 1:]
        mask = (labels != tok.pad_id).float()
        loss = (model(rows[:, :-1], labels) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - start
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            curve.append((step + 1, round(held_out_loss(model, curve_rows, tok.pad_id), 4)))
    final = lm_eval(model, val_rows, tok, "cpu", tok.pad_id)
    ppl = final["ppl"] if math.isfinite(final["ppl"]) else float("inf")
    return {"model": name, "optimizer": kind, "lr": lr, "ppl": ppl, "bpb": final["bpb"],
            "s_per_step": seconds / args.steps, "curve": curve}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="hope,transformer")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--adamw-lrs", default="1e-3,3e-3", help="AdamW sweep")
    ap.add_argument("--m3-lrs", default="3e-5,1e-4", help="M3 sweep (the matrices' lr)")
    ap.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of the non-matrix parameters under M3")
    ap.add_argument("--m3", nargs="*", default=["m3.eps=1e-4"], help="further m3.* settings")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--curve-rows", type=int, default=32, help="val rows of the held-out loss curve")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_rows, val_rows, tok = lm_data(Path(args.workdir), args.seq_len)
    runs = []
    for name in args.models.split(","):
        for kind, lrs in (("adamw", args.adamw_lrs), ("m3", args.m3_lrs)):
            for lr in map(float, lrs.split(",")):
                run = train_one(name, kind, lr, args, train_rows, val_rows, tok)
                runs.append(run)
                print(json.dumps(run), flush=True)
    for name in args.models.split(","):
        best = {k: min((r for r in runs if r["model"] == name and r["optimizer"] == k), key=lambda r: r["ppl"])
                for k in ("adamw", "m3")}  # fmt: skip
        a, m = best["adamw"], best["m3"]
        print(f"{name}: best AdamW lr {a['lr']:g} ppl {a['ppl']:.2f} ({a['s_per_step']:.3f} s/step); "
              f"best M3 lr {m['lr']:g} ppl {m['ppl']:.2f} ({m['s_per_step']:.3f} s/step); "
              f"M3/AdamW ppl x{m['ppl'] / a['ppl']:.3f}, time per step x{m['s_per_step'] / a['s_per_step']:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
