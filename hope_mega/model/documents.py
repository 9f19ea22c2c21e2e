"""Document boundaries of packed rows: where every memory, conv window and RoPE position restarts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ops.common import host_to_device


@dataclass
class Documents:
    """Layout of the documents in a [B, T] batch of token ids.

    `cu_seqlens` [N+1] indexes the flattened B*T tokens (fla's varlen convention, row starts
    included); `position` [B, T] is each token's offset inside its document; `doc_id` [B, T]
    numbers the documents across the batch. `cu_seqlens_host` holds the same offsets as Python
    ints and `max_len` the longest document: the Titans chunk grid and varlen attention are laid
    out on the host, and reading them from a GPU tensor would stall every layer on a device sync.
    """

    cu_seqlens: torch.Tensor | None
    position: torch.Tensor
    doc_id: torch.Tensor
    cu_seqlens_host: tuple[int, ...] | None = None
    max_len: int = 0
    _crossings: dict = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def from_tokens(input_ids: torch.Tensor, eos_id: int | None) -> "Documents":
        """A document starts at every row start and right after every EOS (eos_id None: rows).

        Computed where `input_ids` lives; the trainer passes the batch while it is still on the
        host and moves the result with `to`, so the training step never waits for the device.
        """
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
            return Documents(None, position, doc_id, None, T)
        starts = start.flatten().nonzero().squeeze(1)
        cu = torch.cat([starts, torch.tensor([B * T], device=device)])
        host = tuple(int(c) for c in cu.tolist())
        return Documents(cu, position, doc_id, host, max(b - a for a, b in zip(host, host[1:])))

    def to(self, device: torch.device | str) -> "Documents":
        """On `device`, copied asynchronously from pinned memory when that is a GPU."""
        move = lambda t: None if t is None else host_to_device(t, device)  # noqa: E731
        return Documents(move(self.cu_seqlens), move(self.position), move(self.doc_id),
                         self.cu_seqlens_host, self.max_len)

    def conv_crossings(self, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The taps of a causal conv of `window` taps that cross a document start inside a row,
        as flat token indices (output, input) and the weight column of the tap; None if there are
        none. Laid out on the host from the offsets, once per batch and window, and moved once."""
        if self.cu_seqlens_host is None:
            return None
        if window not in self._crossings:
            T = self.position.shape[1]
            out, src, tap = [], [], []
            cu = self.cu_seqlens_host
            for start, end in zip(cu, cu[1:]):
                row_start = start - start % T
                for t in range(start, min(end, start + window - 1)):
                    for j in range(t - start + 1, min(window, t - row_start + 1)):
                        out.append(t)
                        src.append(t - j)
                        tap.append(window - 1 - j)
            device = self.position.device
            self._crossings[window] = (
                tuple(host_to_device(torch.tensor(v, dtype=torch.long), device) for v in (out, src, tap)) if out else None
            )
        return self._crossings[window]
