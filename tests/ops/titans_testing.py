"""Inputs and a gradient harness shared by the Titans op tests (and their interpreted subprocesses)."""

import torch


class TitansInputs:
    """Random inputs and parameters for the Titans op, in the layout every form takes: matrix
    memories s0 [H, 6, D, D], or with `hidden` MLP memories s0 [H, 6, 2, D, hidden] (W_1, W_2ᵀ)."""

    def __init__(self, B, T, H, D, dtype=torch.float32, seed=0, u_scale=1.0, s0_scale=0.1, hidden=None):
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

        self.us = [rand(B, T, H, D, scale=u_scale) for _ in range(5)]
        self.s0 = rand(H, 6, D, D, scale=s0_scale) if hidden is None else rand(H, 6, 2, D, hidden, scale=s0_scale)
        self.w_eta = rand(H, D, scale=D**-0.5)
        self.b_eta = rand(H, scale=0.5)
        self.w_alpha = rand(H, D, scale=D**-0.5)
        self.b_alpha = rand(H, scale=0.5) - 3.0
        self.a_log = (torch.rand(H, generator=g, dtype=torch.float64) * 2.7).to(dtype)

    @property
    def params(self):
        return [self.s0, self.w_eta, self.b_eta, self.w_alpha, self.b_alpha, self.a_log]

    def leaves(self):
        return [t.clone().requires_grad_(True) for t in self.us + self.params]


def run_with_grads(op, leaves, chunk_size, cu_seqlens=None, seed=1):
    """Outputs, final states and the gradients of `leaves` under a fixed random projection."""
    o, final = op(*leaves, chunk_size=chunk_size, cu_seqlens=cu_seqlens, output_final_state=True)
    g = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=g, dtype=o.dtype)
    w_s = torch.randn(final.shape, generator=g, dtype=final.dtype)
    ((o * w_o).sum() + (final * w_s).sum()).backward()
    return o.detach(), final.detach(), [x.grad for x in leaves]


def assert_documents_independent(op, inp):
    """Changing one packed document changes no other document's outputs or final states, and a
    document gives the same results alone as in the row."""
    cu = torch.tensor([0, 11, 40, 60])  # inp: one row of 60 tokens
    o, s = op(*inp.us, *inp.params, chunk_size=8, cu_seqlens=cu, output_final_state=True)
    changed = [u.clone() for u in inp.us]
    for u in changed:
        u[:, 11:40] = torch.randn_like(u[:, 11:40])
    o2, s2 = op(*changed, *inp.params, chunk_size=8, cu_seqlens=cu, output_final_state=True)
    assert (o2[:, 11:40] - o[:, 11:40]).abs().max() > 1e-2  # the changed document did change
    assert torch.equal(o2[:, :11], o[:, :11]) and torch.equal(o2[:, 40:], o[:, 40:])
    assert torch.equal(s2[0], s[0]) and torch.equal(s2[2], s[2])
    alone, s_alone = op(*[u[:, 40:60] for u in inp.us], *inp.params, chunk_size=8, output_final_state=True)
    assert (alone - o[:, 40:60]).abs().max() <= 1e-6
    assert (s_alone[0] - s[2]).abs().max() <= 1e-6
