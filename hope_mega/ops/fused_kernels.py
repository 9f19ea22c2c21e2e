"""Triton kernels of the fused self-modifying Titans op (see fused.py for the algorithm in torch).

One program per (sequence, head) runs the whole serial chunk loop. Layout choices:

- The six D×D fp32 states do not fit in registers at D = 128 (6 × 64 KiB per program), so they
  live in global memory: the boundary-state buffer [slots, H, 6, D, D] that the backward needs
  anyway. Per chunk the program holds one memory's D×D tile at a time (a static loop over the six
  memories), reads slot c and writes slot c + 1; reads of a state just written come from L2. The
  backward keeps the running state gradient in a [N, H, 6, D, D] scratch the same way.
- The value dimension is not tiled: k, q, v and v̂ are unit-normalised over the whole head width,
  so a tile sees full rows. Measured by compiling for sm_90 without a GPU
  (`bench/titans_fused.py --compile-for 90`, tf32x3, C = 64): at D = 64 the forward needs 96 KiB
  of shared memory and the backward 176 KiB (both fit an H100's 227 KiB; both spill registers, 5
  and 16 KB); at D = 128 they need 256 and 480 KiB, which do not fit: every dot with a [D, D]
  fp32 operand stages 64 KiB or more. D = 128 needs the state tiled along its rows (the value
  dimension) in blocks of 32-64, with the unit norms of v̂ and of the reads taken in a first pass
  over the blocks; k, q, v and their gradients stay [C, D].
- The chunk is padded to BC = max(16, next power of two ≥ C) rows (tl.dot needs ≥ 16); rows past
  the chunk or the sequence end load zeros and get β = 0, g = 0, so they leave the states alone,
  exactly as the torch path pads.
- (I + A)^-1 is formed once per chunk by forward substitution over rows, which has the accuracy
  of a triangular solve (the doubling product (I - A)(I + A^2)(I + A^4)... would be fewer
  steps but multiplies powers of A; its accuracy was not checked), then shared by the six
  memories and, transposed, by the backward.
- Dots take their precision from PREC (fused.DOT_PRECISION): "tf32x3" on CUDA by default, close
  to fp32 (spec §4 keeps the recurrence in fp32; plain tf32's 10-bit mantissa would not be) while
  using tensor cores; "ieee" is exact fp32 but compiles to huge FMA code. No autotuning: the
  kernels must also run under TRITON_INTERPRET=1 on CPU, where there is nothing to time.
- The six memories are a runtime loop, not an unrolled one: unrolled, the backward is six copies
  of about a dozen dots (three mma each at tf32x3), and ptxas takes minutes over it.
- Program-local stores that the same program re-reads with another thread layout (states, state
  gradients) are separated by barriers.
"""

from __future__ import annotations

import triton
import triton.language as tl

NORM_EPS = 1e-6  # must equal common.NORM_EPS


@triton.jit
def _unit_lower_inverse(A, rows, BC: tl.constexpr):
    """(I + A)^-1 for strictly lower triangular A [BC, BC]: row i = e_i - sum_{j<i} A_ij row j."""
    Linv = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    for i in range(1, BC):
        a_i = tl.sum(tl.where(rows[:, None] == i, A, 0.0), 0)
        upd = tl.sum(a_i[:, None] * Linv, 0)
        Linv = tl.where(rows[:, None] == i, Linv - upd[None, :], Linv)
    return Linv


@triton.jit
def _softplus(x):
    # log1p(exp(x)) with Kahan's log1p: log(1 + y) alone loses all digits for y below fp32 epsilon,
    # and the spec's initial decays sit at softplus ~ 1e-3.
    y = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + y
    l1p = tl.where(u == 1.0, y, tl.log(u) * y / (u - 1.0))
    return tl.where(x > 20.0, x, l1p)


@triton.jit
def _load_rows(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _chunk_setup(UQ, UK, UV, UE, UA, S_ptr, w_eta, b_eta, w_alpha, b_alpha, a_log, tok, valid, i_h,
                 rows, dcols, off_s, H: tl.constexpr, D: tl.constexpr, EPS: tl.constexpr,
                 PREC: tl.constexpr):
    """Everything of a chunk that the six memories share (forward and backward recompute)."""
    off_u = (tok[:, None] * H + i_h) * D + dcols[None, :]
    mu = valid[:, None]
    uq = _load_rows(UQ, off_u, mu)
    uk = _load_rows(UK, off_u, mu)
    uv = _load_rows(UV, off_u, mu)
    ue = _load_rows(UE, off_u, mu)
    ua = _load_rows(UA, off_u, mu)
    S_k = tl.load(S_ptr + 0 * D * D + off_s)
    xk = uk + tl.dot(uk, tl.trans(S_k), input_precision=PREC)
    rs_k = tl.rsqrt(tl.sum(xk * xk, 1) + EPS)
    S_v = tl.load(S_ptr + 1 * D * D + off_s)
    xv = uv + tl.dot(uv, tl.trans(S_v), input_precision=PREC)
    rs_v = tl.rsqrt(tl.sum(xv * xv, 1) + EPS)
    S_q = tl.load(S_ptr + 2 * D * D + off_s)
    xq = uq + tl.dot(uq, tl.trans(S_q), input_precision=PREC)
    rs_q = tl.rsqrt(tl.sum(xq * xq, 1) + EPS)
    k = xk * rs_k[:, None]
    v = xv * rs_v[:, None]
    q = xq * rs_q[:, None]
    # w . M(u) = (w + S^T w) . u
    r_eta = w_eta + tl.sum(tl.load(S_ptr + 3 * D * D + off_s) * w_eta[:, None], 0)
    r_alpha = w_alpha + tl.sum(tl.load(S_ptr + 4 * D * D + off_s) * w_alpha[:, None], 0)
    zeta = tl.sum(ue * r_eta[None, :], 1) + b_eta
    za = tl.sum(ua * r_alpha[None, :], 1) + b_alpha
    sb = tl.sigmoid(zeta)
    beta = tl.where(valid, sb, 0.0)
    g = tl.where(valid, -tl.exp(a_log) * _softplus(za), 0.0)
    G = tl.sum(tl.where(rows[:, None] >= rows[None, :], g[None, :], 0.0), 1)
    G_end = tl.sum(g, 0)
    causal = rows[:, None] >= rows[None, :]
    # exp(G_i - G_j) masked before the exp (exp(G_i) exp(-G_j) overflows for long chunks)
    Dm = tl.exp(tl.where(causal, G[:, None] - G[None, :], float("-inf")))
    KK = tl.dot(k, tl.trans(k), input_precision=PREC)
    QK = tl.dot(q, tl.trans(k), input_precision=PREC)
    A = tl.where(rows[:, None] > rows[None, :], beta[:, None] * Dm * KK, 0.0)
    return (uq, uk, uv, ue, ua, k, q, v, rs_k, rs_q, rs_v, r_eta, r_alpha, za, sb, beta, g, G, G_end,
            Dm, KK, QK, A)


@triton.jit
def _titans_fwd_kernel(
    UQ, UK, UV, UE, UA,  # [B*T, H, D], bf16 / fp32
    W_ETA, B_ETA, W_ALPHA, B_ALPHA, A_LOG,  # fp32 [H, D], [H], [H, D], [H], [H]
    STATES,  # fp32 [slots, H, 6, D, D]; slot SLOT0[n] holds s0 on entry
    O,  # fp32 [B*T, H, D]
    CU, SLOT0,  # int64 [N + 1], [N]
    H: tl.constexpr, D: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, EPS: tl.constexpr,
    PREC: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_h = tl.program_id(1)
    bos = tl.load(CU + i_n).to(tl.int64)
    eos = tl.load(CU + i_n + 1).to(tl.int64)
    slot0 = tl.load(SLOT0 + i_n).to(tl.int64)
    n_chunks = (eos - bos + C - 1) // C
    rows = tl.arange(0, BC)
    dcols = tl.arange(0, D)
    off_s = dcols[:, None] * D + dcols[None, :]
    w_eta = tl.load(W_ETA + i_h * D + dcols)
    w_alpha = tl.load(W_ALPHA + i_h * D + dcols)
    b_eta = tl.load(B_ETA + i_h)
    b_alpha = tl.load(B_ALPHA + i_h)
    a_log = tl.load(A_LOG + i_h)
    causal = rows[:, None] >= rows[None, :]
    for c in range(0, n_chunks):
        tok = bos + c * C + rows
        valid = (rows < C) & (tok < eos)
        S_ptr = STATES + ((slot0 + c) * H + i_h) * (6 * D * D)
        N_ptr = S_ptr + H * 6 * D * D  # the next slot
        (uq, uk, uv, ue, ua, k, q, v, rs_k, rs_q, rs_v, r_eta, r_alpha, za, sb, beta, g, G, G_end,
         Dm, KK, QK, A) = _chunk_setup(UQ, UK, UV, UE, UA, S_ptr, w_eta, b_eta, w_alpha, b_alpha, a_log,
                                       tok, valid, i_h, rows, dcols, off_s, H, D, EPS, PREC)
        Linv = _unit_lower_inverse(A, rows, BC)
        eG = tl.exp(G)
        e = tl.exp(G_end - G)
        gC = tl.exp(G_end)
        for m in range(0, 6):
            S_m = tl.load(S_ptr + m * D * D + off_s)
            yh = v + tl.dot(v, tl.trans(S_m), input_precision=PREC)
            vhat = yh * tl.rsqrt(tl.sum(yh * yh, 1) + EPS)[:, None]
            W = tl.dot(k, tl.trans(S_m), input_precision=PREC)
            rhs = beta[:, None] * (vhat - k - eG[:, None] * W)
            U = tl.dot(Linv, rhs, input_precision=PREC)
            S_new = gC * S_m + tl.dot(tl.trans(U * e[:, None]), k, input_precision=PREC)
            tl.store(N_ptr + m * D * D + off_s, S_new)
            if m == 5:
                P = tl.where(causal, Dm * QK, 0.0)
                out = q + eG[:, None] * tl.dot(q, tl.trans(S_m), input_precision=PREC) + tl.dot(
                    P, U, input_precision=PREC)
                off_u = (tok[:, None] * H + i_h) * D + dcols[None, :]
                tl.store(O + off_u, out, mask=valid[:, None])
        tl.debug_barrier()


@triton.jit
def _titans_bwd_kernel(
    UQ, UK, UV, UE, UA,
    W_ETA, B_ETA, W_ALPHA, B_ALPHA, A_LOG,
    STATES,  # fp32 [slots, H, 6, D, D], as the forward left it
    DO,  # fp32 [B*T, H, D]
    DS,  # fp32 [N, H, 6, D, D]: gradient of the final states on entry, of s0 on exit
    DUQ, DUK, DUV, DUE, DUA,  # fp32 [B*T, H, D]
    DW_ETA, DB_ETA, DW_ALPHA, DB_ALPHA, DA_LOG,  # fp32 [N, H, D], [N, H], [N, H, D], [N, H], [N, H]
    CU, SLOT0,
    H: tl.constexpr, D: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, EPS: tl.constexpr,
    PREC: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_h = tl.program_id(1)
    bos = tl.load(CU + i_n).to(tl.int64)
    eos = tl.load(CU + i_n + 1).to(tl.int64)
    slot0 = tl.load(SLOT0 + i_n).to(tl.int64)
    n_chunks = (eos - bos + C - 1) // C
    rows = tl.arange(0, BC)
    dcols = tl.arange(0, D)
    off_s = dcols[:, None] * D + dcols[None, :]
    w_eta = tl.load(W_ETA + i_h * D + dcols)
    w_alpha = tl.load(W_ALPHA + i_h * D + dcols)
    b_eta = tl.load(B_ETA + i_h)
    b_alpha = tl.load(B_ALPHA + i_h)
    a_log = tl.load(A_LOG + i_h)
    causal = rows[:, None] >= rows[None, :]
    strict = rows[:, None] > rows[None, :]
    DS_ptr = DS + (i_n * H + i_h).to(tl.int64) * (6 * D * D)
    acc_dw_eta = tl.zeros([D], dtype=tl.float32)
    acc_dw_alpha = tl.zeros([D], dtype=tl.float32)
    acc_db_eta = tl.sum(tl.zeros([BC], dtype=tl.float32), 0)
    acc_db_alpha = tl.sum(tl.zeros([BC], dtype=tl.float32), 0)
    acc_da = tl.sum(tl.zeros([BC], dtype=tl.float32), 0)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        tok = bos + c * C + rows
        valid = (rows < C) & (tok < eos)
        S_ptr = STATES + ((slot0 + c) * H + i_h) * (6 * D * D)
        (_uq, _uk, _uv, _ue, _ua, k, q, v, rs_k, rs_q, rs_v, r_eta, r_alpha, za, sb, beta, g, G, G_end,
         Dm, KK, QK, A) = _chunk_setup(UQ, UK, UV, UE, UA, S_ptr, w_eta, b_eta, w_alpha, b_alpha, a_log,
                                       tok, valid, i_h, rows, dcols, off_s, H, D, EPS, PREC)
        Linv = _unit_lower_inverse(A, rows, BC)
        eG = tl.exp(G)
        e = tl.exp(G_end - G)
        gC = tl.exp(G_end)
        P = tl.where(causal, Dm * QK, 0.0)
        off_u = (tok[:, None] * H + i_h) * D + dcols[None, :]
        dO = tl.load(DO + off_u, mask=valid[:, None], other=0.0)

        dq = dO
        dk = tl.zeros([BC, D], dtype=tl.float32)
        dv = tl.zeros([BC, D], dtype=tl.float32)
        deG = tl.zeros([BC], dtype=tl.float32)
        de = tl.zeros([BC], dtype=tl.float32)
        dbeta = tl.zeros([BC], dtype=tl.float32)
        dDm = tl.zeros([BC, BC], dtype=tl.float32)
        dA = tl.zeros([BC, BC], dtype=tl.float32)
        dgC = tl.sum(tl.zeros([BC], dtype=tl.float32), 0)
        for m in range(0, 6):
            S_m = tl.load(S_ptr + m * D * D + off_s)
            dSn = tl.load(DS_ptr + m * D * D + off_s)
            # recompute this memory's part of the forward
            yh = v + tl.dot(v, tl.trans(S_m), input_precision=PREC)
            rs_y = tl.rsqrt(tl.sum(yh * yh, 1) + EPS)
            vhat = yh * rs_y[:, None]
            W = tl.dot(k, tl.trans(S_m), input_precision=PREC)
            rhs = beta[:, None] * (vhat - k - eG[:, None] * W)
            U = tl.dot(Linv, rhs, input_precision=PREC)
            # S_next = gC S + (U e)^T k
            dgC += tl.sum(tl.sum(dSn * S_m, 1), 0)
            kdS = tl.dot(k, tl.trans(dSn), input_precision=PREC)
            dU = e[:, None] * kdS
            de += tl.sum(U * kdS, 1)
            dk += tl.dot(U * e[:, None], dSn, input_precision=PREC)
            dS_m = gC * dSn
            if m == 5:
                # out = q + eG (q S^T) + P U
                deG += tl.sum(dO * tl.dot(q, tl.trans(S_m), input_precision=PREC), 1)
                eGdO = eG[:, None] * dO
                dS_m += tl.dot(tl.trans(eGdO), q, input_precision=PREC)
                dq += tl.dot(eGdO, S_m, input_precision=PREC)
                dP = tl.where(causal, tl.dot(dO, tl.trans(U), input_precision=PREC), 0.0)
                dPD = dP * Dm
                dq += tl.dot(dPD, k, input_precision=PREC)
                dk += tl.dot(tl.trans(dPD), q, input_precision=PREC)
                dDm += dP * QK
                dU += tl.dot(tl.trans(P), dO, input_precision=PREC)
            # U = (I + A)^-1 rhs
            dRhs = tl.dot(tl.trans(Linv), dU, input_precision=PREC)
            dA -= tl.dot(dRhs, tl.trans(U), input_precision=PREC)
            # rhs = beta (vhat - k - eG W), W = k S^T
            dbeta += tl.sum(dRhs * (vhat - k - eG[:, None] * W), 1)
            deG -= beta * tl.sum(dRhs * W, 1)
            dW = -(beta * eG)[:, None] * dRhs
            dk += tl.dot(dW, S_m, input_precision=PREC)
            dS_m += tl.dot(tl.trans(dW), k, input_precision=PREC)
            dV = beta[:, None] * dRhs
            dk -= dV
            # vhat = N(v + v S^T)
            dy = rs_y[:, None] * (dV - vhat * tl.sum(vhat * dV, 1)[:, None])
            dv += dy + tl.dot(dy, S_m, input_precision=PREC)
            dS_m += tl.dot(tl.trans(dy), v, input_precision=PREC)
            tl.debug_barrier()
            tl.store(DS_ptr + m * D * D + off_s, dS_m)
        # A = tril(beta_i Dm_ij KK_ij, -1)
        dA = tl.where(strict, dA, 0.0)
        dbeta += tl.sum(dA * Dm * KK, 1)
        dDm += dA * beta[:, None] * KK
        dKK = dA * beta[:, None] * Dm
        dk += tl.dot(dKK + tl.trans(dKK), k, input_precision=PREC)
        # decays: Dm = exp(G_i - G_j), eG = exp(G), e = exp(G_end - G), gC = exp(G_end); G = cumsum g
        dDmDm = dDm * Dm
        dG = tl.sum(dDmDm, 1) - tl.sum(dDmDm, 0) + deG * eG - de * e
        # G_end is the sum of all g: its gradient goes in at the last row and the reverse
        # cumulative sum spreads it over every token
        dG += tl.where(rows == BC - 1, dgC * gC + tl.sum(de * e, 0), 0.0)
        dg = tl.sum(tl.where(rows[:, None] >= rows[None, :], dG[:, None], 0.0), 0)
        # gates. The chunk inputs are re-read here rather than kept from the setup: at D = 128
        # five [BC, D] fp32 tiles held through the memory loop would only add register spills.
        mu = valid[:, None]
        ue = _load_rows(UE, off_u, mu)
        ua = _load_rows(UA, off_u, mu)
        dza = tl.where(valid, -dg * tl.exp(a_log) * tl.sigmoid(za), 0.0)
        acc_da += tl.sum(dg * g, 0)
        dr_alpha = tl.sum(ua * dza[:, None], 0)
        acc_db_alpha += tl.sum(dza, 0)
        dua = dza[:, None] * r_alpha[None, :]
        S_alpha = tl.load(S_ptr + 4 * D * D + off_s)
        acc_dw_alpha += dr_alpha + tl.sum(S_alpha * dr_alpha[None, :], 1)
        dzeta = tl.where(valid, dbeta * sb * (1.0 - sb), 0.0)
        dr_eta = tl.sum(ue * dzeta[:, None], 0)
        acc_db_eta += tl.sum(dzeta, 0)
        due = dzeta[:, None] * r_eta[None, :]
        S_eta = tl.load(S_ptr + 3 * D * D + off_s)
        acc_dw_eta += dr_eta + tl.sum(S_eta * dr_eta[None, :], 1)
        # reads x = u + u S^T, then N
        dxk = rs_k[:, None] * (dk - k * tl.sum(k * dk, 1)[:, None])
        dxv = rs_v[:, None] * (dv - v * tl.sum(v * dv, 1)[:, None])
        dxq = rs_q[:, None] * (dq - q * tl.sum(q * dq, 1)[:, None])
        S_k = tl.load(S_ptr + 0 * D * D + off_s)
        S_v = tl.load(S_ptr + 1 * D * D + off_s)
        S_q = tl.load(S_ptr + 2 * D * D + off_s)
        uk = _load_rows(UK, off_u, mu)
        uv = _load_rows(UV, off_u, mu)
        uq = _load_rows(UQ, off_u, mu)
        tl.store(DUK + off_u, dxk + tl.dot(dxk, S_k, input_precision=PREC), mask=mu)
        tl.store(DUV + off_u, dxv + tl.dot(dxv, S_v, input_precision=PREC), mask=mu)
        tl.store(DUQ + off_u, dxq + tl.dot(dxq, S_q, input_precision=PREC), mask=mu)
        tl.store(DUE + off_u, due, mask=mu)
        tl.store(DUA + off_u, dua, mask=mu)
        tl.debug_barrier()
        p = DS_ptr + 0 * D * D + off_s
        tl.store(p, tl.load(p) + tl.dot(tl.trans(dxk), uk, input_precision=PREC))
        p = DS_ptr + 1 * D * D + off_s
        tl.store(p, tl.load(p) + tl.dot(tl.trans(dxv), uv, input_precision=PREC))
        p = DS_ptr + 2 * D * D + off_s
        tl.store(p, tl.load(p) + tl.dot(tl.trans(dxq), uq, input_precision=PREC))
        p = DS_ptr + 3 * D * D + off_s
        tl.store(p, tl.load(p) + w_eta[:, None] * dr_eta[None, :])
        p = DS_ptr + 4 * D * D + off_s
        tl.store(p, tl.load(p) + w_alpha[:, None] * dr_alpha[None, :])
        tl.debug_barrier()
    o_nh = i_n * H + i_h
    tl.store(DW_ETA + o_nh * D + dcols, acc_dw_eta)
    tl.store(DW_ALPHA + o_nh * D + dcols, acc_dw_alpha)
    tl.store(DB_ETA + o_nh, acc_db_eta)
    tl.store(DB_ALPHA + o_nh, acc_db_alpha)
    tl.store(DA_LOG + o_nh, acc_da)
