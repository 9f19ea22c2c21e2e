"""Parameters replicated over tensor-parallel ranks must stay bitwise equal.

Norm weights (and anything else not split by TP) live on every TP rank. Each TP rank reduces their
gradients over its own data-parallel group, and a reduction that rounds differently in one group
lets the copies drift apart: the checkpoint then holds two versions of one weight, and
`hope-mega convert` refuses it. The trainer checks before every save, so a drift stops the run at
the step it is found instead of surfacing at conversion.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class ReplicaDriftError(RuntimeError):
    """Replicated parameters differ between tensor-parallel ranks."""


def replicated_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not getattr(p, "tensor_model_parallel", False)]


def check_replicas_identical(model: nn.Module, tp_group, step: int) -> int:
    """Collective over the TP group. Returns the number of replicated tensors checked; raises
    ReplicaDriftError naming the first that differs between TP ranks."""
    tp = dist.get_world_size(tp_group)
    params = replicated_parameters(model)
    if tp == 1 or not params:
        return len(params)
    flat = torch.cat([p.detach().reshape(-1).float() for _, p in params])
    copies = [torch.empty_like(flat) for _ in range(tp)]
    dist.all_gather(copies, flat, group=tp_group)
    if all(torch.equal(copies[0], c) for c in copies[1:]):
        return len(params)
    offset = 0
    for name, p in params:
        n = p.numel()
        if any(not torch.equal(copies[0][offset : offset + n], c[offset : offset + n]) for c in copies[1:]):
            worst = max((copies[0][offset : offset + n] - c[offset : offset + n]).abs().max().item() for c in copies[1:])
            raise ReplicaDriftError(
                f"step {step}: {name} differs between tensor-parallel ranks (max |diff| {worst:.3e}); its "
                f"copies were updated from different gradients"
            )
        offset += n
    raise AssertionError("unreachable: the copies differ but no parameter does")
