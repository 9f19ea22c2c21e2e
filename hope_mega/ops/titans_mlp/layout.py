"""How the MLP memories are stored, and the input checks every form of the op makes."""

from __future__ import annotations

from ..common import MEMORIES, check_inputs

# s0[h, m] stacks W_1 [d_h, h] and W_2ᵀ [d_h, h] of memory m: one tensor per head keeps the op's
# signature, the model's parameter and the checkpoints those of the matrix memories.
W1, W2T = 0, 1


def check_mlp_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size):
    if s0.dim() != 5:
        raise ValueError(f"s0 must be [heads, 6, 2, head_dim, hidden], got {tuple(s0.shape)}")
    H, D = u_q.shape[-2:] if u_q.dim() == 4 else (None, None)
    check_inputs(
        u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size,
        state_shape=(H, len(MEMORIES), 2, D, s0.shape[-1]), state_name="[heads, 6, 2, head_dim, hidden]",
    )  # fmt: skip
