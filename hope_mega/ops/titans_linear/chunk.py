"""The self-modifying Titans recurrence chunk-wise in torch (WY/UT form), exact w.r.t. the reference.

Within a self-modification chunk the keys, queries, values, gates and self-generated values all
come from the states at the end of the previous chunk, so the per-token recurrence of the six
memories is one gated delta rule with shared keys and gates and six value blocks stacked along the
value dimension. Across chunks the loop is serial (spec §2, implementer facts).

The chunk loop and the packed-batch layout are shared with the MLP memories (common.run_chunks).
"""

from __future__ import annotations

import functools

import torch

from ..common import (
    DEFAULT_VARIANT,
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    MEMORIES,
    TitansVariant,
    check_inputs,
    learning_rate,
    log_decay,
    run_chunks,
    unit_norm,
)


# The memories a chunk writes: all six, or only the main one when no sequence needs its
# chunk-end states (the others feed only later chunks). The main memory is the last, so its
# values are the last D columns either way.
ALL_MEMORIES, MAIN_ONLY = slice(None), slice(MEM_MAIN, MEM_MAIN + 1)
assert MEM_MAIN == len(MEMORIES) - 1


def _times(u: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """u @ M for u [H, n, C, D] and M [H, n or 1, D, E] -> [H, n, C, E].

    A shared M (one for all n sequences: every sequence's first chunk reads s0) multiplies all
    n*C rows of a head at once, where matmul's broadcasting would copy it n times.
    """
    if M.shape[1] == 1 and u.shape[1] != 1:
        return (u.flatten(1, 2) @ M[:, 0]).unflatten(1, u.shape[1:3])
    return u @ M


def _read(S: torch.Tensor, u: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """M(u) = u + S u for a chunk: S [H, n or 1, D, D], u [H, n, C, D]; M(u) = S u without `residual`."""
    Su = _times(u, S.transpose(-1, -2))
    return u + Su if residual else Su


def chunk_reads(S, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log, written=ALL_MEMORIES,
                variant: TitansVariant = DEFAULT_VARIANT):
    """What a chunk reads from the states at its start, heads first: S [H, n or 1, 6, D, D],
    inputs [H, n, C, D].

    Returns q, k [H, n, C, D], the delta-rule values v_hat_m - k (v_hat_m without the residual
    read) of the `written` memories side by side [H, n, C, m*D], and beta, g [H, n, C].
    """
    H, n, C, D = uq.shape
    res = variant.residual_read
    k = unit_norm(_read(S[:, :, MEM_K], uk, res))
    q = variant.query(_read(S[:, :, MEM_Q], uq, res))
    v = variant.value(_read(S[:, :, MEM_V], uv, res))
    # w . M(u) = w . u + (S^T w) . u: S_eta and S_alpha are read through one vector per chunk.
    r_eta, r_alpha = w_eta[:, None, None], w_alpha[:, None, None]  # [H, 1, 1, D]: w . u alone
    if variant.gate_memory:
        S_eta, S_alpha = r_eta @ S[:, :, MEM_ETA], r_alpha @ S[:, :, MEM_ALPHA]  # [H, n or 1, 1, D]
        r_eta, r_alpha = (r_eta + S_eta, r_alpha + S_alpha) if res else (S_eta, S_alpha)
    beta = learning_rate(_times(ue, r_eta.transpose(-1, -2)).squeeze(-1) + b_eta[:, None, None], variant.beta_max)
    g = log_decay(_times(ua, r_alpha.transpose(-1, -2)).squeeze(-1) + b_alpha[:, None, None], a_log[:, None, None])
    m = len(MEMORIES[written])
    # The written memories' rows stacked, [H, n or 1, m*D, D]: one product reads them all.
    Sv = _times(v, S[:, :, written].flatten(2, 3).transpose(-1, -2)).unflatten(-1, (m, D))
    v_hat = variant.value(v[..., None, :] + Sv if res else Sv)  # [H, n, C, m, D]
    values = (v_hat - k[..., None, :] if res else v_hat).flatten(-2)
    return q, k, values, beta, g


def _chunk_step(S, uq, uk, uv, ue, ua, valid, w_eta, b_eta, w_alpha, b_alpha, a_log, carry,
                variant: TitansVariant = DEFAULT_VARIANT):
    """One self-modification chunk for n sequences at once, heads first.

    S [n or 1, H, 6, D, D] are the states at the chunk start (1: shared by all), inputs
    [H, n, C, D], valid [n, C]. Returns the main memory's output [H, n, C, D] and the states at
    the chunk end of the first `carry` sequences (None for none). Everything runs as [H, n, ...],
    so the products below are batched matmuls over views, with no transposing copy of the
    activations.
    """
    H, n, C, D = uq.shape
    written = ALL_MEMORIES if carry else MAIN_ONLY
    S = S.transpose(0, 1)  # [H, n or 1, 6, D, D]
    Q, K, V, beta, g = chunk_reads(S, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log, written, variant)
    # Padding (past a sequence's end) gets beta = 0 and g = 0: it leaves the state untouched.
    mask = valid.to(beta.dtype)
    beta, g = beta * mask, g * mask

    # Gated delta rule over the chunk: values are the blocks v_hat - k (or v_hat).
    G = g.cumsum(-1)  # log of the decay from the chunk start, <= 0
    S0 = S[:, :, written].flatten(2, 3)  # [H, n or 1, m*D, D]
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    # exp(G_t - G_j) masked before the exp: exp(G_t) * exp(-G_j) overflows for long chunks.
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    A = (beta[..., :, None] * decay * (K @ K.transpose(-1, -2))).tril(-1)
    rhs = beta[..., None] * (V - G.exp()[..., None] * _times(K, S0.transpose(-1, -2)))
    # U = (I + A)^-1 rhs: the per-token "new values" u_t = beta_t (v_t - alpha_t S_{t-1} k_t).
    # The inverse is formed once, C columns, and applied by one matmul: a batched triangular
    # solve against all m*D value columns is several times slower on CPU than a matmul.
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    U = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True) @ rhs
    O = G.exp()[..., None] * _times(Q, S[:, :, MEM_MAIN].transpose(-1, -2))
    O = O + (decay * (Q @ K.transpose(-1, -2))) @ U[..., -D:]
    out = Q + O if variant.residual_read else O  # M_mem(q) = q + S_mem q, read after the write
    if not carry:
        return out, None
    if carry < n:
        U, K, G = U[:, :carry], K[:, :carry], G[:, :carry]
        S0 = S0[:, :carry] if S0.shape[1] > 1 else S0
    G_end = G[..., -1:]
    S_next = G_end.exp()[..., None] * S0 + (U * (G_end - G).exp()[..., None]).transpose(-1, -2) @ K
    return out, S_next.unflatten(2, (len(MEMORIES), D)).transpose(0, 1)


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
    *,
    variant: TitansVariant = DEFAULT_VARIANT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunk-wise self-modifying Titans; same signature and results as `titans_reference`."""
    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    return run_chunks(
        functools.partial(_chunk_step, variant=variant), (u_q, u_k, u_v, u_eta, u_alpha), s0, (w_eta, b_eta, w_alpha, b_alpha, a_log),
        chunk_size, cu_seqlens, output_final_state,
    )  # fmt: skip
