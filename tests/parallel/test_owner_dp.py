"""Who owns which tensor under M3's data parallelism."""

import pytest

from hope_mega.parallel.owner_dp import assign_owners


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_owners_are_balanced_by_size_and_cover_every_rank(ranks):
    sizes = [4096 * 128, 128, 128 * 768, 256 * 128, 128 * 256, 128, 128 * 768, 256 * 128, 128 * 256, 64, 128 * 4096]
    owners = assign_owners(sizes, ranks)
    load = [sum(s for s, o in zip(sizes, owners) if o == r) for r in range(ranks)]
    assert set(owners) == set(range(ranks))
    # Largest-first greedy: no rank is more than one tensor above another.
    assert max(load) - min(load) <= max(sizes)
    assert sum(load) == sum(sizes)
    assert owners == assign_owners(list(sizes), ranks)  # every rank computes the same answer


def test_two_ranks_split_two_big_tensors():
    # 1000 -> 0, 1000 -> 1, 10 -> 0, 10 -> 1, then the tie goes to rank 0.
    assert assign_owners([10, 1000, 1, 1000, 10], 2) == [0, 0, 0, 1, 1]
