"""Causal depthwise short convolution whose window restarts at every document start."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def document_causal_conv(x: torch.Tensor, weight: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """y_t = sum_j weight[..., K-1-j] * x_{t-j}, over the taps j that stay inside the document.

    x [B, T, *channels], weight [*channels, K], position [B, T] (offset inside the document).
    """
    K = weight.shape[-1]
    extra = (1,) * (x.dim() - 2)
    y = x * weight[..., K - 1]
    for j in range(1, min(K, x.shape[1])):
        shifted = F.pad(x.movedim(1, -1), (j, 0))[..., : x.shape[1]].movedim(-1, 1)  # x_{t-j}
        inside = (position >= j).view(*position.shape, *extra).to(x.dtype)
        y = y + shifted * inside * weight[..., K - 1 - j]
    return y
