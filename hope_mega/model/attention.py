"""Causal softmax attention with RoPE: the mixer of Hope-Attention and Transformer++."""

from __future__ import annotations

import functools
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


@functools.cache  # looked up once: document_attention runs in every layer of every step
def _varlen_attention():
    """torch's flash-attention varlen entry point and its causal keyword, where this torch has them."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, None
    import inspect

    # torch 2.9-2.11 take is_causal; later releases a (left, right) window, causal = (-1, 0).
    causal = {"is_causal": True} if "is_causal" in inspect.signature(varlen_attn).parameters else {"window_size": (-1, 0)}
    return varlen_attn, causal


def document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: Documents) -> torch.Tensor:
    """Causal attention inside each document; q, k, v [B, H, T, D] -> [B, H, T, D].

    On a GPU in bf16/fp16 the packed documents go to flash attention's varlen kernel as they
    are (the documents are the sequences of `cu_seqlens`), at the speed of unmasked attention;
    elsewhere a dense [B, 1, T, T] document mask, which no fused kernel takes.
    """
    B, H, T, D = q.shape
    varlen_attn, causal = _varlen_attention() if q.is_cuda else (None, None)
    if varlen_attn is not None and q.dtype in (torch.bfloat16, torch.float16) and docs.cu_seqlens_host is not None:
        pack = lambda t: t.transpose(1, 2).reshape(B * T, H, D)  # noqa: E731
        cu = docs.cu_seqlens.to(torch.int32)
        o = varlen_attn(pack(q), pack(k), pack(v), cu, cu, docs.max_len, docs.max_len, **causal)
        return o.view(B, T, H, D).transpose(1, 2)
    same_doc = docs.doc_id[:, :, None] == docs.doc_id[:, None, :]
    mask = same_doc & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])


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
            o = document_attention(q, k, v, docs)
        return self.out_proj(o.permute(2, 0, 1, 3).reshape(T, B, self.heads * self.head_dim))
