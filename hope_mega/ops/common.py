"""What the three forms of the Titans op share: the memory layout, the normalisation, the decay
parametrisation, and the split of a (possibly packed) batch into sequences.

Kept deliberately small: each form writes its own recurrence, so that the reference stays an
independent definition and the tests compare two codes, not one code twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The six fast memories of spec §2, in the order they are stacked along the value dimension.
MEMORIES = ("k", "v", "q", "eta", "alpha", "mem")
MEM_K, MEM_V, MEM_Q, MEM_ETA, MEM_ALPHA, MEM_MAIN = range(len(MEMORIES))
NORM_EPS = 1e-6


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """N(x) = x * rsqrt(|x|^2 + 1e-6) over the last (head-width) dimension."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + NORM_EPS)


def learning_rate(logit: torch.Tensor) -> torch.Tensor:
    """beta = sigmoid(w_eta . M_eta(u_eta) + b_eta), in (0, 1)."""
    return torch.sigmoid(logit)


def log_decay(logit: torch.Tensor, a_log: torch.Tensor) -> torch.Tensor:
    """g = -exp(A) * softplus(w_alpha . M_alpha(u_alpha) + b_alpha) <= 0; alpha = exp(g)."""
    return -a_log.exp() * F.softplus(logit)


def sequence_lengths(batch: int, seq_len: int, cu_seqlens: torch.Tensor | None) -> list[int]:
    """Lengths of the independent sequences in a [batch, seq_len] input.

    `cu_seqlens` (fla's varlen convention) indexes the flattened batch*seq_len tokens; without it
    every row is one sequence. Packed rows must have their row starts in `cu_seqlens` too, since
    a memory never carries across rows.
    """
    total = batch * seq_len
    if cu_seqlens is None:
        return [seq_len] * batch
    cu = [int(c) for c in cu_seqlens.tolist()]
    if cu[0] != 0 or cu[-1] != total or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(
            f"cu_seqlens must rise strictly from 0 to batch*seq_len={total}, got {cu[:8]}{'...' if len(cu) > 8 else ''}"
        )
    if batch > 1:
        row_starts = set(range(0, total, seq_len))
        if not row_starts <= set(cu):
            raise ValueError("cu_seqlens must contain every row start (a memory never crosses rows)")
    return [b - a for a, b in zip(cu, cu[1:])]


def check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size):
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    shape = u_q.shape
    if u_q.dim() != 4:
        raise ValueError(f"inputs must be [batch, seq, heads, head_dim], got {tuple(shape)}")
    for name, u in (("u_k", u_k), ("u_v", u_v), ("u_eta", u_eta), ("u_alpha", u_alpha)):
        if u.shape != shape:
            raise ValueError(f"{name} has shape {tuple(u.shape)}, u_q has {tuple(shape)}")
    _, _, h, d = shape
    if s0.shape != (h, len(MEMORIES), d, d):
        raise ValueError(f"s0 must be [heads, 6, head_dim, head_dim] = {(h, 6, d, d)}, got {tuple(s0.shape)}")
    for name, p, want in (
        ("w_eta", w_eta, (h, d)),
        ("w_alpha", w_alpha, (h, d)),
        ("b_eta", b_eta, (h,)),
        ("b_alpha", b_alpha, (h,)),
        ("a_log", a_log, (h,)),
    ):
        if p.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(p.shape)}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The recurrence runs in fp32 whatever the activations are (bf16 on GPU); fp64 stays fp64
    so the forms can be compared to rounding error in tests."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
