"""AdamW whose parameter groups update at their own periods (the CMS levels of spec §3).

A group with `period` P > 1 adds each step's gradient to an accumulator and is updated once every
P optimizer steps, with the sum, by its own moments (its bias correction counts its own updates);
between updates its parameters and moments stay as they are. The accumulator is optimizer state,
so ZeRO shards it with the moments and every checkpoint carries it: a resume in the middle of a
period continues with the partial sum intact.

Written as one optimizer, not a wrapper, so that DeepSpeed's ZeRO (which flattens each group's
parameters into one partition per rank and calls the base optimizer's `step`) handles it like
any torch optimizer.
"""

from __future__ import annotations

import math

import torch

from .skipping import SkippableSteps


class CMSAdamW(SkippableSteps, torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, period=1):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, period=period, steps_seen=0)
        super().__init__(params, defaults)

    def group_is_due(self, group) -> bool:
        """Whether the group updates at the step about to be taken."""
        return (group["steps_seen"] + 1) % group["period"] == 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.skipping:  # a non-finite step: not even the CMS accumulators or counters move
            return loss
        for group in self.param_groups:
            due = self.group_is_due(group)
            group["steps_seen"] += 1
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    if group["period"] > 1:
                        state["grad_acc"] = torch.zeros_like(p, dtype=torch.float32)
                grad = p.grad.float()
                if group["period"] > 1:
                    state["grad_acc"].add_(grad)
                    if not due:
                        continue
                    grad = state["grad_acc"].clone()
                    state["grad_acc"].zero_()
                state["step"] += 1
                t = state["step"]
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] / (1 - beta1**t)
                denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(state["exp_avg"].to(p.dtype), denom.to(p.dtype), value=-step_size)
        return loss


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
