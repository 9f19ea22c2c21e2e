"""Between the canonical (TP=1) layout of the weights and one TP rank's slices.

The canonical layout is what `TorchLayers` builds: full widths, unpadded vocabulary. It is the
layout of checkpoint conversion, HF export and the parity tests. A parameter split by TP says how
through `tp_dim` (the split dimension) and `tp_sections` (equal sections along it, each split over
the ranks separately); a padded vocabulary says its true size through `tp_full_size`.
Parameters without `tp_dim` are replicated and pass through unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def _split_spec(param: torch.Tensor) -> tuple[int, int, int | None] | None:
    if not hasattr(param, "tp_dim"):
        return None
    return param.tp_dim, getattr(param, "tp_sections", 1), getattr(param, "tp_full_size", None)


def shard_tensor(
    full: torch.Tensor, dim: int, sections: int, tp_rank: int, tp_size: int, local_size: int
) -> torch.Tensor:
    """Rank `tp_rank`'s slice of `full` along `dim`: its part of every section, zero-padded at the
    end when the local size times tp_size exceeds the full size (a padded vocabulary)."""
    padded = local_size * tp_size
    if padded != full.shape[dim]:
        if sections != 1 or padded < full.shape[dim]:
            raise ValueError(
                f"cannot shard size {full.shape[dim]} into {tp_size} x {local_size} ({sections} sections)"
            )
        pad_shape = list(full.shape)
        pad_shape[dim] = padded - full.shape[dim]
        full = torch.cat([full, full.new_zeros(pad_shape)], dim)
    parts = [s.chunk(tp_size, dim)[tp_rank] for s in full.chunk(sections, dim)]
    return torch.cat(parts, dim).contiguous()


def unshard_tensor(
    locals_: list[torch.Tensor], dim: int, sections: int, full_size: int | None = None
) -> torch.Tensor:
    """Inverse of shard_tensor: the per-rank slices (in rank order) -> the full tensor."""
    per_rank = [t.chunk(sections, dim) for t in locals_]
    full = torch.cat([torch.cat([r[s] for r in per_rank], dim) for s in range(sections)], dim)
    if full_size is not None:
        full = full.narrow(dim, 0, full_size)
    return full.contiguous()


def shard_state_dict(
    full_sd: dict[str, torch.Tensor], model: nn.Module, tp_rank: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """This rank's state dict for `model` (built with tp_size ranks) from a canonical one."""
    params = dict(model.named_parameters())
    local_sd = model.state_dict()
    out = {}
    for name, local in local_sd.items():
        if name not in full_sd:
            if isinstance(local, torch.Tensor):
                raise KeyError(f"{name}: missing from the canonical state dict")
            out[name] = local  # non-tensor extra state
            continue
        full = full_sd[name]
        spec = _split_spec(params[name]) if name in params else None
        if spec is None:
            if full.shape != local.shape:
                raise ValueError(f"{name}: replicated, but canonical {tuple(full.shape)} != local {tuple(local.shape)}")
            out[name] = full.clone()
        else:
            dim, sections, _ = spec
            out[name] = shard_tensor(full, dim, sections, tp_rank, tp_size, local.shape[dim]).to(local.dtype)
            if out[name].shape != local.shape:
                raise ValueError(f"{name}: shard {tuple(out[name].shape)} != local {tuple(local.shape)}")
    return out


def _tp_group_or_default(group):
    """None means megatron's TP group when the groups exist, else a single process."""
    if group is not None:
        return group
    from megatron.core import parallel_state

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


def gather_tensors(
    model: nn.Module, local: dict[str, torch.Tensor], tp_group=None, dst: int | None = None
) -> dict[str, torch.Tensor] | None:
    """Canonical tensors from each rank's local ones (keyed by parameter name), e.g. weights or
    gradients. tp_group None: megatron's TP group. dst None: every rank of the group gets the
    result; else only the group's rank dst does (the others get None)."""
    params = dict(model.named_parameters())
    tp_group = _tp_group_or_default(tp_group)
    size = dist.get_world_size(tp_group) if tp_group is not None else 1
    rank = dist.get_rank(tp_group) if tp_group is not None else 0
    out = {}
    for name, t in local.items():
        if not isinstance(t, torch.Tensor):
            continue  # megatron's empty `_extra_state` entries have no canonical counterpart
        spec = _split_spec(params[name]) if name in params else None
        if spec is None:
            out[name] = t.detach().clone()
            continue
        dim, sections, full_size = spec
        t = t.detach().contiguous()
        if size == 1:
            parts = [t]
        elif dst is None:
            parts = [torch.empty_like(t) for _ in range(size)]
            dist.all_gather(parts, t, group=tp_group)
        else:
            parts = [torch.empty_like(t) for _ in range(size)] if rank == dst else None
            dist.gather(t, parts, group=tp_group, group_dst=dst)
            if rank != dst:
                continue
        out[name] = unshard_tensor(parts, dim, sections, full_size)
    return out if dst is None or rank == dst else None


def gather_state_dict(
    model: nn.Module, tp_group=None, dst: int | None = None
) -> dict[str, torch.Tensor] | None:
    """The canonical (TP=1) state dict, on every rank of the TP group (dst None) or on its rank dst."""
    return gather_tensors(model, model.state_dict(), tp_group, dst)


def gather_grads(model: nn.Module, tp_group=None) -> dict[str, torch.Tensor]:
    """The canonical gradients (parameters without a gradient are left out), on every rank."""
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return gather_tensors(model, grads, tp_group)
