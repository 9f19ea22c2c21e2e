"""The self-modifying Titans recurrence (spec §2), one folder per kind of memory, each holding its
forms side by side with one signature between them:

- `titans_linear/`: matrix memories M(u) = u + S u (spec §2): reference, torch chunk, fla per
  chunk, fused Triton kernel;
- `titans_mlp/`: residual 2-layer MLP memories M(u) = u + W_1 GELU(W_2 u) (spec §2b): reference
  and torch chunk (CPU and GPU);
- `common.py`: what they share (memory order, norms, gates, packing, the chunk layout);
- `triton_cpu.py`: running Triton kernels under the interpreter on CPU.

`titans(..., memory=...)` runs the op of `model.memory` in the fast form for the device; both ops
take the same inputs and differ only in the shape of the learned initial memories `s0`.
"""

from __future__ import annotations

import torch

from . import titans_linear, titans_mlp
from .titans_linear import fused_supports, titans_chunk, titans_reference
from .titans_mlp import titans_mlp_chunk, titans_mlp_reference

MEMORY_KINDS = ("linear", "mlp")

__all__ = [
    "MEMORY_KINDS", "fused_supports", "titans", "titans_chunk", "titans_mlp_chunk", "titans_mlp_reference",
    "titans_reference",
]


def titans(*args, memory: str = "linear", impl: str = "auto", **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    if memory == "linear":
        return titans_linear.titans_linear(*args, impl=impl, **kwargs)
    if memory == "mlp":
        return titans_mlp.titans_mlp(*args, impl=impl, **kwargs)
    raise ValueError(f"unknown memory {memory!r}; choose one of {MEMORY_KINDS}")
