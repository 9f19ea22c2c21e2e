"""What the Titans ops (matrix memories in titans_linear/, MLP memories in titans_mlp/) and their
forms share: the memory layout, the normalisation, the gate parametrisation, the split of a
(possibly packed) batch into sequences, and the step-major chunk layout of the chunk-wise forms.

Kept deliberately small: each form writes its own recurrence, so that the reference stays an
independent definition and the tests compare two codes, not one code twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The six fast memories of spec §2, in the order they are stacked along the value dimension.
MEMORIES = ("k", "v", "q", "eta", "alpha", "mem")
MEM_K, MEM_V, MEM_Q, MEM_ETA, MEM_ALPHA, MEM_MAIN = range(len(MEMORIES))
NORM_EPS = 1e-6


class _UnitNorm(torch.autograd.Function):
    """N(x) with a backward written out, g_x = r (g - (g . y) y) for y = N(x), r = rsqrt(|x|^2 + eps):
    four passes over x where autograd's square / sum / rsqrt / mul chain takes about twice that,
    and N runs four times per chunk step (k, q, v, v_hat)."""

    @staticmethod
    def forward(ctx, x):
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().add_(NORM_EPS).rsqrt_()
        y = x * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, g):
        y, r = ctx.saved_tensors
        dot = (g * y).sum(-1, keepdim=True)
        return torch.addcmul(g, dot, y, value=-1).mul_(r)


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """N(x) = x * rsqrt(|x|^2 + 1e-6) over the last (head-width) dimension."""
    return _UnitNorm.apply(x)


@dataclass(frozen=True)
class TitansVariant:
    """Ablations of the matrix-memory recurrence (spec §2), for the reference and the torch chunk
    form only; every field's default is the spec. Set from the `model.titans_*` config keys.

    - value_norm: v = N(M̄_v(u_v)) and v̂ = N(M̄_□(v)); False drops both N (the spec's [choice]
      for stability);
    - residual_read: memories read M(u) = u + S u; False reads M(u) = S u, so the delta-rule
      values are v̂ instead of v̂ − k and the output is S_mem q instead of q + S_mem q;
    - beta_max: beta = beta_max · sigmoid(...); 2 is Gated DeltaNet's (0, 2) option;
    - q_scale: q is multiplied by 1/sqrt(d_h) after its norm (the spec does not scale it);
    - gate_memory: beta's and the decay's logits are w . M̄(u) + b, read through their own
      memories; False reads w . u + b, a fixed linear function of the input as Gated DeltaNet's
      gates are (M_eta and M_alpha are still written, but nothing reads them).
    """

    value_norm: bool = True
    residual_read: bool = True
    beta_max: float = 1.0
    q_scale: bool = False
    gate_memory: bool = True

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """The values v and v̂ from their memory reads: N(x), or x without value_norm."""
        return unit_norm(x) if self.value_norm else x

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """q from its memory read: N(x), times 1/sqrt(d_h) with q_scale."""
        q = unit_norm(x)
        return q * x.shape[-1] ** -0.5 if self.q_scale else q


DEFAULT_VARIANT = TitansVariant()


def require_default_variant(variant: TitansVariant, form: str) -> None:
    """The forms that implement only the spec refuse an ablation rather than ignore it."""
    if variant != DEFAULT_VARIANT:
        raise ValueError(
            f"{form} implements only the spec's Titans recurrence, not the ablation {variant}; "
            "run the matrix memories with impl='chunk' or 'reference' (impl='auto' picks chunk)"
        )


def learning_rate(logit: torch.Tensor, beta_max: float = 1.0) -> torch.Tensor:
    """beta = beta_max * sigmoid(w_eta . M_eta(u_eta) + b_eta), in (0, beta_max); the spec's is 1."""
    beta = torch.sigmoid(logit)
    return beta if beta_max == 1.0 else beta_max * beta


def log_decay(logit: torch.Tensor, a_log: torch.Tensor) -> torch.Tensor:
    """g = -exp(A) * softplus(w_alpha . M_alpha(u_alpha) + b_alpha) <= 0; alpha = exp(g)."""
    return -a_log.exp() * F.softplus(logit)


def sequence_lengths(batch: int, seq_len: int, cu_seqlens) -> list[int]:
    """Lengths of the independent sequences in a [batch, seq_len] input.

    `cu_seqlens` (fla's varlen convention) indexes the flattened batch*seq_len tokens; without it
    every row is one sequence. Packed rows must have their row starts in `cu_seqlens` too, since
    a memory never carries across rows. It may be a tensor or the host's sequence of ints: the
    chunk grid is laid out on the host, so a GPU tensor costs a device sync here, which the model
    avoids by passing the offsets it computed on the host (`Documents.cu_seqlens_host`).
    """
    total = batch * seq_len
    if cu_seqlens is None:
        return [seq_len] * batch
    cu = [int(c) for c in (cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens)]
    if cu[0] != 0 or cu[-1] != total or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(
            f"cu_seqlens must rise strictly from 0 to batch*seq_len={total}, got {cu[:8]}{'...' if len(cu) > 8 else ''}"
        )
    if batch > 1:
        row_starts = set(range(0, total, seq_len))
        if not row_starts <= set(cu):
            raise ValueError("cu_seqlens must contain every row start (a memory never crosses rows)")
    return [b - a for a, b in zip(cu, cu[1:])]


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device` without stalling the host: to a GPU from pinned memory,
    asynchronously (a pageable copy waits for the stream), elsewhere a plain move."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def check_inputs(u_q, u_k, u_v, u_eta, u_alpha, s0, w_eta, b_eta, w_alpha, b_alpha, a_log, chunk_size,
                 state_shape=None, state_name="[heads, 6, head_dim, head_dim]"):
    """`state_shape` is what `s0` must be; None: the matrix memories, [H, 6, D, D]."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    shape = u_q.shape
    if u_q.dim() != 4:
        raise ValueError(f"inputs must be [batch, seq, heads, head_dim], got {tuple(shape)}")
    for name, u in (("u_k", u_k), ("u_v", u_v), ("u_eta", u_eta), ("u_alpha", u_alpha)):
        if u.shape != shape:
            raise ValueError(f"{name} has shape {tuple(u.shape)}, u_q has {tuple(shape)}")
    _, _, h, d = shape
    want_state = tuple(state_shape) if state_shape is not None else (h, len(MEMORIES), d, d)
    if tuple(s0.shape) != want_state:
        raise ValueError(f"s0 must be {state_name} = {want_state}, got {tuple(s0.shape)}")
    for name, p, want in (
        ("w_eta", w_eta, (h, d)),
        ("w_alpha", w_alpha, (h, d)),
        ("b_eta", b_eta, (h,)),
        ("b_alpha", b_alpha, (h,)),
        ("a_log", a_log, (h,)),
    ):
        if p.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(p.shape)}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The recurrence runs in fp32 whatever the activations are (bf16 on GPU); fp64 stays fp64
    so the forms can be compared to rounding error in tests."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class ChunkSchedule:
    """Where every token of a (packed) batch sits in the step-major chunk layout.

    Every sequence gets its own chunk grid. Sequences are sorted by their number of chunks, so at
    loop step i the sequences still running are a prefix of the sorted order; all chunks are
    gathered into one padded [slots, C] layout once, before the loop, and split by step, which
    keeps the backward linear in T (per-step slicing of the full input would be O(T^2/C)).

    `gather_index` [slots, C] points into the flattened tokens, `valid` marks real tokens,
    `active[i]` is how many sequences run at step i, `scatter_index` maps each flattened token back
    to its slot position, and `order` is the sort of the sequences. Padding slots point at token 0:
    the chunk steps give padding beta = 0 and g = 0, so a padding slot changes no state and no real
    token's output, and its gradient is exactly zero, whatever values it reads (reading real
    values rather than an appended zero row saves a copy of every input).
    """

    def __init__(self, lengths: list[int], chunk_size: int, device: torch.device):
        # Slots are as wide as a chunk, or as the longest sequence when one chunk covers it all
        # (C >= T: no self-modification), so a huge C costs nothing.
        C = min(chunk_size, max(lengths, default=1))
        total = sum(lengths)
        # Laid out on the host from the Python lengths, without reading a tensor back, and copied
        # to the device once: nothing here waits for the device.
        starts = [0]
        for n in lengths[:-1]:
            starts.append(starts[-1] + n)
        n_chunks = [-(-n // C) for n in lengths]
        order = sorted(range(len(lengths)), key=lambda i: -n_chunks[i])  # stable: ties keep input order
        n_sorted = [n_chunks[i] for i in order]
        self.active, running = [], len(n_sorted)
        for step in range(n_sorted[0] if lengths else 0):
            while n_sorted[running - 1] <= step:  # sorted descending: the finished ones are a suffix
                running -= 1
            self.active.append(running)
        lens_sorted = torch.tensor([lengths[i] for i in order], dtype=torch.long)
        starts_sorted = torch.tensor([starts[i] for i in order], dtype=torch.long)
        offs = torch.arange(C, dtype=torch.long)
        index, valid = [], []
        for i, n in enumerate(self.active):
            pos_in_seq = i * C + offs[None, :]  # [1, C]
            ok = pos_in_seq < lens_sorted[:n, None]
            index.append(torch.where(ok, starts_sorted[:n, None] + pos_in_seq, 0))
            valid.append(ok)
        gather_index, self.valid_host = torch.cat(index), torch.cat(valid)
        # Every real token has one slot; the padding slots' outputs are never read.
        real = self.valid_host.flatten()
        scatter = torch.empty(total, dtype=torch.long)
        scatter[gather_index.flatten()[real]] = torch.arange(real.numel())[real]
        self.gather_index = host_to_device(gather_index, device)
        self.valid = host_to_device(self.valid_host, device)
        self.scatter_index = host_to_device(scatter, device)
        self.order = host_to_device(torch.tensor(order, dtype=torch.long), device)
        self.num_sequences = len(lengths)

    def gather(self, *inputs: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """[B, T, H, D] inputs -> one [H, slots, C, D] tensor each, heads first: a step's chunks of
        one head are then one contiguous [n*C, D] block, which the chunk steps multiply as it is."""
        B, T, H, D = inputs[0].shape
        # index_select, not advanced indexing: on CPU it copies whole rows, several times faster.
        index = self.gather_index.flatten()
        return [u.reshape(B * T, H, D).to(dtype).transpose(0, 1).index_select(1, index).unflatten(1, self.gather_index.shape)
                for u in inputs]

    def steps(self, x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, ...]:
        """x split by loop step along its slot dimension; a single step is x itself (split's
        backward would copy its gradient whole)."""
        return x.split(self.active, dim) if len(self.active) > 1 else (x,)

    def final_states(self, finished: list[torch.Tensor]) -> torch.Tensor:
        """Per-step lists of the states of the sequences that ended there -> [N, ...] in input
        order. Sequences finish from the end of the sorted order backwards."""
        return torch.cat(finished[::-1])[torch.argsort(self.order)]


def run_chunks(chunk_step, us, s0, params, chunk_size, cu_seqlens, output_final_state):
    """The serial chunk loop of a chunk-wise form, over every sequence of a (packed) batch at once.

    `chunk_step(S, u_q, u_k, u_v, u_eta, u_alpha, valid, *params, carry=m)` takes the memories at
    the chunk start of the n sequences still running, S [n, *s0.shape], or [1, *s0.shape] at the
    first step, where every sequence starts from s0 (kept shared rather than copied n times),
    their chunk's inputs heads first, [H, n, C, D], and valid [n, C]. It returns the main
    memory's outputs [H, n, C, D] and the chunk-end memories of the first m sequences only, or
    None for m = 0: a sequence whose last chunk this is needs no chunk-end state unless the final
    states are asked for, and at short documents that update is most of the state work. Returns
    o [B, T, H, D] and, if asked, the final memories [N, *s0.shape].
    """
    B, T, H, D = us[0].shape
    sched = ChunkSchedule(sequence_lengths(B, T, cu_seqlens), chunk_size, us[0].device)
    dt = compute_dtype(us[0])
    slots = sched.gather(*us, dtype=dt)  # 5 x [H, slots, C, D]
    params = [p.to(dt) for p in params]
    S = s0.to(dt)[None]
    outs, finished = [], []
    steps = zip(*(sched.steps(x) for x in slots))
    for step, (xs, ok) in enumerate(zip(steps, sched.steps(sched.valid, 0))):
        still = sched.active[step + 1] if step + 1 < len(sched.active) else 0
        o, S = chunk_step(S, *xs, ok, *params, carry=sched.active[step] if output_final_state else still)
        outs.append(o)
        if output_final_state:
            finished.append(S[still:])  # sequences whose last chunk this was
            S = S[:still]
    o = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
    o = o.flatten(1, 2).transpose(0, 1).index_select(0, sched.scatter_index).reshape(B, T, H, D)
    return o, (sched.final_states(finished) if output_final_state else None)
