"""Self-modifying Titans with residual 2-layer MLP memories, M(u) = u + W_1 GELU(W_2 u) (spec §2b),
in its forms, with one signature (that of the matrix-memory op, titans_linear):

- `titans_mlp_reference` (reference.py): token by token, each token's gradient by autograd at the
  chunk-start weights; the definition;
- `titans_mlp_chunk` (chunk.py): chunk-wise, the rank-one dual form in torch, autograd backward;
  the path on CPU and GPU.

The memories of a head are stored as one tensor [6, 2, d_h, h] (layout.py): W_1 and W_2ᵀ, both
d_h × h, so the learned initial memories `s0` are [H, 6, 2, d_h, h] and the final memories
[N, H, 6, 2, d_h, h].
"""

from __future__ import annotations

import torch

from ..common import DEFAULT_VARIANT, require_default_variant
from .chunk import titans_mlp_chunk
from .reference import titans_mlp_reference

IMPLEMENTATIONS = ("auto", "reference", "chunk")


def titans_mlp(*args, impl: str = "auto", **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The TitansVariant ablations are defined for the matrix memories only.
    require_default_variant(kwargs.pop("variant", DEFAULT_VARIANT), "the MLP-memory Titans op (model.memory: mlp)")
    if impl in ("auto", "chunk"):
        return titans_mlp_chunk(*args, **kwargs)
    if impl == "reference":
        return titans_mlp_reference(*args, **kwargs)
    raise ValueError(f"unknown MLP-memory Titans implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
