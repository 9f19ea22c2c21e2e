"""Document boundaries of packed rows: where every memory, conv window and RoPE position restarts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Documents:
    """Layout of the documents in a [B, T] batch of token ids.

    `cu_seqlens` [N+1] indexes the flattened B*T tokens (fla's varlen convention, row starts
    included); `position` [B, T] is each token's offset inside its document; `doc_id` [B, T]
    numbers the documents across the batch.
    """

    cu_seqlens: torch.Tensor | None
    position: torch.Tensor
    doc_id: torch.Tensor

    @staticmethod
    def from_tokens(input_ids: torch.Tensor, eos_id: int | None) -> "Documents":
        """A document starts at every row start and right after every EOS (eos_id None: rows)."""
        B, T = input_ids.shape
        device = input_ids.device
        start = torch.zeros(B, T, dtype=torch.bool, device=device)
        start[:, 0] = True
        if eos_id is not None:
            start[:, 1:] = input_ids[:, :-1] == eos_id
        doc_id = start.flatten().long().cumsum(0).view(B, T) - 1
        idx = torch.arange(T, device=device).expand(B, T)
        # position = index - index of the document's first token (a running max of start indices)
        first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
        position = idx - first
        if eos_id is None:
            return Documents(None, position, doc_id)
        starts = start.flatten().nonzero().squeeze(1)
        cu = torch.cat([starts, torch.tensor([B * T], device=device)])
        return Documents(cu, position, doc_id)
