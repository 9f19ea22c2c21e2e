"""Self-modifying Titans with MLP memories token by token: the definition (spec §2b).

Written literally from the update rule, for reading, not speed: every token's reads and loss at
the chunk-start weights W̄, its gradient by autograd, and then, token by token, one decayed
gradient step W_t = α_t W_{t-1} - β_t ∇ℓ_t(W̄) and the main memory's read after it. (The reads
and gradients of a chunk's tokens depend on W̄ alone, so they are taken for the chunk's tokens
together: one autograd call per chunk instead of one per token.) The chunk form (chunk.py) derives the same gradients by hand
and sums them in parallel; the tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import (
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    compute_dtype,
    learning_rate,
    log_decay,
    sequence_lengths,
    unit_norm,
)
from .layout import W1, W2T, check_mlp_inputs


def _read(W: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """M(u) = u + W_1 GELU(W_2 u) per token and head: W [..., H, 2, D, h], u [..., H, D]."""
    hidden = F.gelu(torch.einsum("...hdj,...hd->...hj", W[..., W2T, :, :], u))
    return u + torch.einsum("...hdj,...hj->...hd", W[..., W1, :, :], hidden)


def _read_all(W: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Every memory at the same input: W [..., H, 6, 2, D, h], u [..., H, D] -> [..., H, 6, D]."""
    return _read(W.transpose(-5, -4), u[..., None, :, :]).transpose(-3, -2)


def titans_mlp_reference(
    u_q: torch.Tensor,
    u_k: torch.Tensor,
    u_v: torch.Tensor,
    u_eta: torch.Tensor,
    u_alpha: torch.Tensor,
    s0: torch.Tensor,
    w_eta: torch.Tensor,
    b_eta: torch.Tensor,
    w_alpha: torch.Tensor,
    b_alpha: torch.Tensor,
    a_log: torch.Tensor,
    chunk_size: int,
    cu_seqlens: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token self-modifying Titans with MLP memories.

    Inputs `u_*` are [B, T, H, D]; `s0` [H, 6, 2, D, h] holds the learned initial weights (W_1,
    W_2ᵀ) of the memories (k, v, q, eta, alpha, main). Returns o [B, T, H, D] = M_mem,t(q_t) in
    fp32 and, if asked, the final weights [N, H, 6, 2, D, h] of the N sequences.
    """
    check_mlp_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    B, T, H, D = u_q.shape
    dt = compute_dtype(u_q)
    flat = [x.reshape(B * T, H, D).to(dt) for x in (u_q, u_k, u_v, u_eta, u_alpha)]
    # The inner gradients become part of the outer graph only when an outer backward will need them.
    outer_graph = torch.is_grad_enabled()
    outputs, finals = [], []
    start = 0
    for length in sequence_lengths(B, T, cu_seqlens):
        W = s0.to(dt)  # [H, 6, 2, D, h], restarts at every sequence start
        for c in range(start, start + length, chunk_size):
            W_bar = W  # the weights that generate this chunk's reads and its gradients
            uq, uk, uv, ue, ua = (x[c : min(c + chunk_size, start + length)] for x in flat)  # [n, H, D]
            # Each token's reads come from W̄ alone.
            k = unit_norm(_read(W_bar[:, MEM_K], uk))
            q = unit_norm(_read(W_bar[:, MEM_Q], uq))
            v = unit_norm(_read(W_bar[:, MEM_V], uv))
            beta = learning_rate((w_eta * _read(W_bar[:, MEM_ETA], ue)).sum(-1) + b_eta)  # [n, H]
            g = log_decay((w_alpha * _read(W_bar[:, MEM_ALPHA], ua)).sum(-1) + b_alpha, a_log)
            v_hat = unit_norm(_read_all(W_bar, v))  # [n, H, 6, D], the self-generated values
            # Token t's gradient of 1/2 |M(k_t; W) - v_hat_t|^2 at W = W̄, with k_t and v_hat_t held
            # fixed: the gradient with respect to a zero offset of its own added to W̄. Tokens,
            # heads and memories have separate losses, so one backward gives every token's.
            with torch.enable_grad():
                offset = torch.zeros(len(k), *W_bar.shape, dtype=dt, device=W_bar.device, requires_grad=True)
                loss = 0.5 * (_read_all(W_bar + offset, k) - v_hat).square().sum()
                (grads,) = torch.autograd.grad(loss, offset, create_graph=outer_graph)
            for i in range(len(k)):  # one decayed gradient step per token, then the read
                W = g[i].exp()[:, None, None, None, None] * W - beta[i][:, None, None, None, None] * grads[i]
                outputs.append(_read(W[:, MEM_MAIN], q[i]))  # read after the write
        finals.append(W)
        start += length
    o = torch.stack(outputs).reshape(B, T, H, D)
    return o, (torch.stack(finals) if output_final_state else None)
