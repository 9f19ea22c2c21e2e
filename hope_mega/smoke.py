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
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    import torch

    from .config import load_config
    from .model.lm import HopeLM

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.train.seed)
    model = HopeLM(cfg.model)
    T = args.seq_len or cfg.train.seq_len
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, T + 1))
    start = time.perf_counter()
    loss = model(ids[:, :-1], ids[:, 1:]).mean()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    print(f"{cfg.model.name}: loss {loss.item():.4f} (ln V = {torch.log(torch.tensor(float(cfg.model.vocab_size))).item():.4f}), "
          f"grad norm {grad_norm.item():.3f}, fwd+bwd {time.perf_counter() - start:.2f} s for {args.batch}x{T} tokens")
    return 0
