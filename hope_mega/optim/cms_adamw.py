"""AdamW whose parameter groups update at their own periods (the CMS levels of spec §3).

A group of period P is updated once every P optimizer steps with its gradient summed over the
period (`hope_mega.optim.periodic`), by its own moments: its bias correction counts its own
updates.
"""

from __future__ import annotations

import math

import torch

from .periodic import PeriodicOptimizer


class CMSAdamW(PeriodicOptimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, period=1):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, period=period, steps_seen=0)
        super().__init__(params, defaults)

    def _init_state(self, state, p, group) -> None:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype(p))
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype(p))

    def _update(self, p, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = group["lr"] / (1 - beta1**t)
        denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"].to(p.dtype), denom.to(p.dtype), value=-step_size)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """One group per (CMS period, decayed or not). Matrices of linear layers and embeddings decay;
    norms, gates, biases and the learned initial states (gains and offsets, not maps) do not."""
    groups: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        period = getattr(p, "cms_period", 1)
        decay = p.dim() == 2 and name.endswith("weight") and "norm" not in name
        groups.setdefault((period, decay), []).append(p)
    return [
        {"params": ps, "period": period, "weight_decay": weight_decay if decay else 0.0}
        for (period, decay), ps in sorted(groups.items())
    ]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to base_lr, then cosine decay to min_ratio * base_lr at `total` steps."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
