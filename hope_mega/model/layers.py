"""The layers whose shape depends on tensor parallelism, behind one small interface.

The model asks a `LayerProvider` for its linear layers, embedding, LM head and loss, and never
branches on parallelism itself (Megatron keeps its collectives in `tensor_parallel/layers.py`
the same way). `TorchLayers` is the single-device provider; `hope_mega.parallel` supplies the
megatron-core one. Activations are sequence-first, [T, B, d], as in Megatron, so that sequence
parallelism shards dim 0.

Every parameter that tensor parallelism splits carries two attributes, used by checkpoint
conversion and tests: `tp_dim` (the dimension split across ranks) and `tp_sections` (how many
equal sections that dimension holds; each rank takes its slice of every section, e.g. the q, k,
v, eta, alpha and gate blocks of the Titans input projection).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def mark_split(param: torch.Tensor, dim: int, sections: int = 1) -> torch.Tensor:
    param.tp_dim = dim
    param.tp_sections = sections
    return param


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class TorchLayers:
    """Single-device layers: plain torch, full width."""

    tp_size = 1
    tp_rank = 0

    def column(self, in_features: int, out_features: int, std: float, sections: int = 1) -> nn.Module:
        """y = x W^T, W [out, in]: split along the output under tensor parallelism."""
        layer = nn.Linear(in_features, out_features, bias=False)
        nn.init.normal_(layer.weight, std=std)
        mark_split(layer.weight, 0, sections)
        return layer

    def row(self, in_features: int, out_features: int, std: float) -> nn.Module:
        """y = x W^T, W [out, in]: split along the input; the partial outputs are summed."""
        layer = nn.Linear(in_features, out_features, bias=False)
        nn.init.normal_(layer.weight, std=std)
        mark_split(layer.weight, 1)
        return layer

    def embedding(self, vocab_size: int, dim: int, std: float) -> nn.Module:
        """Token ids [T, B] -> [T, B, dim]."""
        layer = nn.Embedding(vocab_size, dim)
        nn.init.normal_(layer.weight, std=std)
        mark_split(layer.weight, 0)
        return layer

    def lm_head(self, dim: int, vocab_size: int, std: float) -> nn.Module:
        """[T, B, dim] -> logits [T, B, vocab] (the local vocabulary slice under TP)."""
        return self.column(dim, vocab_size, std)

    def norm(self, dim: int, eps: float) -> nn.Module:
        return RMSNorm(dim, eps)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token loss; logits [T, B, V], labels [T, B]."""
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)

