"""Training throughput of hope-tiny against Transformer++ of the same size, on this machine.

One process, fp32, a full optimizer step (forward, backward, AdamW) per measurement, at
T = 512 and 2048. Prints tokens/s for each model, Hope/Transformer++ ratios, and MFU from the
Hope-aware FLOPs of `hope-mega params` against this machine's measured fp32 matmul peak (a large
GEMM timed in the same process; CPUs publish no peak that matters here).

    python bench/train_throughput.py [--tokens-per-step 8192] [--steps 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hope_mega.config import load_config
from hope_mega.model.lm import HopeLM
from hope_mega.params import flops_per_token

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def tokens_per_second(config: str, seq_len: int, tokens_per_step: int, steps: int) -> tuple[float, float]:
    cfg = load_config(CONFIGS / f"{config}.yaml", [f"train.seq_len={seq_len}"])
    torch.manual_seed(0)
    model = HopeLM(cfg.model, eos_id=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = max(1, tokens_per_step // seq_len)
    ids = torch.randint(3, cfg.model.vocab_size, (batch, seq_len + 1))
    ids[:, :: max(2, seq_len // 4)] = 2  # packed documents: EOS every quarter row
    best = float("inf")
    for i in range(steps + 1):  # the first step warms up allocators and caches
        start = time.perf_counter()
        loss = model(ids[:, :-1], ids[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            best = min(best, time.perf_counter() - start)
    return batch * seq_len / best, flops_per_token(cfg.model, seq_len)["total_flops_per_token"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens-per-step", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_flops()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; measured GEMM peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'T':>5} {'model':>17} {'tokens/s':>9} {'MFU':>6}   hope/transformer tokens/s")
    for T in [int(t) for t in args.lengths.split(",")]:
        rows = {}
        for name in ("hope-tiny", "transformer-tiny"):
            tps, fpt = tokens_per_second(name, T, args.tokens_per_step, args.steps)
            rows[name] = tps
            print(f"{T:>5} {name:>17} {tps:>9.0f} {100 * tps * fpt / peak:>5.1f}%", flush=True)
        print(f"{T:>5} {'ratio':>17} {'':>9} {'':>6}   {rows['hope-tiny'] / rows['transformer-tiny']:.2f}")


if __name__ == "__main__":
    main()
