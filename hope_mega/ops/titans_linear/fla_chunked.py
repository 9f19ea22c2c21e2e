"""The self-modifying Titans recurrence with fla's chunked gated delta rule doing each chunk's update.

Same chunk loop as chunk.py (spec §2): the reads of a self-modification chunk (k, q, v, beta, g and
the six self-generated values) come from the states at the end of the previous chunk, and then the
per-token recurrence of the six memories, stacked along the value dimension, is one gated delta
rule. Here that rule is fla's `chunk_gated_delta_rule` (Triton, with its own backward), called once
per self-modification chunk over every sequence still running at that step as one varlen batch:
only real tokens go in, so a sequence's last, shorter chunk is simply a shorter fla sequence.

fla is the bridge between the torch path and a fused kernel: the delta rule runs in GPU kernels, but
the reads stay outside them, so each step launches its kernels and moves the states through
global memory. On CPU its kernels run only under Triton's interpreter (see triton_cpu.py).

Precision: everything handed to fla is fp32, but on NVIDIA GPUs Triton runs fp32 `tl.dot` as TF32
unless told otherwise (TRITON_F32_DEFAULT=ieee), and most of fla's dots leave the default; the
agreement with titans_chunk in tests/ops/test_fla_chunked.py is measured under the interpreter,
which computes in full fp32.
"""

from __future__ import annotations

import os

import torch

from ..common import (
    MEM_MAIN, MEMORIES, ChunkSchedule, check_inputs, compute_dtype, host_to_device, sequence_lengths,
)
from .chunk import chunk_reads


def titans_fla(
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
    """Self-modifying Titans with fla's gated delta rule per chunk; same signature and results as
    `titans_reference`."""
    if u_q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "titans_fla on CPU needs Triton's interpreter: call "
            "hope_mega.ops.triton_cpu.enable_triton_interpreter() before triton is imported"
        )
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size)
    B, T, H, D = u_q.shape
    M = len(MEMORIES)
    sched = ChunkSchedule(sequence_lengths(B, T, cu_seqlens), chunk_size, u_q.device)
    dt = compute_dtype(u_q)
    slots = sched.gather(u_q, u_k, u_v, u_eta, u_alpha, dtype=dt)  # 5 x [H, slots, C, D]
    params = [p.to(dt) for p in (w_eta, b_eta, w_alpha, b_alpha, a_log)]

    # Per step, the real tokens of the running sequences and their fla varlen boundaries. Kept on
    # the host as well, so fla need not copy cu_seqlens back from the device at every call.
    valid_cpu = sched.valid_host
    real = [host_to_device(ok.flatten().nonzero().squeeze(1), u_q.device) for ok in valid_cpu.split(sched.active)]
    cu_cpu = [torch.nn.functional.pad(ok.sum(1).cumsum(0), (1, 0)) for ok in valid_cpu.split(sched.active)]
    cu_dev = [host_to_device(c, u_q.device) for c in cu_cpu]
    # Position of every token's output in the step-major list of real tokens.
    real_rank = sched.valid.flatten().long().cumsum(0) - 1
    token_pos = real_rank[sched.scatter_index]

    mem = slice(MEM_MAIN * D, (MEM_MAIN + 1) * D)
    S = s0.to(dt).expand(sched.num_sequences, *s0.shape)
    outs, finished = [], []
    for step, xs in enumerate(zip(*(sched.steps(x) for x in slots))):
        n = sched.active[step]
        q, k, values, beta, g = chunk_reads(S.transpose(0, 1), *xs, *params)
        # Heads first [H, n, C, ...] -> fla's [1, real tokens, H, ...].
        q, k, values, beta, g = (t.movedim(0, 2).flatten(0, 1)[real[step]][None] for t in (q, k, values, beta, g))
        # fla's state is [n, H, K, V]: S^T, with the six memories side by side along V.
        h0 = S.reshape(n, H, M * D, D).transpose(-1, -2)
        o, h = chunk_gated_delta_rule(
            q=q,
            k=k,
            v=values,
            g=g,
            beta=beta,
            scale=1.0,  # fla's default 1/sqrt(K) would scale the read; the spec reads q unscaled
            initial_state=h0,
            output_final_state=True,
            cu_seqlens=cu_dev[step],
            cu_seqlens_cpu=cu_cpu[step],
        )
        outs.append(q[0] + o[0, :, :, mem])  # M_mem(q) = q + S_mem q, read after the write
        S = h.transpose(-1, -2).reshape(n, H, M, D, D)
        still = sched.active[step + 1] if step + 1 < len(sched.active) else 0
        finished.append(S[still:])  # sequences whose last chunk this was
        S = S[:still]
    o = torch.cat(outs)[token_pos].reshape(B, T, H, D)
    return o, (sched.final_states(finished) if output_final_state else None)
