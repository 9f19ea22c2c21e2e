"""`hope-mega params`: parameter count per component, and model FLOPs per token.

The FLOPs are counted for Hope's own layers, the figure MFU is computed from: the static
projections, the short conv, the self-modifying recurrence of all six memories as the chunk-wise
form computes it, the CMS levels and the LM head. A transformer's 6N + attention formula
misses the recurrence, which at d_h = 128 and C = 64 is about a third of a Hope layer's matmuls.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch

from .config import Config, ConfigError, ModelConfig, load_config
from .ops.common import MEMORIES


def parameter_counts(cfg: ModelConfig) -> "OrderedDict[str, int]":
    """Parameters per component of the full (TP = 1) model, counted on the meta device."""
    from .model.lm import HopeLM

    with torch.device("meta"):
        model = HopeLM(cfg)
    counts: OrderedDict[str, int] = OrderedDict()

    def add(name: str, module_or_params) -> None:
        params = module_or_params.parameters() if hasattr(module_or_params, "parameters") else module_or_params
        counts[name] = counts.get(name, 0) + sum(p.numel() for p in params)

    add("embedding", model.embed)
    for block in model.blocks:
        mixer = block.mixer
        projections = [p for n, p in mixer.named_parameters() if n.endswith("proj.weight")]
        add(f"{cfg.mixer}.projections", projections)
        add(f"{cfg.mixer}.memory_and_gates", [p for p in mixer.parameters() if all(p is not q for q in projections)])
        add("norms", block.mixer_norm)
        for i, level in enumerate(block.cms.levels):
            add(f"cms.level{i}(P={level.period})", level)
    add("norms", model.final_norm)
    if model.head is not None:
        add("lm_head", model.head)
    counts["total_params"] = sum(counts.values())
    return counts


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward + backward FLOPs per token (backward = 2 x forward), per component."""
    d, H, D, C = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.chunk_size
    M = len(MEMORIES)
    per_layer: dict[str, float] = {}
    if cfg.mixer == "titans":
        per_layer["titans.projections"] = 2 * d * 6 * H * D + 2 * H * D * d
        per_layer["titans.conv"] = 2 * 3 * H * D * cfg.conv_size
        # Per head and token, as chunk.py computes it: reads M(u) of k, q, v (3 x 2D^2); the six
        # self-generated values (2MD^2); K S0^T and the state update (2 x 2MD^2); Q S_mem^T (2D^2);
        # the per-chunk w + S^T w of eta and alpha (4D^2 / C); within the chunk K K^T, Q K^T and the
        # intra-chunk output (3 x 2CD) and the triangular solve over 6D values (C M D).
        recurrence = (8 + 6 * M) * D * D + 4 * D * D / C + 6 * C * D + C * M * D
        if cfg.memory == "mlp":
            # MLP memories (titans_mlp/chunk.py), each read u + W_1 GELU(W_2 u) costing 4 D h: the
            # reads of k, v, q, eta, alpha (5) and the six v_hat and M(k) (12); δ = W_1ᵀ r and the
            # chunk-end W_1, W_2 sums (3 x 2 M D h); the output's W_2 q and W_1 GELU(Z) (4 D h);
            # and its [C x C] products Q Kᵀ, (·) δ, GELU(Z) aᵀ, (·) r (4 C D + 4 C h).
            h = cfg.memory_expansion * D
            recurrence = (17 * 4 + 6 * M + 4) * D * h + 4 * C * D + 4 * C * h
        per_layer["titans.recurrence"] = H * recurrence
    elif cfg.mixer == "gdn":
        from .model.gated_deltanet import FLA_CHUNK as Cf

        per_layer["gdn.projections"] = 2 * d * (4 * H * D + 2 * H) + 2 * H * D * d
        per_layer["gdn.conv"] = 2 * 3 * H * D * cfg.conv_size
        # Per head and token, as fla's chunk form computes it on its own 64-token chunks (not
        # model.chunk_size), counted as titans' above with one memory: within the chunk K K^T,
        # Q K^T and the intra-chunk output (3 x 2CD), the triangular solve for both WY factors,
        # of k and of v (2CD); across chunks W S^T, the state update and Q S^T (3 x 2D^2).
        per_layer["gdn.recurrence"] = H * (6 * D * D + 8 * Cf * D)
    else:
        per_layer["attention.projections"] = 2 * d * 3 * H * D + 2 * H * D * d
        # Causal: on average a token attends to seq_len / 2 positions, QK^T and PV at 2 FLOPs each.
        per_layer["attention.scores"] = 2 * 2 * H * D * seq_len / 2
    for i, level in enumerate(cfg.cms_levels):
        per_layer[f"cms.level{i}"] = 2 * d * 2 * level.hidden + 2 * level.hidden * d
    out = {name: 3 * cfg.n_layers * f for name, f in per_layer.items()}
    out["lm_head"] = 3 * 2 * d * cfg.vocab_size
    out["total_flops_per_token"] = sum(out.values())
    return out


def describe(cfg: Config, gpus: int = 8, doc_len: int | None = None) -> str:
    lines = [f"# {cfg.model.name}: mixer={cfg.model.mixer} d_model={cfg.model.d_model} "
             f"n_layers={cfg.model.n_layers} n_heads={cfg.model.n_heads} head_dim={cfg.model.head_dim}"]
    counts = parameter_counts(cfg.model)
    for name, n in counts.items():
        if name != "total_params":
            lines.append(f"{name}: {n:,}")
    flops = flops_per_token(cfg.model, cfg.train.seq_len)
    lines.append(f"# training FLOPs per token (fwd+bwd) at seq_len={cfg.train.seq_len}")
    for name, f in flops.items():
        lines.append(f"flops.{name}: {f:.4g}")
    from .memory_estimate import describe_estimate

    lines.extend(describe_estimate(cfg, gpus, doc_len))
    lines.append(f"total_params: {counts['total_params']}")
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser("params", help="parameter count per component and FLOPs per token")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the run, for the memory estimate (default 8)")
    p.add_argument("--doc-len", type=int, default=None,
                   help="document length for the memory estimate's boundary states (default: one per row)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.gpus < 1 or args.gpus % cfg.parallel.tp:
        raise ConfigError(f"--gpus: {args.gpus} is not a positive multiple of parallel.tp={cfg.parallel.tp}")
    if args.doc_len is not None and args.doc_len < 1:
        raise ConfigError(f"--doc-len: must be >= 1, got {args.doc_len}")
    print(describe(cfg, args.gpus, args.doc_len))
    return 0
