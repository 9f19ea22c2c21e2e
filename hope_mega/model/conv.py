"""Causal depthwise short convolution whose window restarts at every document start."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .documents import Documents


def document_causal_conv(x: torch.Tensor, weight: torch.Tensor, docs: Documents) -> torch.Tensor:
    """y_t = sum_j weight[..., K-1-j] * x_{t-j}, over the taps j that stay inside the document.

    x [B, T, *channels], weight [*channels, K]. One depthwise conv1d per row, then the few taps
    that reach back into the previous document (from the first K-1 tokens of a document that
    does not start its row) are taken back out: a handful of rows, where masking every tap at
    every position would cost a full pass over x per tap.
    """
    B, T = x.shape[:2]
    K = weight.shape[-1]
    w = weight.reshape(-1, K)
    flat = x.reshape(B, T, -1)
    y = F.conv1d(flat.transpose(1, 2), w[:, None], padding=K - 1, groups=w.shape[0])[..., :T]
    y = y.transpose(1, 2).reshape(B * T, -1)
    crossing = docs.conv_crossings(K)
    if crossing is not None:
        out, src, tap = crossing
        y = y.index_add(0, out, flat.reshape(B * T, -1)[src] * w[:, tap].t(), alpha=-1)
    return y.reshape(x.shape)
