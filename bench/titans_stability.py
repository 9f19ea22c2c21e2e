"""Does the Titans recurrence stay bounded over a long sequence, with and without unit-norm values?

Spec §2 normalises v and v̂ because the self-modifying loop (the self-generated values v̂ grow with
the states, the states with their targets) otherwise runs away at long T. `model.titans_value_norm:
false` drops that norm (an MQAR ablation, BENCHMARKS.md), so this script measures what the norm
buys: the op's forward over one sequence of T tokens from zero initial states, for each chunk size
C and per-head input norm ‖u‖, with the per-head parameters of a freshly initialised
`TitansMixer`; inputs are Gaussian of the given per-head norm. It prints, per (value norm, C, ‖u‖), whether every output is finite, the
largest output norm and the largest final-state Frobenius norm. A chunk size ≥ T is the C ≥ T
reduction (no self-modification inside the sequence, Gated DeltaNet with a learned initial state).

    OMP_NUM_THREADS=1 python bench/titans_stability.py [--T 2048 --chunk-sizes 64,2048 --u-norms 2,5,16]
"""

from __future__ import annotations

import argparse

import torch

from hope_mega.config import ModelConfig
from hope_mega.model.layers import TorchLayers
from hope_mega.model.titans import TitansMixer
from hope_mega.ops.common import TitansVariant
from hope_mega.ops.titans_linear.chunk import titans_chunk


def mixer_params(H: int, D: int, seed: int) -> list[torch.Tensor]:
    """s0, w_eta, b_eta, w_alpha, b_alpha, a_log of a new mixer: zero states, the spec's gate draws."""
    torch.manual_seed(seed)
    mixer = TitansMixer(ModelConfig(d_model=H * D, n_heads=H), TorchLayers(), 1)
    return [p.detach() for p in (mixer.s0, mixer.w_eta, mixer.b_eta, mixer.w_alpha, mixer.b_alpha, mixer.a_log)]


def measure(T: int, H: int, D: int, C: int, u_norm: float, value_norm: bool, seed: int) -> tuple[bool, float, float]:
    g = torch.Generator().manual_seed(seed)
    us = [torch.randn(1, T, H, D, generator=g) * (u_norm / D**0.5) for _ in range(5)]
    with torch.no_grad():
        o, s = titans_chunk(*us, *mixer_params(H, D, seed), chunk_size=C, output_final_state=True,
                            variant=TitansVariant(value_norm=value_norm))  # fmt: skip
    finite = bool(torch.isfinite(o).all() and torch.isfinite(s).all())
    return finite, o.norm(dim=-1).max().item(), s.flatten(-2).norm(dim=-1).max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--chunk-sizes", default="64,2048")
    ap.add_argument("--u-norms", default="2,5,16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"T = {args.T}, H = {args.heads}, d_h = {args.head_dim}, zero initial states, seed {args.seed}\n")
    print("| value norm | C | per-head ‖u‖ | finite | max ‖o‖ | max ‖S‖_F |")
    print("|---|---|---|---|---|---|")
    for value_norm in (True, False):
        for C in (int(c) for c in args.chunk_sizes.split(",")):
            for u in (float(x) for x in args.u_norms.split(",")):
                finite, o, s = measure(args.T, args.heads, args.head_dim, C, u, value_norm, args.seed)
                print(f"| {'on' if value_norm else 'off'} | {C} | {u:g} | {'yes' if finite else 'no'} | {o:.3g} | {s:.3g} |", flush=True)


if __name__ == "__main__":
    main()
