"""Causal softmax attention with RoPE: the mixer of Hope-Attention and Transformer++."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .documents import Documents


def rotary(x: torch.Tensor, position: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on x [B, H, T, D] at per-token positions [B, T] (restarting at each document)."""
    D = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angle = position.float()[:, None, :, None] * inv_freq  # [B, 1, T, D/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float()[..., : D // 2], x.float()[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


class AttentionMixer(nn.Module):
    def __init__(self, cfg: ModelConfig, layers, n_layers: int):
        super().__init__()
        if cfg.n_heads % layers.tp_size:
            raise ValueError(f"model.n_heads: {cfg.n_heads} heads cannot be split over {layers.tp_size} tensor-parallel ranks")
        self.heads = cfg.n_heads // layers.tp_size
        self.head_dim = cfg.head_dim
        self.theta = cfg.rope_theta
        self.qkv_proj = layers.column(cfg.d_model, 3 * cfg.n_heads * cfg.head_dim, cfg.init_std, sections=3)
        self.out_proj = layers.row(cfg.n_heads * cfg.head_dim, cfg.d_model, cfg.init_std / math.sqrt(2 * n_layers))

    def forward(self, x: torch.Tensor, docs: Documents) -> torch.Tensor:
        z = self.qkv_proj(x)
        T, B = z.shape[:2]
        q, k, v = z.view(T, B, 3, self.heads, self.head_dim).permute(2, 1, 3, 0, 4)  # [B, H, T, D]
        q, k = rotary(q, docs.position, self.theta), rotary(k, docs.position, self.theta)
        if docs.cu_seqlens is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            same_doc = docs.doc_id[:, :, None] == docs.doc_id[:, None, :]
            mask = same_doc & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.out_proj(o.permute(2, 0, 1, 3).reshape(T, B, self.heads * self.head_dim))
