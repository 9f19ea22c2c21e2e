"""HopeForCausalLM: a self-contained Hugging Face implementation of hope_mega's HopeLM.

This file is copied next to `config.json` by `hope_mega.convert.export` and loaded with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` on machines that do not have
hope_mega (or fla), so it imports only torch, transformers and its configuration. It therefore
holds its own compact copy of the model (hope_mega/model) and of the chunk-wise Titans recurrences
(hope_mega/ops/titans_linear/chunk.py, and titans_mlp/chunk.py for `memory: mlp`). The
duplication is deliberate — the exported folder must stand alone —
and tests/convert compares this model's logits with the native model's, so the copies cannot
drift apart unnoticed. Parameter names equal the native HopeLM state dict, so conversion is a copy.

What the training model does not need and this one adds is generation with a recurrent cache
(`HopeCache`): the prompt is prefilled chunk-wise, then every new token is one step of the
token-by-token recurrence (hope_mega/ops/titans_linear/reference.py; for MLP memories spec §2b's
per-token update with the chunk rule, its gradients at the chunk-start weights written out) from
the carried state. Packed documents
behave as in training: with `reset_at_eos` every memory, conv window, RoPE position and attention
span restarts after each EOS, in the prompt and in generated text alike. Rows of a batch are
independent. Prompts of different lengths are batched with left padding (`attention_mask` zeros
before each row's first real token, as `tokenizer(padding_side="left")` gives): the padding is a
document of its own, so every memory, conv window, RoPE position and attention span starts at the
row's first real token and a row generates what it would alone. Any other mask (right padding,
holes) is refused rather than silently ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_hope import HopeConfig

# The six fast memories, in the order they are stacked (spec §2): k, v, q, eta, alpha, main.
N_MEMORIES = 6
MEM_K, MEM_V, MEM_Q, MEM_ETA, MEM_ALPHA, MEM_MAIN = range(N_MEMORIES)
UNIT_NORM_EPS = 1e-6
TITANS_SECTIONS = 6  # q, k, v, eta, alpha, output gate: the blocks of the fused input projection


# ----------------------------------------------------------------------------- documents


class Documents:
    """Where the documents of a [B, T] batch start: the memories, conv windows and RoPE restart there.

    `position` [B, T] is each token's offset in its document, `doc_id` [B, T] numbers documents
    across the batch (row-major), `lengths` lists their lengths in that order, and `packed` says
    whether EOS splits rows at all (without it every row is one document).
    A decoding step carries `position` [B, 1] and `doc_start` instead.
    """

    def __init__(self, position, doc_id=None, lengths=None, packed=False, doc_start=None):
        self.position = position
        self.doc_id = doc_id
        self.lengths = lengths
        self.packed = packed
        self.doc_start = doc_start  # decoding: [B] index of the current document's first token

    @staticmethod
    def from_tokens(input_ids: torch.Tensor, eos_id: int | None, left_pad: torch.Tensor | None = None) -> "Documents":
        """`left_pad` [B]: each row's count of leading padding tokens; its first real token starts
        a document, so nothing before it is seen."""
        B, T = input_ids.shape
        start = torch.zeros(B, T, dtype=torch.bool, device=input_ids.device)
        start[:, 0] = True
        if eos_id is not None:
            start[:, 1:] = input_ids[:, :-1] == eos_id
        idx = torch.arange(T, device=input_ids.device).expand(B, T)
        if left_pad is not None:
            start |= idx == left_pad[:, None]
        doc_id = start.flatten().long().cumsum(0).view(B, T) - 1
        first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
        lengths = torch.bincount(doc_id.flatten()).tolist()
        return Documents(idx - first, doc_id, lengths, packed=eos_id is not None or left_pad is not None)


# ----------------------------------------------------------------------------- small layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def _linear(n_in: int, n_out: int, residual_layers: int = 0) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=False)
    # Output projections into the residual stream start smaller (std / sqrt(2 n_layers)).
    layer.residual_layers = residual_layers
    return layer


def causal_conv(x: torch.Tensor, weight: torch.Tensor, position: torch.Tensor, history=None) -> torch.Tensor:
    """Depthwise causal conv whose window restarts at each document start.

    x [B, T, *channels], weight [*channels, K], position [B, T]; `history` [B, K-1, *channels]
    holds the K-1 inputs before x (a decoding step), zeros otherwise: taps before the document
    start are masked by position either way.
    """
    K, T = weight.shape[-1], x.shape[1]
    if history is None:
        history = x.new_zeros(x.shape[0], K - 1, *x.shape[2:])
    x_all = torch.cat([history, x], 1)
    extra = (1,) * (x.dim() - 2)
    y = x * weight[..., K - 1]
    for j in range(1, K):
        shifted = x_all[:, K - 1 - j : K - 1 - j + T]  # x_{t-j}
        inside = (position >= j).view(*position.shape, *extra).to(x.dtype)
        y = y + shifted * inside * weight[..., K - 1 - j]
    return y


def rotary(x: torch.Tensor, position: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on x [B, H, T, D] at per-token positions [B, T]."""
    D = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angle = position.float()[:, None, :, None] * inv_freq
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float()[..., : D // 2], x.float()[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


# ----------------------------------------------------------------------------- Titans recurrence


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + UNIT_NORM_EPS)


def _gates(ue, ua, r_eta, r_alpha, b_eta, b_alpha, a_log, eq):
    """beta = sigmoid(w_eta . M_eta(u_eta) + b_eta), g = -exp(A) softplus(w_alpha . M_alpha(u_alpha) + b_alpha)."""
    beta = torch.sigmoid(torch.einsum(eq, ue, r_eta) + b_eta)
    g = -a_log.exp() * F.softplus(torch.einsum(eq, ua, r_alpha) + b_alpha)
    return beta, g


def _chunk_step(S, uq, uk, uv, ue, ua, valid, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """One self-modification chunk (WY/UT form) for n sequences: S [n, H, 6, D, D] at the chunk
    start, inputs [n, C, H, D]. Returns the main memory's output [n, C, H, D] and the end states."""
    n, C, H, D = uq.shape

    def read(mem, u):
        return u + torch.einsum("nhij,nchj->nchi", S[:, :, mem], u)

    k, q, v = unit_norm(read(MEM_K, uk)), unit_norm(read(MEM_Q, uq)), unit_norm(read(MEM_V, uv))
    # S_eta and S_alpha are only read through w: w . M(u) = (w + S^T w) . u.
    r_eta = w_eta + torch.einsum("nhij,hi->nhj", S[:, :, MEM_ETA], w_eta)
    r_alpha = w_alpha + torch.einsum("nhij,hi->nhj", S[:, :, MEM_ALPHA], w_alpha)
    beta, g = _gates(ue, ua, r_eta, r_alpha, b_eta, b_alpha, a_log, "nchd,nhd->nch")
    mask = valid[:, :, None].float()  # padding past a sequence's end leaves the state untouched
    beta, g = beta * mask, g * mask
    v_hat = unit_norm(v[:, :, :, None] + torch.einsum("nhmij,nchj->nchmi", S, v))  # [n, C, H, 6, D]

    K, Q = k.transpose(1, 2), q.transpose(1, 2)  # [n, H, C, D]
    V = (v_hat - k[:, :, :, None]).permute(0, 2, 1, 3, 4).reshape(n, H, C, N_MEMORIES * D)
    beta = beta.transpose(1, 2)
    G = g.transpose(1, 2).cumsum(-1)
    S0 = S.reshape(n, H, N_MEMORIES * D, D)
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    # exp(G_t - G_j) masked before the exp: exp(G_t) * exp(-G_j) overflows on long chunks.
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    A = (beta[..., :, None] * decay * (K @ K.transpose(-1, -2))).tril(-1)
    rhs = beta[..., None] * (V - G.exp()[..., None] * (K @ S0.transpose(-1, -2)))
    U = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    mem = slice(MEM_MAIN * D, (MEM_MAIN + 1) * D)
    O = G.exp()[..., None] * (Q @ S[:, :, MEM_MAIN].transpose(-1, -2))
    O = O + (decay * (Q @ K.transpose(-1, -2))) @ U[..., mem]
    G_end = G[..., -1:]
    S_next = G_end.exp()[..., None] * S0 + (U * (G_end - G).exp()[..., None]).transpose(-1, -2) @ K
    return (Q + O).transpose(1, 2), S_next.reshape(n, H, N_MEMORIES, D, D)


def _mlp(w1, w2t, u):
    """M(u) = u + W_1 GELU(W_2 u) for rows of u: weights [..., D, h] (W_1 and W_2ᵀ), u [..., C, D].
    Returns the pre-activation, the activation and M(u)."""
    z = u @ w2t
    a = F.gelu(z)
    return z, a, u + a @ w1.transpose(-1, -2)


def _gelu_grad(z):
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _mlp_grads(w1, w2t, k, v_hat):
    """The rank-one factors of the gradient of 1/2 |M(k) - v_hat|^2 at (W_1, W_2ᵀ) [..., 6, D, h]:
    grad W_1 = r aᵀ, grad W_2ᵀ = k δᵀ, for k [..., C, D] shared by the six memories."""
    z, a, m_k = _mlp(w1, w2t, k.unsqueeze(-3))
    r = m_k - v_hat
    return r, a, (r @ w1) * _gelu_grad(z)


def _mlp_reads(W, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """What a chunk (or token) reads from the MLP memories W [n, H, 6, 2, D, h] at its start,
    inputs [n, H, C, D]: q, k, v [n, H, C, D], beta, g [n, H, C], v_hat [n, H, 6, C, D]."""
    w1, w2t = W[:, :, :, 0], W[:, :, :, 1]
    order = [MEM_K, MEM_V, MEM_Q, MEM_ETA, MEM_ALPHA]
    _, _, read = _mlp(w1[:, :, order], w2t[:, :, order], torch.stack([uk, uv, uq, ue, ua], 2))
    k, v, q = (unit_norm(read[:, :, i]) for i in range(3))
    beta, g = _gates(read[:, :, 3], read[:, :, 4], w_eta, w_alpha, b_eta[:, None], b_alpha[:, None],
                     a_log[:, None], "nhcd,hd->nhc")
    return q, k, v, beta, g, unit_norm(_mlp(w1, w2t, v[:, :, None])[2])


def _mlp_chunk_step(W, uq, uk, uv, ue, ua, valid, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """One self-modification chunk with MLP memories (spec §2b, the dual form) for n sequences:
    W [n, H, 6, 2, D, h] at the chunk start, inputs [n, C, H, D]. Returns the main memory's
    output [n, C, H, D] and the chunk-end weights."""
    C = uq.shape[1]
    w1, w2t = W[:, :, :, 0], W[:, :, :, 1]
    q, k, v, beta, g, v_hat = _mlp_reads(W, *(u.transpose(1, 2) for u in (uq, uk, uv, ue, ua)),
                                         w_eta, b_eta, w_alpha, b_alpha, a_log)
    mask = valid[:, None, :].float()  # padding past a sequence's end leaves the weights untouched
    beta, g = beta * mask, g * mask
    r, a, delta = _mlp_grads(w1, w2t, k, v_hat)
    G = g.cumsum(-1)
    G_end = G[..., -1:]
    coef = (beta * (G_end - G).exp())[:, :, None, :, None]
    keep = G_end.exp()[..., None, None]
    w1_end = keep * w1 - (coef * r).transpose(-1, -2) @ a
    w2t_end = keep * w2t - (coef * k[:, :, None]).transpose(-1, -2) @ delta
    causal = torch.ones(C, C, dtype=torch.bool, device=uq.device).tril()
    P = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp() * beta[..., None, :]
    A = G.exp()[..., None]
    Z = A * (q @ w2t[:, :, MEM_MAIN]) - (P * (q @ k.transpose(-1, -2))) @ delta[:, :, MEM_MAIN]
    act = F.gelu(Z)
    o = q + A * (act @ w1[:, :, MEM_MAIN].transpose(-1, -2))
    o = o - (P * (act @ a[:, :, MEM_MAIN].transpose(-1, -2))) @ r[:, :, MEM_MAIN]
    return o.transpose(1, 2), torch.stack([w1_end, w2t_end], 3)


def mlp_token_step(W, W_bar, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """One token with MLP memories: W [B, H, 6, 2, D, h] the weights before it, W_bar those at
    the start of its chunk, which generate its reads and its gradient; inputs [B, H, D]."""
    q, k, v, beta, g, v_hat = _mlp_reads(W_bar, *(u[:, :, None] for u in (uq, uk, uv, ue, ua)),
                                         w_eta, b_eta, w_alpha, b_alpha, a_log)
    r, a, delta = _mlp_grads(W_bar[:, :, :, 0], W_bar[:, :, :, 1], k, v_hat)  # [B, H, 6, 1, *]
    grad = torch.stack([r.transpose(-1, -2) @ a, k[:, :, None].transpose(-1, -2) @ delta], 3)
    W = g.exp()[..., None, None, None] * W - beta[..., None, None, None] * grad  # g, beta [B, H, 1]
    return _mlp(W[:, :, MEM_MAIN, 0], W[:, :, MEM_MAIN, 1], q)[2][:, :, 0], W


def titans_chunkwise(inputs, s0, params, chunk_size: int, lengths: list[int], with_state: bool,
                     chunk_step=_chunk_step):
    """The recurrence over a (packed) batch, chunk by chunk; each sequence has its own chunk grid.

    inputs: u_q, u_k, u_v, u_eta, u_alpha [B, T, H, D] (fp32); `lengths` the sequences of the
    flattened B*T tokens. Returns o [B, T, H, D] and, with `with_state`, per sequence the states at
    the start of its last chunk (S_bar while that chunk continues) and at its end.
    """
    B, T, H, D = inputs[0].shape
    C = chunk_size
    dev = inputs[0].device
    starts = torch.tensor([0] + lengths[:-1], dtype=torch.long).cumsum(0)
    n_chunks = torch.tensor([-(-n // C) for n in lengths], dtype=torch.long)
    # Sorted by chunk count, the sequences still running at step i are a prefix.
    order = torch.argsort(n_chunks, descending=True, stable=True)
    lens, starts, n_sorted = torch.tensor(lengths)[order], starts[order], n_chunks[order]
    active = [int((n_sorted > i).sum()) for i in range(int(n_sorted[0]))]
    offs = torch.arange(C)
    index, valid = [], []
    for i, n in enumerate(active):
        pos = i * C + offs[None, :]
        ok = pos < lens[:n, None]
        index.append(torch.where(ok, starts[:n, None] + pos, B * T))
        valid.append(ok)
    index, valid = torch.cat(index).to(dev), torch.cat(valid).to(dev)
    x = torch.stack([u.reshape(B * T, H, D) for u in inputs], 1)
    x = torch.cat([x, x.new_zeros(1, *x.shape[1:])])  # the zero row padding points at
    S = s0.float().expand(len(lengths), *s0.shape)
    outs, first, last = [], [], []
    for step, (xs, ok) in enumerate(zip(x[index].split(active), valid.split(active))):
        still = active[step + 1] if step + 1 < len(active) else 0
        first.append(S[still:])  # sequences whose last chunk this is
        o, S = chunk_step(S, *xs.unbind(2), ok, *params)
        outs.append(o)
        last.append(S[still:])
        S = S[:still]
    real = valid.flatten().nonzero().squeeze(1)
    where = torch.empty(B * T, dtype=torch.long, device=dev)
    where[index.flatten()[real]] = real
    o = torch.cat(outs).flatten(0, 1)[where].reshape(B, T, H, D)
    if not with_state:
        return o, None, None
    unsort = torch.argsort(order).to(dev)  # sequences finish from the end of the sorted order
    return o, torch.cat(first[::-1])[unsort], torch.cat(last[::-1])[unsort]


def titans_token_step(S, S_bar, uq, uk, uv, ue, ua, w_eta, b_eta, w_alpha, b_alpha, a_log):
    """One token of the recurrence: S [B, H, 6, D, D] the states before it, S_bar the states that
    generate its keys, values and gates (end of the previous chunk); inputs [B, H, D]."""

    def read(mem, u):
        return u + torch.einsum("bhij,bhj->bhi", S_bar[:, :, mem], u)

    k, q, v = unit_norm(read(MEM_K, uk)), unit_norm(read(MEM_Q, uq)), unit_norm(read(MEM_V, uv))
    r_eta = w_eta + torch.einsum("bhij,hi->bhj", S_bar[:, :, MEM_ETA], w_eta)
    r_alpha = w_alpha + torch.einsum("bhij,hi->bhj", S_bar[:, :, MEM_ALPHA], w_alpha)
    beta, g = _gates(ue, ua, r_eta, r_alpha, b_eta, b_alpha, a_log, "bhd,bhd->bh")
    v_hat = unit_norm(v[:, :, None] + torch.einsum("bhmij,bhj->bhmi", S_bar, v))  # [B, H, 6, D]
    beta, decay = beta[..., None, None, None], g.exp()[..., None, None, None]
    # Delta rule at the decayed state: S <- a S (I - b k k^T) + b (v_hat - k) k^T.
    Sk = torch.einsum("bhmij,bhj->bhmi", S, k)
    S = decay * (S - beta * torch.einsum("bhmi,bhj->bhmij", Sk, k))
    S = S + beta * torch.einsum("bhmi,bhj->bhmij", v_hat - k[:, :, None], k)
    return q + torch.einsum("bhij,bhj->bhi", S[:, :, MEM_MAIN], q), S


# ----------------------------------------------------------------------------- mixers


class TitansMixer(nn.Module):
    def __init__(self, cfg: HopeConfig):
        super().__init__()
        H, D = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.heads, self.head_dim, self.chunk_size, self.eps = H, D, cfg.chunk_size, cfg.norm_eps
        # Matrix memories S [H, 6, D, D] (spec §2), or MLP memories W_1 and W_2ᵀ [H, 6, 2, D, h] (§2b).
        self.memory = getattr(cfg, "memory", "linear")
        hidden = getattr(cfg, "memory_expansion", 2) * D
        self.in_proj = _linear(cfg.d_model, TITANS_SECTIONS * H * D)
        self.out_proj = _linear(H * D, cfg.d_model, residual_layers=cfg.n_layers)
        self.conv_weight = nn.Parameter(torch.empty(3, H, D, cfg.conv_size))
        self.s0 = nn.Parameter(torch.empty(H, N_MEMORIES, *((D, D) if self.memory == "linear" else (2, D, hidden))))
        self.w_eta, self.w_alpha = nn.Parameter(torch.empty(H, D)), nn.Parameter(torch.empty(H, D))
        self.b_eta, self.b_alpha, self.a_log = (nn.Parameter(torch.empty(H)) for _ in range(3))
        self.out_norm = nn.Parameter(torch.empty(H, D))

    @torch.no_grad()
    def reset_titans_parameters(self) -> None:
        """The native initialisation (spec §2), for a model built from a config alone."""
        D, K = self.head_dim, self.conv_weight.shape[-1]
        nn.init.uniform_(self.conv_weight, -(K**-0.5), K**-0.5)
        nn.init.zeros_(self.s0)
        if self.memory == "mlp":
            nn.init.normal_(self.s0[:, :, 1], std=D**-0.5)
        nn.init.normal_(self.w_eta, std=D**-0.5)
        nn.init.normal_(self.w_alpha, std=D**-0.5)
        nn.init.zeros_(self.b_eta)
        self.a_log.copy_(torch.empty_like(self.a_log).uniform_(1, 16).log())
        dt = torch.empty_like(self.b_alpha).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.b_alpha.copy_(dt + torch.log(-torch.expm1(-dt)))
        nn.init.ones_(self.out_norm)

    def _params(self):
        return [p.float() for p in (self.w_eta, self.b_eta, self.w_alpha, self.b_alpha, self.a_log)]

    def forward(self, x: torch.Tensor, docs: Documents, state: dict | None, step: bool) -> torch.Tensor:
        z = self.in_proj(x)
        B, T = z.shape[:2]
        H, D, K = self.heads, self.head_dim, self.conv_weight.shape[-1]
        z = z.float().reshape(B, T, TITANS_SECTIONS, H, D)  # fp32 after the projections (spec §4)
        raw = z[:, :, :3]
        conv_w = self.conv_weight.float()
        if step:
            p = docs.position[:, 0]
            s0 = self.s0.float().expand_as(state["S"])
            rows = (B,) + (1,) * self.s0.dim()
            fresh = (p == 0).view(rows)
            S = torch.where(fresh, s0, state["S"])
            # Keys, values and gates of a chunk come from the states at the end of the previous one.
            S_bar = torch.where((p % self.chunk_size == 0).view(rows), S, state["S_bar"])
            qkv = F.silu(causal_conv(raw, conv_w, docs.position, history=state["window"]))
            u = [t[:, 0] for t in (*qkv.unbind(2), z[:, :, 3], z[:, :, 4])]
            token_step = titans_token_step if self.memory == "linear" else mlp_token_step
            o, S = token_step(S, S_bar, *u, *self._params())
            o = o[:, None]
            state.update(S=S, S_bar=S_bar, window=torch.cat([state["window"], raw], 1)[:, 1:])
        else:
            qkv = F.silu(causal_conv(raw, conv_w, docs.position))
            inputs = (*qkv.unbind(2), z[:, :, 3], z[:, :, 4])
            o, first, last = titans_chunkwise(
                inputs, self.s0, self._params(), self.chunk_size, docs.lengths, with_state=state is not None,
                chunk_step=_chunk_step if self.memory == "linear" else _mlp_chunk_step,
            )
            if state is not None:
                current = docs.doc_id[:, -1]  # each row's last document carries on
                window = torch.cat([raw.new_zeros(B, K - 1, *raw.shape[2:]), raw], 1)[:, -(K - 1) :]
                state.update(S=last[current], S_bar=first[current], window=window)
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + self.eps) * self.out_norm.float()
        y = (o * F.silu(z[:, :, 5])).to(x.dtype).reshape(B, T, H * D)
        return self.out_proj(y)


class AttentionMixer(nn.Module):
    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.heads, self.head_dim, self.theta = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.rope_theta
        self.qkv_proj = _linear(cfg.d_model, 3 * cfg.d_model)
        self.out_proj = _linear(cfg.d_model, cfg.d_model, residual_layers=cfg.n_layers)

    def forward(self, x: torch.Tensor, docs: Documents, state: dict | None, step: bool) -> torch.Tensor:
        z = self.qkv_proj(x)
        B, T = z.shape[:2]
        q, k, v = z.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        q, k = rotary(q, docs.position, self.theta), rotary(k, docs.position, self.theta)
        if step:
            k, v = torch.cat([state["k"], k], 2), torch.cat([state["v"], v], 2)
            # Only the keys of the current document: those from its first token on.
            visible = torch.arange(k.shape[2], device=x.device)[None, :] >= docs.doc_start[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :])
        elif not docs.packed:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            same_doc = docs.doc_id[:, :, None] == docs.doc_id[:, None, :]
            mask = same_doc & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        if state is not None:
            state.update(k=k, v=v)
        return self.out_proj(o.permute(0, 2, 1, 3).reshape(B, T, self.heads * self.head_dim))


# ----------------------------------------------------------------------------- blocks and model


class CMSLevel(nn.Module):
    def __init__(self, cfg: HopeConfig, hidden: int):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.gate_up = _linear(cfg.d_model, 2 * hidden)
        self.down = _linear(hidden, cfg.d_model, residual_layers=cfg.n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class CMS(nn.Module):
    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.levels = nn.ModuleList(CMSLevel(cfg, int(level["hidden"])) for level in cfg.cms_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.levels:
            x = level(x)
        return x


class HopeBlock(nn.Module):
    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = TitansMixer(cfg) if cfg.mixer == "titans" else AttentionMixer(cfg)
        self.cms = CMS(cfg)

    def forward(self, x, docs, state, step):
        x = x + self.mixer(self.mixer_norm(x), docs, state, step)
        return self.cms(x)


class HopeCache:
    """The recurrent state carried between forward calls during generation.

    Per layer a dict: titans — `S` [B, H, 6, D, D] the six memories after the last token (MLP
    memories: [B, H, 6, 2, D, h]), `S_bar` the states at the start of the current
    self-modification chunk, `window` [B, K-1, 3, H, D]
    the last pre-conv q/k/v projections; attention — `k`, `v` [B, H, T, D] (after RoPE). Shared:
    `position` [B] of the last token in its document, `last_token` [B] (an EOS there starts a new
    document), `doc_start` [B] the index of the current document's first token, `seen` the count.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, n_layers: int):
        self.layers = [{} for _ in range(n_layers)]
        self.seen = 0
        self.position = self.last_token = self.doc_start = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select rows (beam search): every per-row tensor follows `beam_idx`."""
        for layer in self.layers:
            for key, value in layer.items():
                layer[key] = value.index_select(0, beam_idx.to(value.device))
        self.position = self.position.index_select(0, beam_idx.to(self.position.device))
        self.last_token = self.last_token.index_select(0, beam_idx.to(self.position.device))
        self.doc_start = self.doc_start.index_select(0, beam_idx.to(self.position.device))


def _left_padding(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Each row's count of leading zeros in `attention_mask` [B, T], or None without padding.
    The cache holds where each row's prompt starts, so on decoding steps (whose mask repeats the
    prompt's and appends ones) only the form is checked."""
    if attention_mask is None:
        return None
    real = attention_mask.bool()
    if bool(real.all()):
        return None
    left_pad = (~real).long().cumprod(1).sum(1)
    idx = torch.arange(real.shape[1], device=real.device)
    if not bool((real == (idx[None, :] >= left_pad[:, None])).all()):
        raise ValueError(
            "HopeForCausalLM supports left padding only (attention_mask: zeros before each row's first real "
            "token, ones after it): its memories would read right padding or holes. Pad on the left "
            "(tokenizer padding_side='left')."
        )
    if bool((left_pad == real.shape[1]).any()):
        raise ValueError("attention_mask has a row of zeros only: that row holds no token to read")
    return left_pad


# generate() reads the cache back from the output field of this name: `cache` in the transformers
# releases that renamed it, `past_key_values` before.
_OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class HopePreTrainedModel(PreTrainedModel):
    config_class = HopeConfig
    base_model_prefix = "hope"
    _is_stateful = True
    _no_split_modules = ["HopeBlock"]
    # The recurrence's own parameters stay fp32 when the model is loaded in bf16 (spec §4).
    _keep_in_fp32_modules_strict = [f"mixer.{n}" for n in ("s0", "w_eta", "w_alpha", "b_eta", "b_alpha", "a_log")]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            n = getattr(module, "residual_layers", 0)
            nn.init.normal_(module.weight, std=std / math.sqrt(2 * n) if n else std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, TitansMixer):
            module.reset_titans_parameters()


class HopeForCausalLM(HopePreTrainedModel, GenerationMixin):
    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(HopeBlock(config) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = None if config.tie_embeddings else _linear(config.d_model, config.vocab_size)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Generation must not hand us a DynamicCache: the first forward builds a HopeCache itself.
        return False

    @property
    def eos_id(self) -> int | None:
        return self.config.eos_id if self.config.reset_at_eos else None

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Module | None:
        return self.head

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return hidden @ self.embed.weight.t()
        return self.head(hidden)

    def _run(self, input_ids, docs, cache, step):
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, docs, cache.layers[i] if cache is not None else None, step)
        return self.final_norm(x)

    def _forward_prompt(self, input_ids, cache, left_pad):
        docs = Documents.from_tokens(input_ids, self.eos_id, left_pad)
        hidden = self._run(input_ids, docs, cache, step=False)
        if cache is not None:
            T = input_ids.shape[1]
            cache.position = docs.position[:, -1].clone()
            cache.last_token = input_ids[:, -1].clone()
            cache.doc_start = T - 1 - cache.position
            cache.seen = T
        return hidden

    def _forward_steps(self, input_ids, cache):
        """Token by token from the cache; also serves a multi-token continuation of a cached prefix."""
        hidden = []
        for t in range(input_ids.shape[1]):
            token = input_ids[:, t]
            if self.eos_id is not None:
                new_doc = cache.last_token == self.eos_id
            else:
                new_doc = torch.zeros_like(token, dtype=torch.bool)
            position = torch.where(new_doc, torch.zeros_like(cache.position), cache.position + 1)
            cache.doc_start = torch.where(new_doc, torch.full_like(cache.doc_start, cache.seen), cache.doc_start)
            docs = Documents(position[:, None], packed=self.eos_id is not None, doc_start=cache.doc_start)
            hidden.append(self._run(token[:, None], docs, cache, step=True))
            cache.position, cache.last_token, cache.seen = position, token, cache.seen + 1
        return torch.cat(hidden, 1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: HopeCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        cache: HopeCache | None = None,
        **kwargs,
    ):
        """A forward over `input_ids` [B, T]; from an empty cache (or none) the prompt runs chunk-wise,
        from a filled cache the new tokens continue it one step each. With `labels` (shifted
        inside, -100 ignored) the mean next-token loss is returned too.

        The cache comes as `past_key_values` or as `cache`: transformers' `generate()` passes the
        one its release uses (it renamed the keyword within 5.x), and both name the same object."""
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the HopeCache as `cache` or as `past_key_values`, not two different ones")
        past_key_values = past_key_values if past_key_values is not None else cache
        left_pad = _left_padding(attention_mask)
        if past_key_values is not None and not isinstance(past_key_values, HopeCache):
            raise TypeError(
                f"past_key_values must be a HopeCache from a previous call, got {type(past_key_values).__name__}"
            )
        if past_key_values is not None and past_key_values.seen > 0:
            cache = past_key_values
            hidden = self._forward_steps(input_ids, cache)
        else:
            cache = past_key_values
            if cache is None and use_cache:
                cache = HopeCache(len(self.blocks))
            hidden = self._forward_prompt(input_ids, cache, left_pad)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self._logits(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        if return_dict is False:
            return tuple(t for t in (loss, logits, cache) if t is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_OUTPUT_CACHE_FIELD: cache})
