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


def head_param(*shape: int) -> nn.Parameter:
    """A per-head parameter of this rank's heads, split over tensor parallelism along dim 0."""
    return mark_split(nn.Parameter(torch.empty(*shape)), 0)


def short_conv_weight(heads: int, head_dim: int, window: int) -> nn.Parameter:
    """The depthwise short-conv weight of q, k and v, [3, heads, head_dim, window]."""
    return mark_split(nn.Parameter(torch.empty(3, heads, head_dim, window)), 1)


class HeadDraws:
    """Per-head parameters drawn at their full (all heads) shape, of which this rank keeps its
    heads, so that a model initialised from one seed is the same model at any tensor-parallel
    size. `full(*shape)` is an empty tensor like `like` and `heads` the slice of this rank's."""

    def __init__(self, like: torch.Tensor, heads: int, tp_size: int, tp_rank: int):
        self.like, self.total = like, heads * tp_size
        self.heads = slice(tp_rank * heads, (tp_rank + 1) * heads)

    def full(self, *shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=self.like.dtype, device=self.like.device)

    @torch.no_grad()
    def short_conv(self, weight: torch.Tensor) -> None:
        """nn.Conv1d's default for a depthwise conv (fan_in = the window), as fla's ShortConvolution."""
        _, _, D, K = weight.shape
        weight.copy_(self.full(3, self.total, D, K).uniform_(-(K**-0.5), K**-0.5)[:, self.heads])


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

