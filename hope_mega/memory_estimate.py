"""Memory of one training step per GPU, estimated on paper (`hope-mega params` prints it).

What the trainer holds, as it runs on GPUs (bf16 autocast over fp32 parameters, DeepSpeed in fp32
with ZeRO over the data-parallel ranks, the fused Titans kernel):

- weights: fp32, this TP rank's shard of every split tensor and all of every replicated one;
- gradients: fp32, whole at ZeRO 0/1, this rank's partition at ZeRO 2 plus the reduce buckets;
- optimizer: ZeRO's fp32 master partition, the Adam moments and the CMS accumulators of the levels
  with a period > 1 (at ZeRO 0 no master copy, and the state is whole);
- activations: per token and layer, the tensors the backward keeps (counted below, tensor by
  tensor, at bf16 or fp32 as the forward makes them), the Titans boundary states, and the LM
  head's logits; with activation checkpointing each layer keeps only its input, and the one layer
  being recomputed holds its full set.

Boundary states depend on the documents, not only on train.seq_len: every document restarts its
chunk grid (spec §4), so a row of short documents holds a state per started chunk of each
document plus each document's final state. The estimate takes a document length (default: one
document per row) and says which it used.

This is an estimate for planning (does a config fit an 80 GB GPU?), not a measurement: allocator
fragmentation, NCCL buffers and the CUDA context (~1-3 GiB) come on top, hence the headroom kept
below the device size.
"""

from __future__ import annotations

import math

from .config import Config
from .parallel.zero import GRADIENT_BUCKET_ELEMENTS

GIB = 2**30
H100_BYTES = 80 * 10**9  # an 80 GB H100: 74.5 GiB
HEADROOM_BYTES = 6 * GIB  # CUDA context, NCCL, allocator fragmentation


def _param_bytes_per_rank(cfg: Config) -> dict[str, float]:
    """fp32 bytes of this TP rank's parameters, total and per CMS period."""
    from .params import parameter_counts

    counts = parameter_counts(cfg.model)
    tp = cfg.parallel.tp
    # Norm weights are replicated over TP; everything else large is split. Norms are tiny, so
    # counting them split changes nothing at the resolution of this estimate.
    total = counts["total_params"] / tp
    slow = sum(n for name, n in counts.items() if name.startswith("cms.level") and "(P=1)" not in name) / tp
    return {"params": total, "slow_cms_params": slow}


def _titans_layer_bytes_per_token(cfg: Config) -> float:
    """Bytes the backward keeps per token of one Titans mixer (this TP rank's heads), excluding the
    boundary states."""
    m = cfg.model
    d, dr = m.d_model, m.n_heads * m.head_dim / cfg.parallel.tp
    bf16, fp32 = 2, 4
    return (
        d * fp32 + d * bf16  # the norm's fp32 input (residual) and its bf16 output, into in_proj
        + 6 * dr * fp32  # in_proj's output made fp32 (spec §4): q, k, v before the conv, eta, alpha, gate
        + 3 * dr * fp32  # conv output before SiLU
        + 3 * dr * fp32  # q, k, v after SiLU: the fused op's inputs
        + 2 * dr * fp32  # the op's output o and its normalised form
        + dr * fp32  # SiLU(gate)
        + dr * bf16  # y, out_proj's input
    )


def _gdn_layer_bytes_per_token(cfg: Config) -> float:
    """Bytes the backward keeps per token of one Gated DeltaNet mixer (this TP rank's heads), with
    fla's chunk kernel, which saves its inputs and the [64 x 64] intra-chunk matrix per chunk and
    recomputes the chunk states in the backward."""
    from .model.gated_deltanet import FLA_CHUNK

    m = cfg.model
    d, h = m.d_model, m.n_heads / cfg.parallel.tp
    dr = h * m.head_dim
    bf16, fp32 = 2, 4
    return (
        d * fp32 + d * bf16  # the norm's fp32 input and its bf16 output, into the projections
        + (4 * dr + 2 * h) * fp32  # the projections' outputs made fp32: q, k, v, gate; beta, decay
        + 3 * dr * fp32 + 3 * dr * fp32  # conv output before SiLU, and after
        + 2 * dr * fp32 + 2 * h * fp32  # unit q, k; beta and g: the kernel's inputs
        + h * FLA_CHUNK * fp32  # the kernel's intra-chunk matrix
        + 2 * dr * fp32 + dr * fp32 + dr * bf16  # o and its normalised form; SiLU(gate); out_proj's input
    )


def _cms_layer_bytes_per_token(cfg: Config) -> float:
    d, tp = cfg.model.d_model, cfg.parallel.tp
    per_level = [d * 4 + d * 2 + (2 * lvl.hidden / tp) * 2 + 2 * (lvl.hidden / tp) * 2 for lvl in cfg.model.cms_levels]
    return sum(per_level)  # norm in/out; gate_up output (bf16); SiLU(gate) and the product (bf16)


def _attention_layer_bytes_per_token(cfg: Config) -> float:
    m = cfg.model
    d, dr = m.d_model, m.n_heads * m.head_dim / cfg.parallel.tp
    return d * 4 + d * 2 + 3 * dr * 2 + dr * 2 + dr * 4  # norm; q, k, v; output; softmax stats (flash)


def memory_state_numel(cfg: Config) -> int:
    """Elements of the six memories' state of one head (fp32 on every path)."""
    m = cfg.model
    D = m.head_dim
    if getattr(m, "memory", "linear") == "mlp":
        return 6 * 2 * D * m.memory_expansion * D
    return 6 * D * D


def boundary_state_bytes_per_sequence(cfg: Config, doc_len: int | None = None) -> float:
    """fp32 bytes of one layer's chunk-boundary states for one row of train.seq_len tokens made of
    documents of `doc_len` tokens (None: one document)."""
    m, T = cfg.model, cfg.train.seq_len
    L = min(doc_len or T, T)
    docs = T / L
    slots = docs * (math.ceil(L / m.chunk_size) + 1)
    return slots * (m.n_heads / cfg.parallel.tp) * memory_state_numel(cfg) * 4


def estimate(cfg: Config, gpus: int, doc_len: int | None = None) -> dict[str, float]:
    """Bytes per GPU by component for a run on `gpus` GPUs, and the total."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    dp = max(1, gpus // p.tp)
    sizes = _param_bytes_per_rank(cfg)
    n = sizes["params"]
    out: dict[str, float] = {"weights": 4 * n}
    if p.zero_stage >= 2:
        out["gradients"] = 4 * n / dp + 2 * 4 * min(GRADIENT_BUCKET_ELEMENTS, n)
    else:
        out["gradients"] = 4 * n
    shard = dp if p.zero_stage >= 1 else 1
    master = 4 * n / shard if p.zero_stage >= 1 else 0.0
    out["optimizer"] = master + 8 * n / shard + 4 * sizes["slow_cms_params"] / shard

    tokens = t.micro_batch * t.seq_len / (p.tp if p.sequence_parallel else 1)
    mixer = {"titans": _titans_layer_bytes_per_token, "gdn": _gdn_layer_bytes_per_token}.get(
        m.mixer, _attention_layer_bytes_per_token)(cfg)
    layer = (mixer + _cms_layer_bytes_per_token(cfg)) * t.micro_batch * t.seq_len
    states = boundary_state_bytes_per_sequence(cfg, doc_len) * t.micro_batch if m.mixer == "titans" else 0.0
    head = t.micro_batch * t.seq_len * (m.vocab_size / p.tp) * (2 + 4 + 4)  # bf16 logits, fp32 copy, softmax
    if p.activation_checkpointing:
        out["activations"] = m.n_layers * tokens * m.d_model * 4 + layer
        if states:
            out["titans_boundary_states"] = states
    else:
        out["activations"] = m.n_layers * layer
        if states:
            out["titans_boundary_states"] = m.n_layers * states
    out["lm_head_logits"] = head
    out["total"] = sum(out.values())
    return out


def describe_estimate(cfg: Config, gpus: int, doc_len: int | None = None) -> list[str]:
    est = estimate(cfg, gpus, doc_len)
    p, t = cfg.parallel, cfg.train
    docs = f"documents of {doc_len} tokens" if doc_len else f"one document per {t.seq_len}-token row"
    lines = [f"# memory per GPU (estimate) on {gpus} GPUs: tp={p.tp}, dp={max(1, gpus // p.tp)}, ZeRO-{p.zero_stage}, "
             f"micro_batch={t.micro_batch}, activation_checkpointing={str(p.activation_checkpointing).lower()}, {docs}"]
    for name, value in est.items():
        lines.append(f"memory.{name}: {value / GIB:.2f} GiB")
    budget = H100_BYTES - HEADROOM_BYTES
    verdict = "fits" if est["total"] <= budget else "does NOT fit"
    lines.append(f"memory.fits_80gb: {str(est['total'] <= budget).lower()} ({verdict} an 80 GB H100 with "
                 f"{HEADROOM_BYTES / GIB:.0f} GiB kept for the CUDA context, NCCL and fragmentation)")
    return lines
