"""Training step time on one H100, estimated on paper (no GPU involved): tokens/s, Hope-aware MFU
and what bounds the step, from the FLOP counts of `hope-mega params`, the fused kernel's launch
grid and the assumptions below. Every figure it prints is an ESTIMATE; replace it with the
trainer's logged `tokens_per_s` / `mfu` (bench/gpu) once measured.

    python bench/step_time_estimate.py [configs/hope-760m.yaml ...] [--nodes 1 2 4 8] [--override k=v]

The model: a step is two serial parts per token,
  1. everything but the recurrence (projections, CMS, LM head, attention, and the memory-bound
     norms, conv, gates and casts around them) at DENSE_MFU of the bf16 peak, the MFU that
     llm-foundry publishes for its MPT-760m at 4K on H100 (35.8%): what a well-tuned dense
     model of this size reaches;
  2. the Titans recurrence in the fused kernel: one program per (sequence, head of this TP rank),
     one program per SM (176-192 KiB of shared memory each at d_h 128, C 64: BENCHMARKS.md), its
     dots in fp32 accuracy as DOT_PASSES tf32 tensor-core products, at RECURRENCE_EFFICIENCY of
     that (a serial chain of small dots per chunk, every register used and spills); SMs without a
     program idle through it, and a partial last wave takes as long as a full one.
Activation checkpointing recomputes each layer's forward: a third more of 1 and 2 (not the head).
MFU counts the model's FLOPs (recurrence included), not the recomputation, against the bf16 peak.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hope_mega.config import load_config  # noqa: E402
from hope_mega.params import flops_per_token  # noqa: E402

H100_BF16_TFLOPS = 989.0  # dense, SXM datasheet
H100_TF32_TFLOPS = 494.7  # dense, SXM datasheet
H100_SMS = 132
DENSE_MFU = 0.358  # llm-foundry's MPT-760m, 4K context, H100 (its published throughput table)
DOT_PASSES = 3  # tf32x3: three tf32 products per fp32-accurate dot (fused_kernels.py)
RECURRENCE_EFFICIENCY = 0.4  # of one SM's tf32x3 rate (assumed: no measurement exists)


def estimate(path: str, overrides: list[str]) -> dict:
    cfg = load_config(path, overrides)
    f = flops_per_token(cfg.model, cfg.train.seq_len)
    tp = cfg.parallel.tp
    recompute = 1 / 3 if cfg.parallel.activation_checkpointing else 0.0
    recurrence = f.get("titans.recurrence", 0.0)
    gemm = f["total_flops_per_token"] - recurrence - f.get("titans.conv", 0.0)
    gemm_executed = gemm + (gemm - f["lm_head"]) * recompute
    recurrence_executed = recurrence * (1 + recompute)
    # Per TP group: TP splits both parts over its ranks, which train the same tokens together.
    gemm_s = gemm_executed / tp / (H100_BF16_TFLOPS * 1e12 * DENSE_MFU)
    programs = cfg.train.micro_batch * cfg.model.n_heads // tp if cfg.model.mixer == "titans" else 0
    busy_sms = min(programs, H100_SMS)
    recurrence_s = 0.0
    if programs:
        per_sm = H100_TF32_TFLOPS * 1e12 / H100_SMS / DOT_PASSES * RECURRENCE_EFFICIENCY
        waves = -(-programs // H100_SMS)
        recurrence_s = recurrence_executed / tp / (busy_sms * per_sm) * (waves * busy_sms / programs)
    step_s = gemm_s + recurrence_s
    per_gpu_tokens = 1 / step_s / tp
    mfu = f["total_flops_per_token"] * per_gpu_tokens / (H100_BF16_TFLOPS * 1e12)
    return {"config": Path(path).stem, "micro_batch": cfg.train.micro_batch, "programs": programs, "sm_share": busy_sms / H100_SMS,
            "dense_share": gemm_s / (gemm_s + recurrence_s), "tokens_per_s_per_gpu": per_gpu_tokens, "mfu": mfu,
            "flops": f["total_flops_per_token"], "tokens": cfg.train.steps * cfg.train.global_batch * cfg.train.seq_len}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", default=["configs/hope-760m.yaml", "configs/hope-1.3b.yaml"])
    p.add_argument("--override", action="append", default=[], help="key=value for every config")
    p.add_argument("--nodes", type=int, nargs="*", help="node counts of 8 GPUs: one row each, with "
                   "train.micro_batch = global_batch / data-parallel size (no accumulation)")
    args = p.parse_args()
    print("ESTIMATE (no GPU measured): H100 SXM GPUs; assumptions in bench/step_time_estimate.py")
    print("| config | nodes x 8 GPUs | micro_batch | fused programs / 132 SMs | non-recurrence share of step "
          "| tokens/s per GPU | MFU | GPU-hours for its run | hours on those nodes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.configs:
        cfg = load_config(path, args.override)
        rows = [(None, [])]
        if args.nodes:
            rows = []
            for nodes in args.nodes:
                dp = nodes * 8 // cfg.parallel.tp
                if cfg.train.global_batch % dp == 0:
                    rows.append((nodes, [f"train.micro_batch={cfg.train.global_batch // dp}"]))
                else:
                    print(f"(--nodes {nodes}: {dp} data-parallel ranks do not divide {Path(path).stem}'s "
                          f"train.global_batch={cfg.train.global_batch}; no row)", file=sys.stderr)
        for nodes, extra in rows:
            e = estimate(path, args.override + extra)
            gpu_hours = e["tokens"] / e["tokens_per_s_per_gpu"] / 3600
            wall = f"{gpu_hours / (8 * nodes):,.1f}" if nodes else "-"
            print(f"| {e['config']} | {nodes or '-'} | {e['micro_batch']} | {e['programs']} ({e['sm_share']:.0%} busy) "
                  f"| {e['dense_share']:.0%} | {e['tokens_per_s_per_gpu']:,.0f} | {e['mfu']:.1%} | {gpu_hours:,.0f} | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
