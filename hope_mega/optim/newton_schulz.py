"""Muon's quintic Newton–Schulz iteration: an approximately orthogonal matrix from any matrix.

NS_T(X) pushes every singular value of X / ||X||_F towards 1 without an SVD. The quintic
coefficients (3.4445, -4.7750, 2.0315) trade exactness for speed: after 5 steps singular values
that started at >= ~1e-2 land in a band around 1 (about 0.7 to 1.2), not on 1 itself.
"""

from __future__ import annotations

import torch

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """NS_steps(x) for a 2-D x, in fp32 (or in fp64 when x is fp64, so exactness tests can ask
    for 1e-12). Returns the input's dtype."""
    if x.dim() != 2:
        raise ValueError(f"Newton–Schulz needs a matrix, got shape {tuple(x.shape)}")
    a, b, c = COEFFICIENTS
    work = torch.promote_types(x.dtype, torch.float32)
    y = x.to(work)
    # The iteration's cost is in the Gram matrix; make it the smaller of the two.
    tall = y.shape[0] > y.shape[1]
    if tall:
        y = y.t()
    y = y / (y.norm() + eps)
    for _ in range(steps):
        gram = y @ y.t()
        y = a * y + (b * gram + c * gram @ gram) @ y
    if tall:
        y = y.t()
    return y.to(x.dtype)


def orthogonalize_sections(m: torch.Tensor, dim: int, sections: int, steps: int) -> torch.Tensor:
    """NS of each of `sections` equal blocks of m along `dim` on its own: the q, k, v, ... of a
    fused projection are separate logical matrices (spec §5)."""
    if sections == 1:
        return newton_schulz(m, steps)
    return torch.cat([newton_schulz(block, steps) for block in m.chunk(sections, dim)], dim)
