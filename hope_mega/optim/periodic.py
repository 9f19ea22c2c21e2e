"""What the CMS-aware optimizers share: parameter groups that update at their own periods, and
steps that can be skipped whole.

A group with `period` P > 1 adds each step's gradient to an accumulator (`grad_acc`) and is
updated once every P optimizer steps, with the sum; between updates its parameters and state stay
as they are. The accumulator is optimizer state, so ZeRO shards it with the moments and every
checkpoint carries it: a resume in the middle of a period continues with the partial sum intact.
`steps_seen` counts the optimizer steps a group has been through.

Skipping: DeepSpeed's ZeRO 1/2 calls the base optimizer's `step()` once per parameter group (with
`param_groups` narrowed to that group), so a one-shot "skip the next call" flag would protect only
the first group while the others moved their parameters, moments, accumulators and counters. The
trainer holds `skipping_steps(True)` around the whole engine step instead.

Written as a torch optimizer, not a wrapper, so that ZeRO (which flattens each group's parameters
into one partition per rank and calls the base optimizer's `step`) handles its subclasses like
any torch optimizer.
"""

from __future__ import annotations

import contextlib

import torch


class PeriodicOptimizer(torch.optim.Optimizer):
    """Subclasses fill a new parameter's state (`_init_state`) and update a parameter from the
    gradient its period delivers (`_update`). Groups need `period` and `steps_seen` (default 1, 0)."""

    skipping = False

    @contextlib.contextmanager
    def skipping_steps(self, skip: bool = True):
        """While active, `step()` changes nothing: no parameter, state, accumulator or counter."""
        previous, self.skipping = self.skipping, bool(skip)
        try:
            yield
        finally:
            self.skipping = previous

    @staticmethod
    def group_is_due(group) -> bool:
        """Whether the group updates at the step about to be taken."""
        return (group["steps_seen"] + 1) % group["period"] == 0

    @staticmethod
    def state_dtype(p: torch.Tensor) -> torch.dtype:
        """fp32 state for fp32 and bf16 parameters (fp64 for fp64 ones)."""
        return torch.promote_types(p.dtype, torch.float32)

    def _init_state(self, state: dict, p: torch.Tensor, group) -> None:
        raise NotImplementedError

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.skipping:
            return loss
        for group in self.param_groups:
            due = self.group_is_due(group)
            group["steps_seen"] += 1
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    self._init_state(state, p, group)
                    if group["period"] > 1:
                        state["grad_acc"] = torch.zeros_like(p, dtype=self.state_dtype(p))
                grad = p.grad.to(self.state_dtype(p))
                if group["period"] > 1:
                    state["grad_acc"].add_(grad)
                    if not due:
                        continue
                    grad = state["grad_acc"].clone()
                    state["grad_acc"].zero_()
                self._update(p, grad, state, group)
        return loss
