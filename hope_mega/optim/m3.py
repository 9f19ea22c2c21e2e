"""M3, Multi-scale Momentum Muon (the paper's Algorithm 1, spec §5), with the CMS periods.

Per hidden-layer matrix W with gradient g (for a CMS level of period P, the level's gradient summed
over its period; t counts the level's own updates):

    M1 = b1 M1 + (1 - b1) g                 fast momentum
    V  = b2 V  + (1 - b2) g^2               second moment, bias-corrected as in Adam
    every f updates: M2 = b3 M2 + (1 - b3) (sum of the last f gradients);  O2 = NS(M2)
    W <- W (1 - lr wd) - lr (NS(M1) + alpha O2) / (sqrt(V / (1 - b2^t)) + eps)

Everything else (embeddings, LM head, norms, gates, conv, the learned initial states) takes the
CMS AdamW step, as Muon leaves non-matrix parameters to Adam. Every group carries `kind` ("m3" or
"adamw") and `lr_scale`: the trainer writes one scheduled lr into every group, and an M3 group
multiplies it by m3.lr / train.lr, since M3's learning rate is not AdamW's.

Orthogonalisation goes through `orthogonalize(param, matrix, steps)`. The default splits a fused
projection into its sections (`tp_sections` along `tp_dim`) and runs NS on each; the
data-parallel engine passes one that first gathers a tensor-parallel matrix's shards.
"""

from __future__ import annotations

from typing import Callable

import torch

from .newton_schulz import orthogonalize_sections
from .periodic import PeriodicOptimizer

Orthogonalize = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def local_orthogonalize(param: torch.Tensor, m: torch.Tensor, steps: int) -> torch.Tensor:
    return orthogonalize_sections(m, getattr(param, "tp_dim", 0), getattr(param, "tp_sections", 1), steps)


def is_m3_matrix(name: str, param: torch.Tensor) -> bool:
    """The hidden-layer matrices: the linear layers inside the blocks (Titans/attention in and out
    projections, CMS gate_up and down). The per-head gate vectors and initial states are not."""
    return name.startswith("blocks.") and name.endswith(".weight") and param.dim() == 2 and "norm" not in name


class M3(PeriodicOptimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), beta3=0.99, alpha=1.0, f=10, ns_steps=5, eps=1e-8,
                 weight_decay=0.0, period=1, kind="m3", lr_scale=1.0,
                 orthogonalize: Orthogonalize = local_orthogonalize):  # fmt: skip
        defaults = dict(lr=lr, betas=betas, beta3=beta3, alpha=alpha, f=f, ns_steps=ns_steps, eps=eps,
                        weight_decay=weight_decay, period=period, kind=kind, lr_scale=lr_scale, steps_seen=0)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["kind"] not in ("m3", "adamw"):
                raise ValueError(f"parameter group kind {group['kind']!r} is not 'm3' or 'adamw'")
            if group["kind"] == "m3" and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("M3 parameter groups hold matrices only")
        self.orthogonalize = orthogonalize

    def _init_state(self, state: dict, p: torch.Tensor, group) -> None:
        zeros = lambda: torch.zeros_like(p, dtype=self.state_dtype(p))  # noqa: E731
        state["step"] = 0
        state["exp_avg"] = zeros()
        state["exp_avg_sq"] = zeros()
        if group["kind"] == "m3":
            state["slow_sum"] = zeros()  # the gradients since the last slow update
            state["slow_avg"] = zeros()  # M2
            state["slow_orth"] = zeros()  # O2 = NS(M2), used until the next slow update
    def _update(self, p, grad, state, group) -> None:
        if group["kind"] == "m3":
            self._m3_update(p, grad, state, group)
        else:
            self._adamw_update(p, grad, state, group)

    def _m3_update(self, p, grad, state, group) -> None:
        t, denom = self._second_moment_step(grad, state, group)
        state["slow_sum"].add_(grad)
        if t % group["f"] == 0:
            state["slow_avg"].mul_(group["beta3"]).add_(state["slow_sum"], alpha=1 - group["beta3"])
            state["slow_sum"].zero_()
            state["slow_orth"].copy_(self.orthogonalize(p, state["slow_avg"], group["ns_steps"]))
        fast = self.orthogonalize(p, state["exp_avg"], group["ns_steps"])
        self._apply(p, fast.add_(state["slow_orth"], alpha=group["alpha"]), denom, group, 1.0)

    def _adamw_update(self, p, grad, state, group) -> None:
        """The CMSAdamW step (hope_mega.optim.cms_adamw), for the non-matrix parameters."""
        t, denom = self._second_moment_step(grad, state, group)
        self._apply(p, state["exp_avg"], denom, group, 1 / (1 - group["betas"][0] ** t))

    @staticmethod
    def _second_moment_step(grad, state, group) -> tuple[int, torch.Tensor]:
        """Count the update, fold g into M1 and V; returns t and sqrt(V / (1 - b2^t)) + eps."""
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return t, (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])

    @staticmethod
    def _apply(p, direction, denom, group, scale: float) -> None:
        lr = group["lr"] * group["lr_scale"]
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        p.addcdiv_(direction.to(p.dtype), denom.to(p.dtype), value=-lr * scale)


def m3_param_groups(named_params, cfg) -> list[dict]:
    """One group per (CMS period, M3 or AdamW, decayed or not), with each kind's settings from
    `cfg` (a Config): M3 groups from the `m3` section, AdamW groups from `train`."""
    t, m = cfg.train, cfg.m3
    groups: dict[tuple, list] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        kind = "m3" if is_m3_matrix(name, p) else "adamw"
        decay = p.dim() == 2 and name.endswith("weight") and "norm" not in name
        groups.setdefault((getattr(p, "cms_period", 1), kind, decay), []).append(p)
    out = []
    for (period, kind, decay), params in sorted(groups.items()):
        if kind == "m3":
            settings = dict(betas=(m.beta1, m.beta2), eps=m.eps, weight_decay=m.weight_decay, lr_scale=m.lr / t.lr,
                            beta3=m.beta3, alpha=m.alpha, f=m.f, ns_steps=m.ns_steps)
        else:
            settings = dict(betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=t.weight_decay if decay else 0.0,
                            lr_scale=1.0)
        out.append({"params": params, "period": period, "kind": kind, **settings})
    return out
