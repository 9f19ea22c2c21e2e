"""Skipping an optimizer step whose loss was not finite, however the step is driven.

DeepSpeed's ZeRO 1/2 calls the base optimizer's `step()` once per parameter group (with
`param_groups` narrowed to that group), so a one-shot "skip the next call" flag protects only the
first group: the others move their parameters, moments, CMS accumulators and period counters.
The trainer instead holds the skip for the whole engine step.
"""

from __future__ import annotations

import contextlib


class SkippableSteps:
    """Mixin for a torch optimizer: `step()` changes nothing (no parameter, moment, accumulator or
    counter) while `skipping_steps(True)` is active. The optimizer's `step` checks `self.skipping`."""

    skipping = False

    @contextlib.contextmanager
    def skipping_steps(self, skip: bool = True):
        previous, self.skipping = self.skipping, bool(skip)
        try:
            yield
        finally:
            self.skipping = previous
