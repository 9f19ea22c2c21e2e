"""The self-modifying Titans mixer (spec §2): static projections, short conv, fast memories.

`model.memory` picks the fast memories, matrices (§2) or MLPs (§2b); only the shape of their
learned initial state `s0` and the op that runs them differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..ops import titans
from ..ops.common import MEMORIES, TitansVariant
from ..ops.titans_mlp.layout import W2T
from .conv import document_causal_conv
from .documents import Documents
from .layers import HeadDraws, head_param, short_conv_weight

# Sections of the fused input projection, each n_heads * head_dim wide.
SECTIONS = ("q", "k", "v", "eta", "alpha", "gate")


class TitansMixer(nn.Module):
    def __init__(self, cfg: ModelConfig, layers, n_layers: int, impl: str = "auto"):
        super().__init__()
        if cfg.n_heads % layers.tp_size:
            raise ValueError(f"model.n_heads: {cfg.n_heads} heads cannot be split over {layers.tp_size} tensor-parallel ranks")
        D = cfg.head_dim
        self.heads = cfg.n_heads // layers.tp_size  # this rank's heads
        self.tp_size, self.tp_rank = layers.tp_size, layers.tp_rank
        self.head_dim = D
        self.chunk_size = cfg.chunk_size
        self.eps = cfg.norm_eps
        self.impl = impl
        self.memory = cfg.memory
        self.variant = TitansVariant(
            value_norm=cfg.titans_value_norm, residual_read=cfg.titans_residual_read,
            beta_max=cfg.titans_beta_max, q_scale=cfg.titans_q_scale, gate_memory=cfg.titans_gate_memory,
        )  # fmt: skip
        self.in_proj = layers.column(cfg.d_model, len(SECTIONS) * cfg.n_heads * D, cfg.init_std, sections=len(SECTIONS))
        self.out_proj = layers.row(cfg.n_heads * D, cfg.d_model, cfg.init_std / math.sqrt(2 * n_layers))
        H = self.heads

        self.conv_weight = short_conv_weight(H, D, cfg.conv_size)
        # The learned initial memories, fp32: S [H, 6, D, D], or for MLPs W_1 and W_2ᵀ
        # [H, 6, 2, D, expansion * D].
        shape = (D, D) if cfg.memory == "linear" else (2, D, cfg.memory_expansion * D)
        self.s0 = head_param(H, len(MEMORIES), *shape)
        # A frozen s0 is left out of every optimizer and gradient reduction, which all skip
        # parameters that do not require a gradient.
        self.s0.requires_grad_(cfg.titans_learned_s0)
        self.w_eta, self.w_alpha = head_param(H, D), head_param(H, D)
        self.b_eta, self.b_alpha, self.a_log = head_param(H), head_param(H), head_param(H)
        self.out_norm = head_param(H, D)
        self.reset_titans_parameters()

    @torch.no_grad()
    def reset_titans_parameters(self) -> None:
        """Every per-head parameter, drawn as `HeadDraws` says."""
        D, H = self.head_dim, self.heads
        draws = HeadDraws(self.s0, H, self.tp_size, self.tp_rank)
        full, total, heads = draws.full, draws.total, draws.heads
        draws.short_conv(self.conv_weight)
        # Spec §2: zero initial states (every adaptive projection starts as the identity), Gated
        # DeltaNet's gate initialisation, and w ~ N(0, 1/d_h) so S_eta,0 and S_alpha,0 get gradient.
        # MLP memories (§2b): W_1 = 0 (identity maps again) and W_2 ~ N(0, 1/d_h).
        # Without the residual read (model.titans_residual_read: false) a memory reads S u, so
        # the identity start is S0 = I.
        self.s0.zero_()
        if not self.variant.residual_read:
            self.s0.copy_(torch.eye(D, dtype=self.s0.dtype, device=self.s0.device).expand_as(self.s0))
        if self.memory == "mlp":
            self.s0[:, :, W2T] = full(total, *self.s0.shape[1:]).normal_(std=D**-0.5)[heads][:, :, W2T]
        self.w_eta.copy_(full(total, D).normal_(std=D**-0.5)[heads])
        self.w_alpha.copy_(full(total, D).normal_(std=D**-0.5)[heads])
        self.b_eta.zero_()
        self.a_log.copy_(full(total).uniform_(1, 16).log_()[heads])
        dt = full(total).uniform_(math.log(1e-3), math.log(1e-1)).exp()[heads]
        self.b_alpha.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.out_norm.fill_(1.0)

    def forward(self, x: torch.Tensor, docs: Documents) -> torch.Tensor:
        """x [T, B, d] (sequence-sharded under sequence parallelism) -> [T, B, d]."""
        z = self.in_proj(x)  # [T, B, 6 * H * D], the whole sequence, this rank's heads
        T, B = z.shape[:2]
        H, D = self.heads, self.head_dim
        # fp32 from here (spec §4), under bf16 autocast too: autocast would run the conv and the
        # recurrence's matmuls in bf16 whatever their inputs' dtype.
        with torch.autocast(z.device.type, enabled=False):
            z = z.transpose(0, 1).float().reshape(B, T, len(SECTIONS), H, D)
            # One split, not a select per section: each select's backward zero-fills a gradient
            # of all of z.
            qkv, u_eta, u_alpha, gate = z.split([3, 1, 1, 1], dim=2)
            qkv = F.silu(document_causal_conv(qkv, self.conv_weight.float(), docs))
            o, _ = titans(
                *qkv.unbind(2), u_eta.squeeze(2), u_alpha.squeeze(2),
                self.s0, self.w_eta, self.b_eta, self.w_alpha, self.b_alpha, self.a_log,
                chunk_size=self.chunk_size, cu_seqlens=docs.cu_seqlens_host, memory=self.memory, impl=self.impl,
                variant=self.variant,
            )  # fmt: skip
            o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + self.eps) * self.out_norm
            y = (o * F.silu(gate.squeeze(2))).to(x.dtype).reshape(B, T, H * D).transpose(0, 1)
        return self.out_proj(y)
