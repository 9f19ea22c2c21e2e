"""The self-modifying Titans recurrence token by token: the definition (spec §2).

A plain loop over tokens, written for reading, not speed. Every faster form is tested against it.
"""

from __future__ import annotations

import torch

from ..common import (
    DEFAULT_VARIANT,
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    TitansVariant,
    check_inputs,
    compute_dtype,
    learning_rate,
    log_decay,
    sequence_lengths,
    unit_norm,
)


def _read(S: torch.Tensor, u: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """M(u) = u + S u, per head: S [H, D, D], u [H, D]; M(u) = S u without `residual`."""
    Su = torch.einsum("hij,hj->hi", S, u)
    return u + Su if residual else Su


def titans_reference(
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
    """Token-by-token self-modifying Titans.

    Inputs `u_*` are [B, T, H, D] (after the static projections, conv and SiLU); `s0` [H, 6, D, D]
    holds the learned initial states of the memories (k, v, q, eta, alpha, main), each read as
    M(u) = u + S u. Returns o [B, T, H, D] = M_mem,t(q_t) in fp32 and, if asked, the final states
    [N, H, 6, D, D] of the N sequences (rows, or the documents of `cu_seqlens`). `variant`
    selects an ablation of the recurrence (common.TitansVariant); the default is the spec.
    """
    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    B, T, H, D = u_q.shape
    dt = compute_dtype(u_q)
    flat = [x.reshape(B * T, H, D).to(dt) for x in (u_q, u_k, u_v, u_eta, u_alpha)]
    eye = torch.eye(D, dtype=dt, device=u_q.device)
    res = variant.residual_read
    outputs, finals = [], []
    start = 0
    for length in sequence_lengths(B, T, cu_seqlens):
        S = s0.to(dt)  # [H, 6, D, D], restarts at every sequence start
        for t in range(start, start + length):
            if (t - start) % chunk_size == 0:
                S_bar = S  # the memories that generate this chunk's keys, values and gates
            uq, uk, uv, ue, ua = (x[t] for x in flat)
            k = unit_norm(_read(S_bar[:, MEM_K], uk, res))
            q = variant.query(_read(S_bar[:, MEM_Q], uq, res))
            v = variant.value(_read(S_bar[:, MEM_V], uv, res))
            if variant.gate_memory:
                ue, ua = _read(S_bar[:, MEM_ETA], ue, res), _read(S_bar[:, MEM_ALPHA], ua, res)
            beta = learning_rate((w_eta * ue).sum(-1) + b_eta, variant.beta_max)  # [H]
            g = log_decay((w_alpha * ua).sum(-1) + b_alpha, a_log)
            # Self-generated values, one per memory: v_hat = N(M_bar(v)).
            Sv = torch.einsum("hmij,hj->hmi", S_bar, v)
            v_hat = variant.value(v[:, None] + Sv if res else Sv)  # [H, 6, D]
            # One delta-rule step on 1/2 |M(k) - v_hat|^2 at the decayed state, for all six: the
            # residual M(k) = k + S k moves S towards v_hat - k, a plain S k towards v_hat.
            decay = g.exp()[:, None, None, None]
            b = beta[:, None, None, None]
            kkT = torch.einsum("hi,hj->hij", k, k)[:, None]
            target = v_hat - k[:, None] if res else v_hat
            S = decay * S @ (eye - b * kkT) + b * torch.einsum("hmi,hj->hmij", target, k)
            outputs.append(_read(S[:, MEM_MAIN], q, res))  # read after the write
        finals.append(S)
        start += length
    o = torch.stack(outputs).reshape(B, T, H, D)
    return o, (torch.stack(finals) if output_final_state else None)
