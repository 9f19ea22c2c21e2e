"""Training throughput of Hope against Transformer++ of the same size, on this machine.

One process, a full optimizer step (forward, backward, AdamW) per measurement, on packed rows (an
EOS every quarter row). Prints tokens/s for each model, the Hope/Transformer++ ratio, and MFU
from the Hope-aware FLOPs of `hope-mega params`.

    python bench/train_throughput.py --device cpu [--tokens-per-step 8192] [--steps 3] [--rounds 2]
  hope-tiny vs transformer-tiny, fp32, at T = 512 and 2048; MFU against this machine's fp32 matmul
  peak, measured on a large GEMM in the same process (CPUs publish no peak that matters here).

    python bench/train_throughput.py --device cuda
  hope-760m vs transformer-760m at T = 4096, one sequence per step, bf16 autocast with fp32
  weights and AdamW state (the trainer's precision: bf16 compute, fp32 masters); MFU against the
  device's dense bf16 peak (hope_mega.metrics; --peak-tflops otherwise) and peak memory. Add
  `--configs hope-1.3b transformer-1.3b` for the 1.3B pair.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hope_mega.config import load_config  # noqa: E402
from hope_mega.metrics import device_peak_tflops  # noqa: E402
from hope_mega.model.lm import HopeLM  # noqa: E402
from hope_mega.params import flops_per_token  # noqa: E402

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


class Trainer:
    """One model and its AdamW on a fixed batch of packed rows; `step()` times a full optimizer step."""

    def __init__(self, config: str, seq_len: int, tokens_per_step: int, device: str):
        cfg = load_config(CONFIGS / f"{config}.yaml", [f"train.seq_len={seq_len}"])
        self.cuda = device == "cuda"
        torch.manual_seed(0)
        self.model = HopeLM(cfg.model, eos_id=2).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=self.cuda)
        batch = max(1, tokens_per_step // seq_len)
        self.ids = torch.randint(3, cfg.model.vocab_size, (batch, seq_len + 1), device=device)
        self.ids[:, :: max(2, seq_len // 4)] = 2  # packed documents: EOS every quarter row
        self.tokens = batch * seq_len
        self.flops_per_token = flops_per_token(cfg.model, seq_len)["total_flops_per_token"]
        self.best = float("inf")

    def step(self) -> float:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = self.model(self.ids[:, :-1], self.ids[:, 1:]).float().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _run(configs: list[str], seq_len: int, tokens_per_step: int, steps: int, device: str, rounds: int) -> dict:
    """tokens/s (best step) of the configs, built together, measured in `rounds` rounds of `steps`
    consecutive steps per config."""
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainers = {}
    for name in configs:
        try:
            trainers[name] = Trainer(name, seq_len, tokens_per_step, device)
            trainers[name].step()  # the first step warms up kernels, allocators and caches
        except torch.cuda.OutOfMemoryError:
            trainers.pop(name, None)
            torch.cuda.empty_cache()
            print(f"{seq_len:>5} {name:>17} out of memory", flush=True)
    for _ in range(rounds):
        for t in trainers.values():
            t.step()  # back to this model: its first step refills caches and the allocator
            for _ in range(steps):
                t.best = min(t.best, t.step())
    out = {name: {"tokens_per_s": t.tokens / t.best, "flops_per_token": t.flops_per_token} for name, t in trainers.items()}
    del trainers
    if cuda:
        for r in out.values():
            r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    return out


def measure(configs: list[str], seq_len: int, tokens_per_step: int, steps: int, device: str, rounds: int) -> dict:
    """tokens/s of each config. On CPU the configs take turns, `steps` consecutive steps each
    (as in training), for `rounds` rounds, so that a machine whose speed drifts (shared cores,
    memory bandwidth) moves both sides of the ratio alike. On a GPU one model is resident at a
    time, measured once, so that the peak memory reported is that model's own."""
    if device != "cuda":
        return _run(configs, seq_len, tokens_per_step, steps, device, rounds)
    return {name: r for c in configs for name, r in _run([c], seq_len, tokens_per_step, steps, device, 1).items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    ap.add_argument("--configs", nargs=2, help="Hope config, then its Transformer++ baseline (configs/*.yaml)")
    ap.add_argument("--tokens-per-step", type=int, help="default: 8192 on cpu, one sequence on cuda")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per model and round")
    ap.add_argument("--rounds", type=int, default=2, help="cpu: rounds in which the models take turns")
    ap.add_argument("--lengths", help="default: 512,2048 on cpu, 4096 on cuda")
    ap.add_argument("--threads", type=int, default=None, help="cpu: torch threads")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="cuda: device peak if not a known GPU")
    args = ap.parse_args(argv)
    for flag in ("steps", "rounds"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.configs or (["hope-760m", "transformer-760m"] if cuda else ["hope-tiny", "transformer-tiny"])
    lengths = [int(t) for t in (args.lengths or ("4096" if cuda else "512,2048")).split(",")]
    if cuda:
        peak_tflops = device_peak_tflops(args.peak_tflops)
        peak = peak_tflops * 1e12 if peak_tflops else None
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast; "
              f"dense bf16 peak {peak_tflops or 'unknown'} TFLOP/s")
    else:
        peak = matmul_peak_flops()
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; measured GEMM peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'T':>5} {'model':>17} {'tokens/s':>9} {'MFU':>6} {'peak GiB':>8}   hope/transformer tokens/s")
    for T in lengths:
        rows = {}
        for name, r in measure(configs, T, args.tokens_per_step or (T if cuda else 8192), args.steps, device, args.rounds).items():
            rows[name] = r["tokens_per_s"]
            mfu = f"{100 * r['tokens_per_s'] * r['flops_per_token'] / peak:>5.1f}%" if peak else f"{'-':>6}"
            mem = f"{r['peak_gib']:>8.1f}" if "peak_gib" in r else f"{'-':>8}"
            print(f"{T:>5} {name:>17} {r['tokens_per_s']:>9.0f} {mfu} {mem}", flush=True)
        if len(rows) == 2:
            print(f"{T:>5} {'ratio':>17} {'':>9} {'':>6} {'':>8}   {rows[configs[0]] / rows[configs[1]]:.2f}")


if __name__ == "__main__":
    main()
