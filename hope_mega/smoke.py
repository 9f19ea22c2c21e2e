"""`hope-mega smoke`: one forward/backward of a config's model on random tokens, printing the loss.

A quick check that a config builds and runs on this machine, without data or a tokenizer.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("smoke", help="build a config's model and run one forward/backward on random tokens")
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=None, help="default: train.seq_len")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: a GPU when there is one")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    import torch

    from .config import load_config
    from .device import pick_device
    from .model.lm import HopeLM

    cfg = load_config(args.config, args.overrides)
    device = pick_device(args.device)
    # The trainer's precision: bf16 autocast over fp32 parameters on a GPU unless train.dtype says otherwise.
    bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.train.seed)
    model = HopeLM(cfg.model).to(device)
    T = args.seq_len or cfg.train.seq_len
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, T + 1), device=device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(ids[:, :-1], ids[:, 1:]).mean()
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    print(f"{cfg.model.name} on {device} ({'bf16 autocast' if bf16 else 'fp32'}): loss {loss.item():.4f} "
          f"(ln V = {torch.log(torch.tensor(float(cfg.model.vocab_size))).item():.4f}), grad norm {grad_norm.item():.3f}, "
          f"fwd+bwd {time.perf_counter() - start:.2f} s for {args.batch}x{T} tokens")
    return 0
