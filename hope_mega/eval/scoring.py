"""Score a model on a SyntheticBatch: accuracy of its answer tokens.

The model is any callable `logits_fn(input_ids [B, T]) -> logits [B, T, V]`. Teacher forcing: each
answer position is judged by the argmax over the task's candidate ids at the position before it,
so a model that never learned the task's output alphabet is still scored against chance
(1 / number of candidates) rather than against the whole vocabulary.
"""

from __future__ import annotations

from typing import Callable

import torch

from .synthetic import SyntheticBatch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predictions(logits_fn: LogitsFn, batch: SyntheticBatch, batch_size: int = 16) -> torch.Tensor:
    """[n, T] predicted candidate ids at every position (only the loss-mask ones matter)."""
    out = []
    cand = batch.candidates
    for start in range(0, len(batch), batch_size):
        logits = logits_fn(batch.input_ids[start : start + batch_size])
        out.append(cand[logits[..., cand.to(logits.device)].argmax(-1).cpu()])
    return torch.cat(out)


def score(logits_fn: LogitsFn, batch: SyntheticBatch, batch_size: int = 16, segment: int | None = None) -> dict:
    """accuracy: fraction of answer tokens right; exact_match: fraction of examples with all right;
    accuracy_by_answer: the accuracy of each example's 1st, 2nd, ... answer (MQAR's queries in
    order, passkey's digits), where every example has the same number of answers;
    accuracy_by_segment (with `segment`): the accuracy of the answers predicted in positions
    [0, segment), [segment, 2 segment), ... (None where a segment predicts none). With `segment`
    the chunk size of a chunk-wise model it tells apart answers read within the chunk that wrote
    them from answers read from a state carried across chunk boundaries."""
    if segment is not None and segment < 1:
        raise ValueError(f"segment must be at least 1, got {segment}")
    pred = predictions(logits_fn, batch, batch_size)
    right = (pred == batch.labels) & batch.loss_mask
    per_example = right.sum(1) == batch.loss_mask.sum(1)
    counts = batch.loss_mask.sum(1)
    by_answer = None
    if len(batch) and bool((counts == counts[0]).all()):
        by_answer = right[batch.loss_mask].view(len(batch), -1).float().mean(0).tolist()
    result = {
        "accuracy": right.sum().item() / max(batch.loss_mask.sum().item(), 1),
        "exact_match": per_example.float().mean().item(),
        "chance": 1.0 / len(batch.candidates),
        "answers": int(batch.loss_mask.sum().item()),
        "examples": len(batch),
        "seq_len": batch.input_ids.shape[1],
        "accuracy_by_answer": by_answer,
    }
    if segment is not None:
        result["accuracy_by_segment"] = _by_segment(right, batch.loss_mask, segment)
    return result


def _by_segment(right: torch.Tensor, mask: torch.Tensor, segment: int) -> list[float | None]:
    n_segments = -(-mask.shape[1] // segment)
    which = torch.arange(mask.shape[1]) // segment
    out = []
    for i in range(n_segments):
        asked = int(mask[:, which == i].sum())
        out.append(int(right[:, which == i].sum()) / asked if asked else None)
    return out
