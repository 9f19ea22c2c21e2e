"""The self-modifying Titans recurrence chunk-wise in torch (WY/UT form), exact w.r.t. the reference.

Within a self-modification chunk the keys, queries, values, gates and self-generated values all
come from the states at the end of the previous chunk, so the per-token recurrence of the six
memories is one gated delta rule with shared keys and gates and six value blocks stacked along the
value dimension. Across chunks the loop is serial (spec §2, implementer facts).

The chunk loop and the packed-batch layout are shared with the MLP memories (common.run_chunks).
"""

from __future__ import annotations

import torch

from ..common import (
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    MEMORIES,
    check_inputs,
    learning_rate,
    log_decay,
    run_chunks,
    unit_norm,
)


def _read(S: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """M(u) = u + S u for a chunk: S [n, H, D, D], u [n, C, H, D]."""
    return u + torch.einsum("nhij,nchj->nchi", S, u)


def chunk_reads(S, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """What a chunk reads from the states at its start, S [n, H, 6, D, D], inputs [n, C, H, D].

    Returns q, k [n, C, H, D], the delta-rule values v_hat_m - k of the six memories stacked
    [n, C, H, 6*D], and beta, g [n, C, H].
    """
    n, C, H, D = uq.shape
    k = unit_norm(_read(S[:, :, MEM_K], uk))
    q = unit_norm(_read(S[:, :, MEM_Q], uq))
    v = unit_norm(_read(S[:, :, MEM_V], uv))
    # w . M(u) = w . u + (S^T w) . u: S_eta and S_alpha are read through one vector per chunk.
    r_eta = w_eta + torch.einsum("nhij,hi->nhj", S[:, :, MEM_ETA], w_eta)
    r_alpha = w_alpha + torch.einsum("nhij,hi->nhj", S[:, :, MEM_ALPHA], w_alpha)
    beta = learning_rate(torch.einsum("nchd,nhd->nch", ue, r_eta) + b_eta)
    g = log_decay(torch.einsum("nchd,nhd->nch", ua, r_alpha) + b_alpha, a_log)
    v_hat = unit_norm(v[:, :, :, None] + torch.einsum("nhmij,nchj->nchmi", S, v))  # [n, C, H, 6, D]
    values = (v_hat - k[:, :, :, None]).reshape(n, C, H, len(MEMORIES) * D)
    return q, k, values, beta, g


def _chunk_step(S, uq, uk, uv, ue, ua, valid, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """One self-modification chunk for n sequences at once.

    S [n, H, 6, D, D] are the states at the chunk start, inputs [n, C, H, D]. Returns the main
    memory's output [n, C, H, D] and the states at the chunk end.
    """
    n, C, H, D = uq.shape
    q, k, values, beta, g = chunk_reads(S, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log)
    # Padding (past a sequence's end) gets beta = 0 and g = 0: it leaves the state untouched.
    mask = valid[:, :, None].to(beta.dtype)
    beta, g = beta * mask, g * mask

    # Gated delta rule over the chunk, heads first: values are the six blocks v_hat - k.
    M = len(MEMORIES)
    K = k.transpose(1, 2)  # [n, H, C, D]
    Q = q.transpose(1, 2)
    V = values.transpose(1, 2)  # [n, H, C, 6D]
    beta = beta.transpose(1, 2)  # [n, H, C]
    G = g.transpose(1, 2).cumsum(-1)  # log of the decay from the chunk start, <= 0
    S0 = S.reshape(n, H, M * D, D)
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    # exp(G_t - G_j) masked before the exp: exp(G_t) * exp(-G_j) overflows for long chunks.
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    KK = K @ K.transpose(-1, -2)
    A = (beta[..., :, None] * decay * KK).tril(-1)
    rhs = beta[..., None] * (V - G.exp()[..., None] * (K @ S0.transpose(-1, -2)))
    # U = (I + A)^-1 rhs: the per-token "new values" u_t = beta_t (v_t - alpha_t S_{t-1} k_t).
    U = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    mem = slice(MEM_MAIN * D, (MEM_MAIN + 1) * D)
    S_mem = S[:, :, MEM_MAIN]
    O = G.exp()[..., None] * (Q @ S_mem.transpose(-1, -2)) + (decay * (Q @ K.transpose(-1, -2))) @ U[..., mem]
    out = Q + O  # M_mem(q) = q + S_mem q, read after the write
    G_end = G[..., -1:]
    S_next = G_end.exp()[..., None] * S0 + (U * (G_end - G).exp()[..., None]).transpose(-1, -2) @ K
    return out.transpose(1, 2), S_next.reshape(n, H, M, D, D)


def titans_chunk(
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
    """Chunk-wise self-modifying Titans; same signature and results as `titans_reference`."""
    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    return run_chunks(
        _chunk_step, (u_q, u_k, u_v, u_eta, u_alpha), s0, (w_eta, b_eta, w_alpha, b_alpha, a_log),
        chunk_size, cu_seqlens, output_final_state,
    )  # fmt: skip
