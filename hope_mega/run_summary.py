"""The lines a trainer prints before its first step: what model, on what layout, how many tokens a
step, which data, from where, and roughly how much memory the model states take per rank, so a
wrong launch shows itself in the first second, not in the first checkpoint."""

from __future__ import annotations

from .config import Config


def model_state_bytes(total_params: int, tp: int, dp: int, zero_stage: int, bf16: bool) -> float:
    """Bytes per rank of weights, gradients, fp32 master weights and Adam moments (no activations).

    bf16: 2 (weights) + 2 (grads) + 12 (fp32 master, m, v) bytes a parameter; fp32: 4 + 4 + 8.
    ZeRO-1 splits the optimizer part over dp, ZeRO-2 the gradients too; TP splits everything."""
    p = total_params / tp
    weights, grads, optim = (2 * p, 2 * p, 12 * p) if bf16 else (4 * p, 4 * p, 8 * p)
    if zero_stage >= 1:
        optim /= dp
    if zero_stage >= 2:
        grads /= dp
    return weights + grads + optim


def describe_run(cfg: Config, world: int, card: dict, start_step: int, start_tokens: int, bf16: bool,
                 resumed_from: str | None = None) -> str:
    from .params import parameter_counts

    m, t, p = cfg.model, cfg.train, cfg.parallel
    dp = world // p.tp
    total = parameter_counts(m)["total_params"]
    accumulation = t.global_batch // (t.micro_batch * dp)
    per_step = t.global_batch * t.seq_len
    splits = card.get("splits", {})
    train_rows = splits.get("train", {}).get("rows", 0)
    epochs = (t.steps - start_step) * t.global_batch / train_rows if train_rows else float("nan")
    lines = [
        f"model: {m.name} ({m.mixer}), {total:,} parameters, {m.n_layers} layers x d_model {m.d_model}, "
        f"{m.n_heads} heads, vocab {m.vocab_size}",
        f"layout: {world} process(es) = tp {p.tp} x dp {dp}, ZeRO-{p.zero_stage}, "
        f"{'bf16' if bf16 else 'fp32'}; micro_batch {t.micro_batch} x {dp} rank(s) x {accumulation} "
        f"accumulation = global_batch {t.global_batch}",
        f"tokens: {per_step:,} a step ({t.global_batch} x seq_len {t.seq_len}), "
        f"{per_step * t.steps:,} over {t.steps} steps",
        f"data: {', '.join(map(str, cfg.data.paths))}: {train_rows:,} train rows "
        f"(the remaining {t.steps - start_step} steps read {epochs:.2f} epochs), "
        f"{splits.get('val', {}).get('rows', 0):,} val rows",
        f"start: step {start_step} ({start_tokens:,} tokens), resumed from {resumed_from}" if resumed_from
        else f"start: step {start_step}, fresh" + (f" from {t.init_from}" if t.init_from else ""),
        f"memory: model states ~{model_state_bytes(total, p.tp, dp, p.zero_stage, bf16) / 2**30:.2f} GiB a rank "
        f"(weights, grads, Adam moments{', fp32 master' if bf16 else ''}), plus activations",
    ]
    return "\n".join(lines)
