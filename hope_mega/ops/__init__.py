"""The self-modifying Titans recurrence (spec §2) in its forms, all with one signature:

- `titans_reference` (reference.py): token by token, the definition;
- `titans_chunk` (chunk.py): chunk-wise WY/UT form in torch, autograd backward; the CPU path;
- `titans_fla` (fla_chunked.py): fla's chunk_gated_delta_rule once per self-modification chunk;
- `titans_fused` (fused.py): one Triton kernel that owns the whole chunk loop; the GPU path.

`titans()` picks the fast form for the device: on GPU the fused kernel (head widths that are powers
of two >= 16, which every config uses), fla per chunk for other widths; on CPU the torch chunk form.
"""

from __future__ import annotations

import torch

from .chunk import titans_chunk
from .reference import titans_reference

IMPLEMENTATIONS = ("auto", "reference", "chunk", "fla", "fused")


def fused_supports(head_dim: int) -> bool:
    """Head widths the fused kernels take (tl.dot tiles: powers of two, at least 16)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def titans(*args, impl: str = "auto", **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    if impl == "auto":
        if not args[0].is_cuda:
            impl = "chunk"
        else:
            impl = "fused" if fused_supports(args[0].shape[-1]) else "fla"
    if impl == "chunk":
        return titans_chunk(*args, **kwargs)
    if impl == "reference":
        return titans_reference(*args, **kwargs)
    if impl == "fla":
        from .fla_chunked import titans_fla

        return titans_fla(*args, **kwargs)
    if impl == "fused":
        from .fused import titans_fused

        return titans_fused(*args, **kwargs)
    raise ValueError(f"unknown Titans implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
