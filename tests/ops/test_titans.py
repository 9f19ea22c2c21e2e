"""The forms of the self-modifying Titans op agree with each other and with fla's gated delta rule."""

import pytest
import torch

from hope_mega.ops.common import MEM_K, MEM_MAIN, MEM_Q, MEM_V, NORM_EPS, log_decay, unit_norm
from hope_mega.ops.titans_linear.chunk import titans_chunk
from hope_mega.ops.titans_linear.reference import titans_reference

from titans_testing import assert_documents_independent, run_with_grads

NAMES = ["u_q", "u_k", "u_v", "u_eta", "u_alpha", "s0", "w_eta", "b_eta", "w_alpha", "b_alpha", "a_log"]


def assert_forms_agree(inp, chunk_size, cu_seqlens=None):
    o_ref, s_ref, g_ref = run_with_grads(titans_reference, inp.leaves(), chunk_size, cu_seqlens)
    o_chk, s_chk, g_chk = run_with_grads(titans_chunk, inp.leaves(), chunk_size, cu_seqlens)
    # Both forms run in fp32: at T = 200, C = 8 (25 chunks) each is up to ~1e-5 from the fp64
    # reference (the reference 4.9e-6, the chunk form, which applies (I + A)^-1 as a matrix like
    # fla's WY form, 8.8e-6), so they may differ by their sum. Exactness is the fp64 test below.
    assert (o_ref - o_chk).abs().max() <= 2e-5
    assert (s_ref - s_chk).abs().max() <= 2e-5
    for name, a, b in zip(NAMES, g_ref, g_chk):
        rel = (a - b).norm() / a.norm().clamp_min(1e-12)
        assert rel <= 1e-4, f"gradient of {name}: relative error {rel:.2e}"


@pytest.mark.parametrize("T", [1, 17, 64, 200])
@pytest.mark.parametrize("C", [8, 64])
@pytest.mark.parametrize("H", [1, 3])
def test_chunk_equals_reference(titans_inputs, T, C, H):
    assert_forms_agree(titans_inputs(B=2, T=T, H=H, D=8, seed=T * 100 + C + H), C)


@pytest.mark.parametrize("C", [8, 16])
def test_chunk_equals_reference_packed(titans_inputs, C):
    # Two rows of 50: documents of odd lengths, one spanning a whole row, one of length 1.
    cu = torch.tensor([0, 13, 37, 49, 50, 100])
    assert_forms_agree(titans_inputs(B=2, T=50, H=3, D=8, seed=C), C, cu)


def test_unit_norm_backward_equals_autograd_of_its_formula():
    """Every form calls the same unit_norm, whose backward is written by hand, so the forms'
    agreement cannot check it: here it is held against autograd of N(x) = x rsqrt(|x|^2 + eps),
    a zero vector (padding, zero initial states) included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, dtype=torch.float64, generator=g) * torch.tensor([1e-4, 1.0, 30.0], dtype=torch.float64)[:, None]
    x[0, 0] = 0.0
    x.requires_grad_(True)
    grad_out = torch.randn(x.shape, dtype=torch.float64, generator=g)
    formula = x * torch.rsqrt(x.square().sum(-1, keepdim=True) + NORM_EPS)
    y = unit_norm(x)
    assert (y - formula).abs().max() <= 1e-15
    (gx,) = torch.autograd.grad((y * grad_out).sum(), x)
    (gx_ref,) = torch.autograd.grad((formula * grad_out).sum(), x)
    assert (gx - gx_ref).abs().max() <= 1e-12 * gx_ref.abs().max()
    assert gx[0, 0].abs().max() > 0  # the zero vector's gradient is grad_out / sqrt(eps), not lost


def test_fp64_agreement_is_rounding_error(titans_inputs):
    inp = titans_inputs(B=1, T=45, H=2, D=8, dtype=torch.float64, u_scale=2.0)
    cu = torch.tensor([0, 20, 45])
    o_ref, s_ref, g_ref = run_with_grads(titans_reference, inp.leaves(), 8, cu)
    o_chk, s_chk, g_chk = run_with_grads(titans_chunk, inp.leaves(), 8, cu)
    assert (o_ref - o_chk).abs().max() <= 1e-12
    assert (s_ref - s_chk).abs().max() <= 1e-12
    for a, b in zip(g_ref, g_chk):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, a.abs().max().item())


def test_packed_documents_are_independent(titans_inputs):
    assert_documents_independent(titans_chunk, titans_inputs(B=1, T=60, H=2, D=8))


def test_long_sequence_from_zero_state_stays_bounded(titans_inputs):
    # Spec §2: T = 8K from S0 = 0 with |u_v| ~ 5 must stay finite and bounded.
    D = 16
    inp = titans_inputs(B=1, T=8192, H=2, D=D, u_scale=5.0 / D**0.5)
    inp.s0.zero_()
    for C in (16, 64):
        o, s = titans_chunk(*inp.us, *inp.params, chunk_size=C, output_final_state=True)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        # |o| <= 1 + |S_mem| for a unit query, so this bounds the main memory along the way.
        assert o.norm(dim=-1).max() < 10.0
        assert s.flatten(-2).norm(dim=-1).max() < 10.0


def test_one_chunk_reduces_to_fla_gated_delta_rule(titans_inputs):
    """With C >= T the adaptive memories never feed back: o = q + GDN(q, k, v_hat_mem - k)."""
    from fla.ops.gated_delta_rule import naive_recurrent_gated_delta_rule

    inp = titans_inputs(B=2, T=40, H=3, D=8)
    u_q, u_k, u_v, u_eta, u_alpha = inp.us
    s0 = inp.s0

    def read(m, u):  # M(u) = u + S_m,0 u with the initial states
        return u + torch.einsum("hij,bthj->bthi", s0[:, m], u)

    q, k, v = unit_norm(read(MEM_Q, u_q)), unit_norm(read(MEM_K, u_k)), unit_norm(read(MEM_V, u_v))
    beta = torch.sigmoid((inp.w_eta * (u_eta + torch.einsum("hij,bthj->bthi", s0[:, 3], u_eta))).sum(-1) + inp.b_eta)
    g = log_decay((inp.w_alpha * (u_alpha + torch.einsum("hij,bthj->bthi", s0[:, 4], u_alpha))).sum(-1) + inp.b_alpha, inp.a_log)
    v_hat = unit_norm(read(MEM_MAIN, v))
    initial = s0[:, MEM_MAIN].transpose(-1, -2).expand(2, -1, -1, -1)  # fla's state is S^T
    gdn, _ = naive_recurrent_gated_delta_rule(q, k, v_hat - k, beta, g, scale=1.0, initial_state=initial)

    o, _ = titans_chunk(*inp.us, *inp.params, chunk_size=64)
    assert (o - (q + gdn)).abs().max() <= 2e-5


def test_a_chunk_longer_than_every_sequence_is_one_chunk(titans_inputs):
    # The no-self-modification ablation sets C to ~1M: the layout must not grow with C.
    inp = titans_inputs(B=1, T=30, H=2, D=8)
    cu = torch.tensor([0, 12, 30])
    o_big, s_big = titans_chunk(*inp.us, *inp.params, chunk_size=1 << 20, cu_seqlens=cu, output_final_state=True)
    o_one, s_one = titans_chunk(*inp.us, *inp.params, chunk_size=18, cu_seqlens=cu, output_final_state=True)
    assert torch.equal(o_big, o_one) and torch.equal(s_big, s_one)


def test_s_eta_is_not_summarised_by_its_gate_readout(titans_inputs):
    """hope-math.md §2 says S_eta enters only through r = S_etaᵀ w_eta, so carrying r would be
    exact. It is not: the self-generated value v̂_eta = N(v + S_eta v) normalises by the whole of
    S_eta v. Two initial S_eta with the same r give the same first chunk and then part ways, which
    is why every form here carries all six states in full."""
    inp = titans_inputs(B=1, T=48, H=1, D=8, dtype=torch.float64, seed=4)
    w = inp.w_eta[0]
    a = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a -= (a @ w) / (w @ w) * w  # a ⊥ w, so (a bᵀ)ᵀ w = 0
    b = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s0_b = inp.s0.clone()
    s0_b[0, 3] += 0.5 * torch.outer(a, b)  # memory 3 is S_eta
    assert torch.allclose(inp.s0[0, 3].T @ w, s0_b[0, 3].T @ w, atol=1e-12)
    params_b = [s0_b] + inp.params[1:]
    o_a, _ = titans_reference(*inp.us, *inp.params, chunk_size=16)
    o_b, _ = titans_reference(*inp.us, *params_b, chunk_size=16)
    assert (o_a[:, :16] - o_b[:, :16]).abs().max() <= 1e-12
    assert (o_a[:, 16:] - o_b[:, 16:]).abs().max() > 1e-4
