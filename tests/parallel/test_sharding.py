"""The canonical <-> per-rank layout, on tensors whose values name their position."""

import pytest
import torch

from hope_mega.parallel.layers import padded_vocab_size
from hope_mega.parallel.megatron_cpu import apply_megatron_cpu_adaptation
from hope_mega.parallel.sharding import shard_tensor, unshard_tensor


def test_sections_are_split_separately():
    full = torch.arange(12)  # 3 sections of 4 (e.g. q, k, v over 2 heads of width 2)
    assert shard_tensor(full, 0, 3, 0, 2, 6).tolist() == [0, 1, 4, 5, 8, 9]
    assert shard_tensor(full, 0, 3, 1, 2, 6).tolist() == [2, 3, 6, 7, 10, 11]
    parts = [shard_tensor(full, 0, 3, r, 2, 6) for r in range(2)]
    assert torch.equal(unshard_tensor(parts, 0, 3), full)


def test_split_along_other_dim():
    full = torch.arange(24).view(2, 12)
    parts = [shard_tensor(full, 1, 1, r, 3, 4) for r in range(3)]
    assert parts[2].tolist() == [[8, 9, 10, 11], [20, 21, 22, 23]]
    assert torch.equal(unshard_tensor(parts, 1, 1), full)


def test_padded_vocabulary():
    assert padded_vocab_size(61, 2) == 62
    assert padded_vocab_size(64, 2) == 64
    assert padded_vocab_size(50000, 4, multiple=128) == 50176
    full = torch.arange(5 * 2).view(5, 2)
    parts = [shard_tensor(full, 0, 1, r, 2, 3) for r in range(2)]
    assert parts[1].tolist() == [[6, 7], [8, 9], [0, 0]]
    assert torch.equal(unshard_tensor(parts, 0, 1, full_size=5), full)
    with pytest.raises(ValueError):
        shard_tensor(full, 0, 1, 0, 2, 2)  # 2 x 2 < 5 rows


def test_cpu_adaptation_is_a_noop_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sentinel = object()
    monkeypatch.setattr(torch.cuda, "current_device", sentinel)
    assert apply_megatron_cpu_adaptation() is False
    assert torch.cuda.current_device is sentinel
