"""Gated DeltaNet (Yang, Kautz, Hatamizadeh, ICLR 2025) in the Hope model shell: `model.mixer: gdn`.

An outside control for the claim that our Titans layer with one chunk per sequence (C >= T, spec §2
last paragraph) learns like Gated DeltaNet: the recurrence here is flash-linear-attention's (fla's)
own code, called, not ours, so a bug shared by our ops and our reading of the paper cannot hide in
both sides of the comparison. Around it, the layer is fla's `GatedDeltaNet`
(fla/layers/gated_deltanet.py) with `expand_v = 1` and `head_dim = cfg.head_dim`, so its heads have
the shapes of our Titans heads:

    q, k, v = SiLU(conv(x W_q)), SiLU(conv(x W_k)), SiLU(conv(x W_v))   (short conv, per document)
    q, k    = q · rsqrt(‖q‖² + 1e-6), k · rsqrt(‖k‖² + 1e-6)              (fla's l2norm)
    β = σ(x W_β),   g = −exp(A) · softplus(x W_a + dt_bias)             (per head; no bias on W_β)
    S_t = e^{g_t} S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,   o_t = S_t q_t / √d_h  (after the write)
    y = W_o ( RMSNorm_head(o) ⊙ SiLU(x W_z) )

The read is scaled by fla's default 1/√d_h, as fla's layer leaves it (our Titans reads q unscaled).
The memory starts from zero at every document start (no learned initial state), and A and dt_bias
are drawn as fla's layer draws them: A ~ U(0, 16), softplus(dt_bias) ~ logU(1e-3, 1e-1).

Which of fla's recurrences runs:
- CUDA: `chunk_gated_delta_rule` (Triton, fla's own backward); packed rows go in as one varlen
  batch (`cu_seqlens`). fp32 inputs, but Triton may run fp32 dots as TF32 on NVIDIA GPUs.
- elsewhere: `naive_chunk_gated_delta_rule` (plain torch, differentiated by autograd) with fla's
  64-token chunks. Forward + backward at H = 2, d_h = 64, fp32 on one core, it took 16 / 21 / 30 ms
  at B = 2, T = 64 / 128 / 256 (70 ms at B = 8, T = 256), where the token loop of
  `naive_recurrent_gated_delta_rule` took 35 / 74 / 153 ms (287 ms); both agree to ~1e-6.
  The naive forms take no `cu_seqlens`, so a row holding several documents runs one document at a
  time, each padded to whole chunks: a Python loop, slow, meant for tests and CPU smoke runs only.

The recurrence runs in fp32 under autocast too (spec §4), like the Titans mixer's.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .conv import document_causal_conv
from .documents import Documents
from .layers import HeadDraws, head_param, short_conv_weight

# Sections of the fused input projection, each n_heads * head_dim wide, and of the small one that
# gives each head its beta and decay (n_heads wide each).
SECTIONS = ("q", "k", "v", "gate")
GATE_SECTIONS = ("beta", "decay")
# The chunk length of fla's chunk forms (its kernel's default, and what the naive form is run with).
FLA_CHUNK = 64


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """fla's l2norm (its use_qk_l2norm_in_kernel): x · rsqrt(‖x‖² + 1e-6) over the last dim."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def gated_delta_rule(q, k, v, beta, g, cu_seqlens: tuple[int, ...] | None, scale: float,
                     cu_seqlens_device: torch.Tensor | None = None) -> torch.Tensor:
    """fla's gated delta rule from a zero state at every document start.

    q, k, v [B, T, H, D], beta, g [B, T, H] (g the log decay) -> o [B, T, H, D]. `cu_seqlens`: the
    documents' offsets into the flattened B*T tokens, row starts included (Documents'
    convention), or None for one document per row; `cu_seqlens_device` the same offsets on q's
    device, where the CUDA kernel reads them.
    """
    # Imported here: fla pulls in triton, seconds of import the other mixers need not pay.
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, naive_chunk_gated_delta_rule

    B, T, H, D = q.shape
    packed = cu_seqlens is not None and any(c % T for c in cu_seqlens)
    if q.is_cuda:
        if not packed:
            return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)[0]
        if cu_seqlens_device is None:
            cu_seqlens_device = torch.tensor(cu_seqlens, dtype=torch.long, device=q.device)
        flat = [t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g, beta)]
        o, _ = chunk_gated_delta_rule(
            *flat, scale=scale, cu_seqlens=cu_seqlens_device.long(),
            cu_seqlens_cpu=torch.tensor(cu_seqlens, dtype=torch.long),
        )  # fmt: skip
        return o.reshape(B, T, H, D)
    if not packed:
        return naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=FLA_CHUNK, scale=scale)[0]
    flat = [t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g, beta)]
    outs = [
        naive_chunk_gated_delta_rule(*(t[:, start:end] for t in flat), chunk_size=FLA_CHUNK, scale=scale)[0]
        for start, end in zip(cu_seqlens, cu_seqlens[1:])
    ]
    return torch.cat(outs, dim=1).reshape(B, T, H, D)


class GatedDeltaNetMixer(nn.Module):
    def __init__(self, cfg: ModelConfig, layers, n_layers: int):
        super().__init__()
        if cfg.n_heads % layers.tp_size:
            raise ValueError(f"model.n_heads: {cfg.n_heads} heads cannot be split over {layers.tp_size} tensor-parallel ranks")
        D = cfg.head_dim
        self.heads = cfg.n_heads // layers.tp_size  # this rank's heads
        self.tp_size, self.tp_rank = layers.tp_size, layers.tp_rank
        self.head_dim = D
        self.scale = D**-0.5
        self.eps = cfg.norm_eps
        self.in_proj = layers.column(cfg.d_model, len(SECTIONS) * cfg.n_heads * D, cfg.init_std, sections=len(SECTIONS))
        self.gate_proj = layers.column(cfg.d_model, len(GATE_SECTIONS) * cfg.n_heads, cfg.init_std,
                                       sections=len(GATE_SECTIONS))
        self.out_proj = layers.row(cfg.n_heads * D, cfg.d_model, cfg.init_std / math.sqrt(2 * n_layers))
        H = self.heads

        self.conv_weight = short_conv_weight(H, D, cfg.conv_size)
        self.a_log, self.dt_bias = head_param(H), head_param(H)
        self.out_norm = head_param(H, D)
        self.reset_gdn_parameters()

    @torch.no_grad()
    def reset_gdn_parameters(self) -> None:
        """Every per-head parameter, drawn as `HeadDraws` says."""
        draws = HeadDraws(self.a_log, self.heads, self.tp_size, self.tp_rank)
        full, total, heads = draws.full, draws.total, draws.heads
        draws.short_conv(self.conv_weight)
        # fla's GatedDeltaNet: A ~ U(0, 16) (our Titans draws U(1, 16), Mamba2's range), and
        # softplus(dt_bias) ~ logU(1e-3, 1e-1) floored at 1e-4.
        self.a_log.copy_(full(total).uniform_(0, 16).log_()[heads])
        dt = full(total).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp_(min=1e-4)[heads]
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.out_norm.fill_(1.0)

    def features(self, z: torch.Tensor, zg: torch.Tensor, docs: Documents):
        """From the projections' outputs z [T, B, 4 * H * D] and zg [T, B, 2 * H]: the recurrence's
        inputs q, k, v [B, T, H, D], beta, g [B, T, H] and the output gate's pre-activation
        [B, T, H, D], in fp32. Call with autocast disabled."""
        T, B = z.shape[:2]
        H, D = self.heads, self.head_dim
        z = z.transpose(0, 1).float().reshape(B, T, len(SECTIONS), H, D)
        # One split, not a select per section: each select's backward zero-fills a gradient of all of z.
        qkv, gate = z.split([3, 1], dim=2)
        q, k, v = F.silu(document_causal_conv(qkv, self.conv_weight.float(), docs)).unbind(2)
        beta_logit, a = zg.transpose(0, 1).float().reshape(B, T, len(GATE_SECTIONS), H).unbind(2)
        beta = torch.sigmoid(beta_logit)
        g = -self.a_log.float().exp() * F.softplus(a + self.dt_bias.float())
        return l2_normalize(q), l2_normalize(k), v, beta, g, gate.squeeze(2)

    def forward(self, x: torch.Tensor, docs: Documents) -> torch.Tensor:
        """x [T, B, d] (sequence-sharded under sequence parallelism) -> [T, B, d]."""
        z, zg = self.in_proj(x), self.gate_proj(x)  # the whole sequence, this rank's heads
        # fp32 from here (spec §4), under bf16 autocast too: autocast would run the conv and the
        # recurrence's matmuls in bf16 whatever their inputs' dtype.
        with torch.autocast(z.device.type, enabled=False):
            q, k, v, beta, g, gate = self.features(z, zg, docs)
            o = gated_delta_rule(q, k, v, beta, g, docs.cu_seqlens_host, self.scale, docs.cu_seqlens)
            B, T = o.shape[:2]
            y = self.gated_output(o, gate).to(x.dtype).reshape(B, T, -1).transpose(0, 1)
        return self.out_proj(y)

    def gated_output(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """RMSNorm per head times SiLU(gate), as fla's FusedRMSNormGated."""
        return o * torch.rsqrt(o.square().mean(-1, keepdim=True) + self.eps) * self.out_norm * F.silu(gate)
