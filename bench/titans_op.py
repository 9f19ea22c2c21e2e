"""Titans op and layer timings on this machine, as ratios measured in one process.

1. fwd+bwd of `titans_reference` vs `titans_chunk` at T = 2048 (one sequence), printed as a ratio.
2. fwd+bwd of one Titans mixer next to one causal-attention mixer of the same width at
   T = 1K, 2K, 4K, 8K, so the growth with T is visible (linear vs quadratic).

    python bench/titans_op.py [--heads 4 --head-dim 64 --chunk 64 --T 2048]
"""

from __future__ import annotations

import argparse
import time

import torch

from hope_mega.config import ModelConfig
from hope_mega.model.attention import AttentionMixer
from hope_mega.model.documents import Documents
from hope_mega.model.layers import TorchLayers
from hope_mega.model.titans import TitansMixer
from hope_mega.ops import titans_chunk, titans_reference


def fwd_bwd_seconds(fn, inputs, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        start = time.perf_counter()
        out = fn(*leaves)
        out.float().square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best


def op_inputs(T, H, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    us = [torch.randn(1, T, H, D, generator=g) for _ in range(5)]
    params = [
        torch.randn(H, 6, D, D, generator=g) * 0.02,
        torch.randn(H, D, generator=g) * D**-0.5,
        torch.zeros(H),
        torch.randn(H, D, generator=g) * D**-0.5,
        torch.full((H,), -3.0),
        torch.rand(H, generator=g) * 2.7,
    ]
    return us + params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--layer-lengths", default="1024,2048,4096,8192")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    H, D, C = args.heads, args.head_dim, args.chunk
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, H={H} d_h={D} C={C}")

    inputs = op_inputs(args.T, H, D)
    t_chunk = fwd_bwd_seconds(lambda *x: titans_chunk(*x, chunk_size=C)[0], inputs, repeats=3)
    t_ref = fwd_bwd_seconds(lambda *x: titans_reference(*x, chunk_size=C)[0], inputs)
    print(f"op fwd+bwd T={args.T}: reference {t_ref:.3f} s, chunk {t_chunk:.3f} s, chunk speedup {t_ref / t_chunk:.1f}x")

    d = H * D
    cfg = ModelConfig(d_model=d, n_heads=H, chunk_size=C, n_layers=1)
    torch.manual_seed(0)
    mixers = {"titans": TitansMixer(cfg, TorchLayers(), 1), "attention": AttentionMixer(cfg, TorchLayers(), 1)}
    print("layer fwd+bwd (B=1, d_model=%d):" % d)
    print(f"{'T':>6} {'titans s':>9} {'attention s':>11} {'titans/attention':>16}")
    for T in [int(t) for t in args.layer_lengths.split(",")]:
        x = torch.randn(T, 1, d)
        docs = Documents.from_tokens(torch.ones(1, T, dtype=torch.long), None)
        times = {name: fwd_bwd_seconds(lambda x, m=m: m(x, docs), [x], repeats=2) for name, m in mixers.items()}
        print(f"{T:>6} {times['titans']:>9.3f} {times['attention']:>11.3f} {times['titans'] / times['attention']:>16.2f}")


if __name__ == "__main__":
    main()
