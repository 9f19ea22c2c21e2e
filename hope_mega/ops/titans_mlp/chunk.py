"""Self-modifying Titans with MLP memories, chunk-wise in torch: the dual form of spec §2b.

All gradients of a chunk are taken at the chunk-start weights W̄, and they are rank one: with
r_s = M(k_s; W̄) - v̂_s, z_s = W̄_2 k_s, a_s = GELU(z_s), δ_s = (W̄_1ᵀ r_s) ⊙ GELU'(z_s),
∇W_1 = r_s a_sᵀ and ∇W_2 = δ_s k_sᵀ. So the chunk-end weights of all six memories are two
matmuls over the chunk, and the main memory's output after every token's write is exact and
parallel over the chunk through [C × C] masked products (TTT's dual form):

    Z_t = A_t W̄_2 q_t - Σ_{s≤t} (A_t/A_s) β_s (k_s·q_t) δ_s
    o_t = q_t + A_t W̄_1 GELU(Z_t) - Σ_{s≤t} (A_t/A_s) β_s (a_s·GELU(Z_t)) r_s

The backward is autograd's. Across chunks the loop is serial, as for the matrix memories.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..common import (
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    learning_rate,
    log_decay,
    run_chunks,
    unit_norm,
)
from .layout import W1, W2T, check_mlp_inputs

# The memories read the five inputs in this order (MEMORIES order: k, v, q, eta, alpha).
_READ_ORDER = (MEM_K, MEM_V, MEM_Q, MEM_ETA, MEM_ALPHA)


def gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    """d/dz of the erf GELU z Φ(z): Φ(z) + z φ(z)."""
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * z.square()) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + z * pdf


def _mlp(w1: torch.Tensor, w2t: torch.Tensor, u: torch.Tensor):
    """M(u) = u + W_1 GELU(W_2 u) for rows of u: weights [..., D, h], u [..., C, D]. Returns the
    pre-activation z [..., C, h], the activation a and M(u)."""
    z = u @ w2t
    a = F.gelu(z)
    return z, a, u + a @ w1.transpose(-1, -2)


def _chunk_step(S, uq, uk, uv, ue, ua, valid, w_eta, b_eta, w_alpha, b_alpha, a_log, carry):
    """One self-modification chunk for n sequences: S [n or 1, H, 6, 2, D, h] at the chunk start
    (1: shared by all), inputs [H, n, C, D], valid [n, C]. Returns the main memory's output
    [H, n, C, D] and the chunk-end weights of the first `carry` sequences (None for none)."""
    _, n, C, _ = uq.shape
    S = S.expand(n, *S.shape[1:])
    w1, w2t = S[:, :, :, W1], S[:, :, :, W2T]  # [n, H, 6, D, h]
    # Reads at W̄: memories k, v, q, eta, alpha each on their own input, heads first.
    U = torch.stack([x.transpose(0, 1) for x in (uk, uv, uq, ue, ua)], 2)  # [n, H, 5, C, D]
    _, _, read = _mlp(w1[:, :, list(_READ_ORDER)], w2t[:, :, list(_READ_ORDER)], U)
    k, v, q = (unit_norm(read[:, :, i]) for i in range(3))  # [n, H, C, D]
    beta = learning_rate(torch.einsum("nhcd,hd->nhc", read[:, :, 3], w_eta) + b_eta[:, None])
    g = log_decay(torch.einsum("nhcd,hd->nhc", read[:, :, 4], w_alpha) + b_alpha[:, None], a_log[:, None])
    # Padding (past a sequence's end) gets beta = 0 and g = 0: it leaves the weights untouched.
    mask = valid[:, None, :].to(beta.dtype)
    beta, g = beta * mask, g * mask
    _, _, v_hat = _mlp(w1, w2t, v[:, :, None])
    v_hat = unit_norm(v_hat)  # [n, H, 6, C, D], one self-generated value per memory

    # The rank-one gradient factors of every token's loss at W̄, for all six memories.
    z, a, m_k = _mlp(w1, w2t, k[:, :, None])  # [n, H, 6, C, h], .., [n, H, 6, C, D]
    r = m_k - v_hat
    delta = (r @ w1) * gelu_derivative(z)  # [n, H, 6, C, h]

    G = g.cumsum(-1)  # log of the decay from the chunk start, <= 0
    # The main memory's output after each token's write, through [C x C] masked products.
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    # exp(G_t - G_s) masked before the exp: exp(G_t) * exp(-G_s) overflows for long chunks.
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    P = decay * beta[..., None, :]  # (A_t / A_s) β_s, [n, H, C, C]
    A = G.exp()[..., None]
    w1m, w2tm = w1[:, :, MEM_MAIN], w2t[:, :, MEM_MAIN]
    Z = A * (q @ w2tm) - (P * (q @ k.transpose(-1, -2))) @ delta[:, :, MEM_MAIN]
    act = F.gelu(Z)
    o = q + A * (act @ w1m.transpose(-1, -2)) - (P * (act @ a[:, :, MEM_MAIN].transpose(-1, -2))) @ r[:, :, MEM_MAIN]
    if not carry:
        return o.transpose(0, 1), None
    if carry < n:
        G, beta, r, a, k, delta, w1, w2t = (x[:carry] for x in (G, beta, r, a, k, delta, w1, w2t))
    # Chunk-end weights: W_C = A_C W̄ - Σ_s (A_C/A_s) β_s ∇ℓ_s(W̄).
    G_end = G[..., -1:]
    coef = (beta * (G_end - G).exp())[:, :, None, :, None]  # [carry, H, 1, C, 1]
    keep = G_end.exp()[..., None, None]  # [carry, H, 1, 1, 1]
    w1_end = keep * w1 - (coef * r).transpose(-1, -2) @ a
    w2t_end = keep * w2t - (coef * k[:, :, None]).transpose(-1, -2) @ delta
    return o.transpose(0, 1), torch.stack([w1_end, w2t_end], 3)


def titans_mlp_chunk(
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
    """Chunk-wise self-modifying Titans with MLP memories; same signature and results as
    `titans_mlp_reference`."""
    check_mlp_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    return run_chunks(
        _chunk_step, (u_q, u_k, u_v, u_eta, u_alpha), s0, (w_eta, b_eta, w_alpha, b_alpha, a_log),
        chunk_size, cu_seqlens, output_final_state,
    )  # fmt: skip
