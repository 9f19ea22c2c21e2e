"""Fused chunk-wise self-modifying Titans (spec §2): one Triton kernel owns the whole chunk loop.

`titans_fused` has the signature and results of `titans_chunk` (chunk.py, the reference this form
is tested against). Forward: one persistent program per (sequence, head) walks the sequence's
chunks in order; per chunk it reads the boundary states, forms k, q, v, β, g and the six
self-generated values, solves the WY/UT system, writes the next boundary state of all six memories
and the main memory's output. The boundary states are kept ([slots, H, 6, D, D] fp32, one slot per
chunk start plus the final state) and are all the backward saves: it walks the chunks in reverse
and recomputes each chunk's intermediates from its boundary state.

Head widths: powers of two >= 16; the kernels walk each D×D state in row blocks of VALUE_BLOCK
rows, which is what keeps D = 128 (the 760M / 1.3B heads) within an H100's shared memory (see
fused_kernels.py). Chunk sizes: any; the kernels pad a chunk to a block of max(16, next power of
two) rows. Extra memory: the boundary states, (n_chunks + 1) x H x 6 x D x D fp32 per sequence
(at T = 16K, C = 64, H = 16, D = 128: 1.6 GB per layer and sequence), written even without grad,
since they are also the forward's working memory; and a scratch of 7 x BC x D fp32 per
(sequence, head) for the tiles that are cut into column blocks.

All six memories are carried in full. The spec's shortcut of carrying r = S^T w for S_eta and
S_alpha is not exact here: the self-generated value v̂_eta = N(v + S_eta v) needs all of S_eta v.

This module also holds a torch version of the same per-chunk forward and hand-derived backward
(`titans_fused_torch`). It is slow (a python loop over sequences and chunks), but it is where the
backward is written out readably, and the kernels follow it line for line; the tests check it
against autograd through `titans_chunk` in fp64.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..common import (
    MEM_ALPHA,
    MEM_ETA,
    MEM_K,
    MEM_MAIN,
    MEM_Q,
    MEM_V,
    MEMORIES,
    NORM_EPS,
    check_inputs,
    compute_dtype,
    host_to_device,
    sequence_lengths,
)

NUM_MEM = len(MEMORIES)

# tl.dot input precision of the kernels on CUDA: "tf32x3" (three tf32 tensor-core products, error
# close to fp32's), "ieee" (fp32 on the FMA units) or "tf32". Not "ieee" by default: its dots
# unroll into straight-line FMA code so large that compiling the forward for sm_90 at D = 64,
# C = 64 took 269 s against 45 s for tf32x3 (compiled for an sm_90 target on a CPU-only machine;
# the backward at D = 128 did not finish in 20 min with "ieee"). Under the interpreter the dots
# are numpy fp32 whatever this says. Not a call argument, so that the op keeps titans_chunk's
# signature.
DOT_PRECISION = "tf32x3"
# Rows of a state per block in the kernels (the value dimension; see fused_kernels.py). Heads of
# width <= VALUE_BLOCK run in one block.
VALUE_BLOCK = 32


# ------------------------------------------------------------------------------------------------
# Torch form of the per-chunk forward and backward (one sequence, all heads at once).
# Shapes: S [H, 6, D, D] (states at the chunk start), u* [H, C, D] (zero past the sequence end),
# mask [C] (1 for real tokens), params w_eta, w_alpha [H, D], b_eta, b_alpha, a_log [H].
# ------------------------------------------------------------------------------------------------


def _norm_fwd(x):
    rs = torch.rsqrt(x.square().sum(-1, keepdim=True) + NORM_EPS)
    return x * rs, rs


def _norm_bwd(n, rs, dn):
    # n = x rs with rs = (|x|^2 + eps)^-1/2, so dn/dx = rs (I - n n^T) exactly.
    return rs * (dn - n * (n * dn).sum(-1, keepdim=True))


def _chunk_intermediates(S, uq, uk, uv, ue, ua, mask, w_eta, b_eta, w_alpha, b_alpha, a_log):
    C = uq.shape[1]
    it = {}
    mT = S.transpose(-1, -2)
    it["xk"] = uk + uk @ mT[:, MEM_K]
    it["xq"] = uq + uq @ mT[:, MEM_Q]
    it["xv"] = uv + uv @ mT[:, MEM_V]
    k, it["rs_k"] = _norm_fwd(it["xk"])
    q, it["rs_q"] = _norm_fwd(it["xq"])
    v, it["rs_v"] = _norm_fwd(it["xv"])
    r_eta = w_eta + torch.einsum("hij,hi->hj", S[:, MEM_ETA], w_eta)
    r_alpha = w_alpha + torch.einsum("hij,hi->hj", S[:, MEM_ALPHA], w_alpha)
    zeta = (ue * r_eta[:, None]).sum(-1) + b_eta[:, None]  # [H, C]
    za = (ua * r_alpha[:, None]).sum(-1) + b_alpha[:, None]
    sb = torch.sigmoid(zeta)
    beta = sb * mask
    g = -a_log.exp()[:, None] * F.softplus(za) * mask
    G = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    Dm = (G[:, :, None] - G[:, None, :]).masked_fill(~causal, float("-inf")).exp()
    KK = k @ k.transpose(-1, -2)
    A = (beta[:, :, None] * Dm * KK).tril(-1)
    eye = torch.eye(C, dtype=uq.dtype, device=uq.device)
    Linv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    eG = G.exp()
    e = (G[:, -1:] - G).exp()  # decay from token t to the chunk end
    gC = eG[:, -1]
    yhat = v[:, None] + v[:, None] @ mT  # [H, 6, C, D]: M_m(v) for every memory
    vhat, rs_y = _norm_fwd(yhat)
    W = k[:, None] @ mT  # S_m k
    rhs = beta[:, None, :, None] * (vhat - k[:, None] - eG[:, None, :, None] * W)
    U = Linv[:, None] @ rhs
    QK = q @ k.transpose(-1, -2)
    P = Dm * QK
    it.update(k=k, q=q, v=v, r_eta=r_eta, r_alpha=r_alpha, za=za, sb=sb, beta=beta, g=g, G=G, Dm=Dm,
              KK=KK, Linv=Linv, eG=eG, e=e, gC=gC, vhat=vhat, rs_y=rs_y, W=W, U=U, QK=QK, P=P)
    return it


def chunk_forward_torch(S, uq, uk, uv, ue, ua, mask, *params):
    it = _chunk_intermediates(S, uq, uk, uv, ue, ua, mask, *params)
    q, eG = it["q"], it["eG"]
    O = eG[..., None] * (q @ S[:, MEM_MAIN].transpose(-1, -2)) + it["P"] @ it["U"][:, MEM_MAIN]
    out = q + O  # M_mem(q) read after the write
    S_next = it["gC"][:, None, None, None] * S + (it["U"] * it["e"][:, None, :, None]).transpose(-1, -2) @ it["k"][:, None]
    return out, S_next


def chunk_backward_torch(S, uq, uk, uv, ue, ua, mask, w_eta, b_eta, w_alpha, b_alpha, a_log, dO, dSn):
    """Gradients of one chunk: from dO [H, C, D] (output) and dSn [H, 6, D, D] (chunk-end states) to
    the chunk-start states, the five inputs and the parameters. Recomputes the forward first."""
    it = _chunk_intermediates(S, uq, uk, uv, ue, ua, mask, w_eta, b_eta, w_alpha, b_alpha, a_log)
    k, q, v, U, W, beta, eG, e, gC, Dm, KK = (it[n] for n in ("k", "q", "v", "U", "W", "beta", "eG", "e", "gC", "Dm", "KK"))
    C = uq.shape[1]
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    S_mem = S[:, MEM_MAIN]

    # S_next = gC S + (U e)^T k
    dS = gC[:, None, None, None] * dSn
    dgC = (dSn * S).sum((1, 2, 3))
    kdS = k[:, None] @ dSn.transpose(-1, -2)  # [H, 6, C, D]: d(U e) per memory
    dU = e[:, None, :, None] * kdS
    de = (U * kdS).sum((1, 3))
    dk = ((U * e[:, None, :, None]) @ dSn).sum(1)

    # out = q + eG (q S_mem^T) + P U_mem, P = Dm * (q k^T) (lower triangle with the diagonal)
    dq = dO.clone()
    deG = (dO * (q @ S_mem.transpose(-1, -2))).sum(-1)
    dS[:, MEM_MAIN] += (eG[..., None] * dO).transpose(-1, -2) @ q
    dq += (eG[..., None] * dO) @ S_mem
    dP = (dO @ U[:, MEM_MAIN].transpose(-1, -2)) * causal
    dq += (dP * Dm) @ k
    dk += (dP * Dm).transpose(-1, -2) @ q
    dDm = dP * it["QK"]
    dU[:, MEM_MAIN] += it["P"].transpose(-1, -2) @ dO

    # U = Linv rhs: d rhs = Linv^T dU, dA = -(d rhs) U^T on the strict lower triangle
    dRhs = it["Linv"].transpose(-1, -2)[:, None] @ dU
    dA = -(dRhs @ U.transpose(-1, -2)).sum(1).tril(-1)
    # rhs = beta (vhat - k - eG W), W = k S^T
    dbeta = (dRhs * (it["vhat"] - k[:, None] - eG[:, None, :, None] * W)).sum((1, 3))
    deG -= beta * (dRhs * W).sum((1, 3))
    dW = -(beta * eG)[:, None, :, None] * dRhs
    dk += (dW @ S).sum(1)
    dS += dW.transpose(-1, -2) @ k[:, None]
    dV = beta[:, None, :, None] * dRhs
    dk -= dV.sum(1)
    dy = _norm_bwd(it["vhat"], it["rs_y"], dV)  # yhat = v + v S^T
    dv = (dy + dy @ S).sum(1)
    dS += dy.transpose(-1, -2) @ v[:, None]

    # A = tril(beta_i Dm_ij KK_ij, -1)
    dbeta += (dA * Dm * KK).sum(-1)
    dDm += dA * beta[:, :, None] * KK
    dKK = dA * beta[:, :, None] * Dm
    dk += (dKK + dKK.transpose(-1, -2)) @ k

    # Decays: Dm_ij = exp(G_i - G_j), eG = exp(G), e = exp(G_C - G), gC = exp(G_C); G = cumsum g
    dDmDm = dDm * Dm
    dG = dDmDm.sum(-1) - dDmDm.sum(-2) + deG * eG - de * e
    dG[:, -1] += dgC * gC + (de * e).sum(-1)
    dg = dG.flip(-1).cumsum(-1).flip(-1)

    # Gates: g = -exp(a) softplus(za) mask, za = ua . r_alpha + b_alpha, r_alpha = w + S_alpha^T w
    g = it["g"]
    dza = -dg * a_log.exp()[:, None] * torch.sigmoid(it["za"]) * mask
    da_log = (dg * g).sum(-1)
    dr_alpha = (dza[..., None] * ua).sum(1)
    db_alpha = dza.sum(-1)
    dua = dza[..., None] * it["r_alpha"][:, None]
    dw_alpha = dr_alpha + torch.einsum("hij,hj->hi", S[:, MEM_ALPHA], dr_alpha)
    dS[:, MEM_ALPHA] += w_alpha[:, :, None] * dr_alpha[:, None, :]
    sb = it["sb"]
    dzeta = dbeta * mask * sb * (1 - sb)
    dr_eta = (dzeta[..., None] * ue).sum(1)
    db_eta = dzeta.sum(-1)
    due = dzeta[..., None] * it["r_eta"][:, None]
    dw_eta = dr_eta + torch.einsum("hij,hj->hi", S[:, MEM_ETA], dr_eta)
    dS[:, MEM_ETA] += w_eta[:, :, None] * dr_eta[:, None, :]

    # Reads: x = u + u S^T, then N
    grads_u = {}
    for name, m, d_n, n_, u in (("k", MEM_K, dk, k, uk), ("q", MEM_Q, dq, q, uq), ("v", MEM_V, dv, v, uv)):
        dx = _norm_bwd(n_, it["rs_" + name], d_n)
        grads_u[name] = dx + dx @ S[:, m]
        dS[:, m] += dx.transpose(-1, -2) @ u
    du = (grads_u["q"], grads_u["k"], grads_u["v"], due, dua)
    return dS, du, (dw_eta, db_eta, dw_alpha, db_alpha, da_log)


def _split_sequences(B, T, cu_seqlens):
    lengths = sequence_lengths(B, T, cu_seqlens)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    return list(zip(starts, lengths))


def _chunk_slice(x, start, end, C):
    """Tokens start..end of x [B*T, H, D] as [H, C, D], zero-padded past `end`."""
    piece = x[start:end].transpose(0, 1)
    if end - start < C:
        piece = F.pad(piece, (0, 0, 0, C - (end - start)))
    return piece


class _TitansTorchManual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, C, cu_seqlens):
        B, T, H, D = u_q.shape
        dt = compute_dtype(u_q)
        xs = [u.reshape(B * T, H, D).to(dt) for u in (u_q, u_k, u_v, u_eta, u_alpha)]
        params = [p.to(dt) for p in (w_eta, b_eta, w_alpha, b_alpha, a_log)]
        o = xs[0].new_zeros(B * T, H, D)
        boundaries, finals = [], []
        for start, length in _split_sequences(B, T, cu_seqlens):
            S = s0.to(dt)
            seq_states = []
            for c0 in range(0, length, C):
                end = min(start + c0 + C, start + length)
                mask = (torch.arange(C, device=o.device) < end - start - c0).to(dt)
                chunk = [_chunk_slice(x, start + c0, end, C) for x in xs]
                seq_states.append(S)
                out, S = chunk_forward_torch(S, *chunk, mask, *params)
                o[start + c0:end] = out.transpose(0, 1)[: end - start - c0]
            boundaries.append(seq_states)
            finals.append(S)
        ctx.boundaries = boundaries
        ctx.meta = (B, T, H, D, C, cu_seqlens, [u.dtype for u in (u_q, u_k, u_v, u_eta, u_alpha)])
        ctx.save_for_backward(*xs, *params)
        return o.reshape(B, T, H, D), torch.stack(finals)

    @staticmethod
    def backward(ctx, do, dfinal):
        B, T, H, D, C, cu_seqlens, in_dtypes = ctx.meta
        saved = ctx.saved_tensors
        xs, params = saved[:5], saved[5:]
        do = do.reshape(B * T, H, D).to(xs[0].dtype)
        du = [torch.zeros_like(x) for x in xs]
        dparams = [torch.zeros_like(p) for p in params]
        ds0 = torch.zeros_like(ctx.boundaries[0][0])
        for n, (start, length) in enumerate(_split_sequences(B, T, cu_seqlens)):
            dS = dfinal[n].to(ds0.dtype) if dfinal is not None else torch.zeros_like(ds0)
            for ci in reversed(range(len(ctx.boundaries[n]))):
                c0 = ci * C
                end = min(start + c0 + C, start + length)
                mask = (torch.arange(C, device=do.device) < end - start - c0).to(ds0.dtype)
                chunk = [_chunk_slice(x, start + c0, end, C) for x in xs]
                dO = _chunk_slice(do, start + c0, end, C)
                dS, dus, dps = chunk_backward_torch(ctx.boundaries[n][ci], *chunk, mask, *params, dO, dS)
                for acc, g in zip(du, dus):
                    acc[start + c0:end] += g.transpose(0, 1)[: end - start - c0]
                for acc, g in zip(dparams, dps):
                    acc += g
            ds0 += dS
        grads = [g.reshape(B, T, H, D).to(dt) for g, dt in zip(du, in_dtypes)]
        return (*grads, ds0, *dparams, None, None)


def titans_fused_torch(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log,
                       chunk_size, cu_seqlens=None, output_final_state=False):
    """The fused kernels' algorithm in torch (forward and hand-written backward); slow, for tests
    and as the readable statement of what the kernels compute."""
    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    o, final = _TitansTorchManual.apply(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha,
                                        a_log, chunk_size, cu_seqlens)
    return o, (final if output_final_state else None)


# ------------------------------------------------------------------------------------------------
# The Triton form.
# ------------------------------------------------------------------------------------------------


def _block_rows(C: int) -> int:
    # tl.dot needs every block dimension >= 16; shorter chunks run padded (see fused_kernels.py).
    return max(16, _next_power_of_2(C))


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _layout(B, T, chunk_size, cu_seqlens, device):
    """Sequence bounds and the first boundary-state slot of each sequence (n_chunks + 1 slots each:
    the chunk starts and the final state)."""
    lengths = sequence_lengths(B, T, cu_seqlens)
    n_chunks = [-(-n // chunk_size) for n in lengths]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    slot0 = [0]
    for n in n_chunks:
        slot0.append(slot0[-1] + n + 1)
    as_tensor = lambda xs: host_to_device(torch.tensor(xs, dtype=torch.int64), device)  # noqa: E731
    return as_tensor(cu), as_tensor(slot0[:-1]), as_tensor(n_chunks), slot0[-1]


def fused_supports(head_dim: int, chunk_size: int) -> bool:
    """Shapes the kernels launch at on an H100: power-of-two head widths 16..128 (tl.dot tiles) and
    chunks of at most 64 tokens. Compiled for sm_90 (BENCHMARKS.md), D = 128 at C = 64 asks for
    192 KiB of shared memory; at C = 128 the backward asks for 416 KiB, over the 227 KiB limit."""
    pow2 = head_dim & (head_dim - 1) == 0
    return pow2 and 16 <= head_dim <= 128 and 1 <= chunk_size <= 64


def _check_runnable(x: torch.Tensor, D: int, C: int):
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "titans_fused runs Triton kernels: use CUDA tensors, or set TRITON_INTERPRET=1 before "
            "triton is imported to run them (slowly) on CPU; the CPU path is titans_chunk"
        )
    if D < 16 or D & (D - 1):
        raise ValueError(f"titans_fused needs a power-of-two head_dim >= 16, got {D}")
    if x.is_cuda and not fused_supports(D, C):
        raise ValueError(f"titans_fused on GPU takes head_dim <= 128 and chunk_size <= 64 (shared memory), "
                         f"got head_dim={D}, chunk_size={C}; impl='fla' runs any shape")


def _dot_precision(device: torch.device) -> str:
    # The interpreter computes dots in numpy whatever is asked; keep the name it accepts.
    return DOT_PRECISION if device.type == "cuda" else "ieee"


def _num_warps(D: int) -> int:
    return 8 if D >= 128 else 4


def _value_block(D: int) -> int:
    return min(D, VALUE_BLOCK)


def _scratch(N, H, D, C, device):
    from .fused_kernels import SCRATCH_SLOTS

    return torch.empty(N, H, SCRATCH_SLOTS.value, _block_rows(C), D, dtype=torch.float32, device=device)


class _TitansFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, C, cu_seqlens):
        from .fused_kernels import NORM_EPS as KERNEL_EPS
        from .fused_kernels import _titans_fwd_kernel

        assert KERNEL_EPS == NORM_EPS
        B, T, H, D = u_q.shape
        dev = u_q.device
        xs = [u.reshape(B * T, H, D).contiguous() for u in (u_q, u_k, u_v, u_eta, u_alpha)]
        params = [p.detach().to(torch.float32).contiguous() for p in (w_eta, b_eta, w_alpha, b_alpha, a_log)]
        cu, slot0, n_chunks, n_slots = _layout(B, T, C, cu_seqlens, dev)
        N = cu.numel() - 1
        states = torch.empty(n_slots, H, NUM_MEM, D, D, dtype=torch.float32, device=dev)
        states[slot0] = s0.detach().to(torch.float32)
        o = torch.empty(B * T, H, D, dtype=torch.float32, device=dev)
        _titans_fwd_kernel[(N, H)](
            *xs, *params, states, o, _scratch(N, H, D, C, dev), cu, slot0,
            H=H, D=D, C=C, BC=_block_rows(C), BV=_value_block(D), EPS=NORM_EPS, PREC=_dot_precision(dev),
            num_warps=_num_warps(D), num_stages=1,
        )
        ctx.save_for_backward(*xs, *params, states, cu, slot0)
        ctx.meta = (B, T, H, D, C, N, s0.dtype, [u.dtype for u in (u_q, u_k, u_v, u_eta, u_alpha)],
                    [p.dtype for p in (w_eta, b_eta, w_alpha, b_alpha, a_log)])
        return o.reshape(B, T, H, D), states[slot0 + n_chunks]

    @staticmethod
    def backward(ctx, do, dfinal):
        from .fused_kernels import _titans_bwd_kernel

        B, T, H, D, C, N, s0_dtype, u_dtypes, p_dtypes = ctx.meta
        saved = ctx.saved_tensors
        xs, params, (states, cu, slot0) = saved[:5], saved[5:10], saved[10:]
        dev = states.device
        f32 = dict(dtype=torch.float32, device=dev)
        if do is None:
            do = torch.zeros(B * T, H, D, **f32)
        do = do.reshape(B * T, H, D).to(torch.float32).contiguous()
        ds = dfinal.to(torch.float32).clone().contiguous() if dfinal is not None else torch.zeros(N, H, NUM_MEM, D, D, **f32)
        du = [torch.empty(B * T, H, D, **f32) for _ in range(5)]
        dw_eta, dw_alpha = torch.zeros(N, H, D, **f32), torch.zeros(N, H, D, **f32)
        db_eta, db_alpha, da_log = (torch.empty(N, H, **f32) for _ in range(3))
        _titans_bwd_kernel[(N, H)](
            *xs, *params, states, do, ds, *du, dw_eta, db_eta, dw_alpha, db_alpha, da_log,
            _scratch(N, H, D, C, dev), cu, slot0,
            H=H, D=D, C=C, BC=_block_rows(C), BV=_value_block(D), EPS=NORM_EPS, PREC=_dot_precision(dev),
            num_warps=_num_warps(D), num_stages=1,
        )
        grads_u = [g.reshape(B, T, H, D).to(dt) for g, dt in zip(du, u_dtypes)]
        grads_p = [g.sum(0).to(dt) for g, dt in zip((dw_eta, db_eta, dw_alpha, db_alpha, da_log), p_dtypes)]
        return (*grads_u, ds.sum(0).to(s0_dtype), *grads_p, None, None)


def titans_fused(
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
    """Fused chunk-wise self-modifying Titans (Triton); same signature and results as `titans_chunk`.

    Inputs may be bf16 or fp32; states, accumulation and the output o [B, T, H, D] are fp32.
    Extra memory: the boundary states, (n_chunks + 1) × H × 6 × D × D fp32 per sequence, kept for
    the backward.
    """
    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    _check_runnable(u_q, u_q.shape[-1], chunk_size)
    o, final = _TitansFused.apply(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log,
                                  chunk_size, cu_seqlens)
    return o, (final if output_final_state else None)
