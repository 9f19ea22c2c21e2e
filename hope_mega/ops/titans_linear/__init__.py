"""Self-modifying Titans with matrix memories, M(u) = u + S u (spec §2), in its forms, all with one
signature:

- `titans_reference` (reference.py): token by token, the definition;
- `titans_chunk` (chunk.py): chunk-wise WY/UT form in torch, autograd backward; the CPU path;
- `titans_fla` (fla_chunked.py): fla's chunk_gated_delta_rule once per self-modification chunk;
- `titans_fused` (fused.py, kernels in fused_kernels.py): one Triton kernel that owns the whole
  chunk loop; the GPU path.

`titans_linear()` picks the fast form for the device: on GPU the fused kernel for the shapes it
launches at (power-of-two head widths 16..128 and chunks of up to 64 tokens, which every config
uses), fla per chunk for other shapes; on CPU the torch chunk form. An ablation of the recurrence
(`variant=`, common.TitansVariant) exists in the reference and the chunk form only, so it runs the
chunk form on GPU too; fla and fused refuse one.
"""

from __future__ import annotations

import torch

from ..common import DEFAULT_VARIANT, require_default_variant
from .chunk import titans_chunk
from .fused import fused_supports
from .reference import titans_reference

IMPLEMENTATIONS = ("auto", "reference", "chunk", "fla", "fused")


def titans_linear(*args, impl: str = "auto", **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    variant = kwargs.get("variant", DEFAULT_VARIANT)
    if impl == "auto":
        if not args[0].is_cuda or variant != DEFAULT_VARIANT:
            impl = "chunk"
        else:
            chunk_size = kwargs["chunk_size"] if "chunk_size" in kwargs else args[11]
            impl = "fused" if fused_supports(args[0].shape[-1], chunk_size) else "fla"
    if impl == "chunk":
        return titans_chunk(*args, **kwargs)
    if impl == "reference":
        return titans_reference(*args, **kwargs)
    if impl in ("fla", "fused"):
        require_default_variant(kwargs.pop("variant", DEFAULT_VARIANT), f"Titans impl={impl!r}")
    if impl == "fla":
        from .fla_chunked import titans_fla

        return titans_fla(*args, **kwargs)
    if impl == "fused":
        from .fused import titans_fused

        return titans_fused(*args, **kwargs)
    raise ValueError(f"unknown Titans implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
