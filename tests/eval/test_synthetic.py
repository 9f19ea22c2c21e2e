"""Synthetic task generators and the scorer: deterministic, well-formed, solvable from the inputs
alone (an oracle reading only input_ids scores 100%), and at chance for a random guesser."""

from __future__ import annotations

import math

import pytest
import torch

from hope_mega.eval.scoring import score
from hope_mega.eval.synthetic import (
    IGNORE,
    NEEDLE_PHRASE,
    OPERATORS,
    PHRASE_LEN,
    make_modarith,
    make_mqar,
    make_parity,
    make_passkey,
)

VOCAB, FIRST = 64, 4
MAKERS = {
    "mqar": lambda n, seed: make_mqar(n, 64, VOCAB, num_pairs=8, seed=seed, first_id=FIRST),
    "passkey": lambda n, seed: make_passkey(n, 96, VOCAB, seed=seed, digits=4, first_id=FIRST),
    "parity": lambda n, seed: make_parity(n, 20, VOCAB, seed=seed, first_id=FIRST),
    "modarith": lambda n, seed: make_modarith(n, 13, VOCAB, seed=seed, modulus=5, first_id=FIRST),
}
ANSWERS_PER_EXAMPLE = {"mqar": 8, "passkey": 4, "parity": 1, "modarith": 1}


# ----------------------------------------------------------------------------- oracles: inputs only


def one_hot(pred: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, VOCAB).float()


def mqar_oracle(ids):
    """After a key seen earlier in the row, the value that followed it there."""
    pred = torch.zeros_like(ids)
    for b, row in enumerate(ids.tolist()):
        memory = {}
        for t in range(len(row) - 1):
            if row[t] in memory:
                pred[b, t] = memory[row[t]]
            elif row[t] != FIRST:
                memory.setdefault(row[t], row[t + 1])
    return one_hot(pred)


def passkey_oracle(ids):
    """Copy the digits after the needle phrase, in order, after the question phrase."""
    phrase = list(range(FIRST + NEEDLE_PHRASE, FIRST + NEEDLE_PHRASE + PHRASE_LEN))
    pred = torch.zeros_like(ids)
    for b, row in enumerate(ids.tolist()):
        at = next(t for t in range(len(row)) if row[t : t + PHRASE_LEN] == phrase) + PHRASE_LEN
        digits = row[at : at + 4]
        pred[b, len(row) - 5 : len(row) - 1] = torch.tensor(digits)
    return one_hot(pred)


def parity_oracle(ids):
    pred = torch.zeros_like(ids)
    pred[:, -2] = FIRST + (ids[:, :-2] - FIRST).sum(1) % 2
    return one_hot(pred)


def modarith_oracle(ids):
    """Python's own precedence rules on the decoded expression."""
    pred = torch.zeros_like(ids)
    for b, row in enumerate(ids.tolist()):
        expr = "".join(str(x - FIRST) if i % 2 == 0 else OPERATORS[x - FIRST - 5] for i, x in enumerate(row[:-2]))
        pred[b, -2] = FIRST + eval(expr) % 5
    return one_hot(pred)


ORACLES = {"mqar": mqar_oracle, "passkey": passkey_oracle, "parity": parity_oracle, "modarith": modarith_oracle}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("task", list(MAKERS))
def test_generators_are_deterministic_and_well_formed(task):
    a, b, c = MAKERS[task](32, 7), MAKERS[task](32, 7), MAKERS[task](32, 8)
    for field in ("input_ids", "labels", "loss_mask", "candidates"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.input_ids, c.input_ids)
    ids = a.input_ids
    assert ids.dtype == torch.int64 and ids.min() >= FIRST and ids.max() < VOCAB
    assert torch.equal(a.labels[:, :-1], ids[:, 1:]) and (a.labels[:, -1] == IGNORE).all()
    assert (a.loss_mask.sum(1) == ANSWERS_PER_EXAMPLE[task]).all()
    assert not a.loss_mask[:, -1].any()
    assert torch.isin(a.labels[a.loss_mask], a.candidates).all()


def test_answers_vary_and_modarith_uses_precedence():
    parity = make_parity(400, 12, VOCAB, seed=0, first_id=FIRST)
    ones = (parity.labels[parity.loss_mask] == FIRST + 1).float().mean().item()
    assert 0.4 < ones < 0.6
    values = make_modarith(500, 13, VOCAB, seed=0, first_id=FIRST).labels[:, -2] - FIRST
    assert torch.bincount(values, minlength=5).min() > 50  # every residue occurs
    from hope_mega.eval.synthetic import evaluate_modular

    assert evaluate_modular([1, 2, 3], "+*", 5) == 2 and evaluate_modular([1, 1, 1], "--", 5) == 4
    assert evaluate_modular([0, 1, 4, 3, 2], "*+*-", 5) == 0


def test_passkey_depth_places_the_needle():
    phrase = FIRST + NEEDLE_PHRASE
    for depth, expected in ((0.0, 0), (1.0, 96 - 2 * (PHRASE_LEN + 4) - (96 - 14) % 8)):
        batch = make_passkey(4, 96, VOCAB, seed=1, digits=4, depth=depth, first_id=FIRST)
        where = (batch.input_ids == phrase).int().argmax(1)
        assert (where == expected).all(), (depth, where)


@pytest.mark.parametrize("task", list(MAKERS))
def test_oracle_scores_100_percent(task):
    batch = MAKERS[task](64, 3)
    res = score(ORACLES[task], batch, batch_size=16)
    assert res["accuracy"] == 1.0 and res["exact_match"] == 1.0
    assert res["answers"] == 64 * ANSWERS_PER_EXAMPLE[task] and res["examples"] == 64


@pytest.mark.parametrize("task", list(MAKERS))
def test_random_guesser_scores_chance(task):
    batch = MAKERS[task](1024, 5)
    gen = torch.Generator().manual_seed(0)
    res = score(lambda ids: torch.randn(*ids.shape, VOCAB, generator=gen), batch, batch_size=256)
    chance, n = res["chance"], res["answers"]
    assert chance == 1 / len(batch.candidates)
    assert abs(res["accuracy"] - chance) <= 4 * math.sqrt(chance * (1 - chance) / n), (res["accuracy"], chance)
    # An oracle that is wrong on every answer scores 0: the scorer reads the mask, not the inputs.
    wrong = score(lambda ids: -ORACLES[task](ids), batch, batch_size=256)
    assert wrong["accuracy"] == 0.0


def test_mqar_answers_cannot_be_had_by_elimination():
    # 8 queries over 8 pairs: drawn independently, almost every example asks some key twice (the
    # chance that one does not is 8!/8^8 = 0.24%), so the values not yet asked for do not give
    # the last answer away.
    batch = make_mqar(500, 64, VOCAB, num_pairs=8, seed=3, first_id=FIRST)
    repeats = 0
    for row, mask in zip(batch.input_ids.tolist(), batch.loss_mask.tolist()):
        asked = [row[t] for t in range(len(row)) if mask[t]]  # the mask sits on the queried key
        repeats += len(set(asked)) < len(asked)
    assert repeats >= 490
    # The accuracy of each query in order: a model wrong on every first query and right after.
    oracle = mqar_oracle(batch.input_ids)

    def first_wrong(ids):
        logits = oracle.clone()
        first = batch.loss_mask.float().argmax(1)  # each row's first answer position
        logits[torch.arange(len(ids)), first] *= -1
        return logits

    res = score(first_wrong, batch, batch_size=500)
    assert res["accuracy_by_answer"] == [0.0] + [1.0] * 7


def test_mqar_accuracy_by_segment_splits_by_the_query_position():
    # Wrong on every query predicted at position 32 or later: right in the first two 16-token
    # segments, wrong in the last two; with 8 pairs in positions 0-15 the first segment asks none.
    batch = make_mqar(200, 64, VOCAB, num_pairs=8, seed=5, first_id=FIRST)
    late = torch.arange(64) >= 32

    def wrong_late(ids):
        logits = mqar_oracle(ids).clone()
        logits[:, late] *= -1
        return logits

    res = score(wrong_late, batch, batch_size=200, segment=16)
    assert res["accuracy_by_segment"] == [None, 1.0, 0.0, 0.0]
    asked_late = batch.loss_mask[:, late].sum().item()
    assert res["accuracy"] == pytest.approx(1 - asked_late / batch.loss_mask.sum().item())
    # one segment longer than the sequence is the overall accuracy
    assert score(wrong_late, batch, batch_size=200, segment=100)["accuracy_by_segment"] == [res["accuracy"]]
    assert "accuracy_by_segment" not in score(wrong_late, batch, batch_size=200)
    with pytest.raises(ValueError, match="segment must be at least 1, got 0"):
        score(wrong_late, batch, segment=0)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="mqar: seq_len 20 holds 8 pairs and at most 2 queries, asked for 8"):
        make_mqar(1, 20, VOCAB, num_pairs=8, seed=0)
    with pytest.raises(ValueError, match="modarith: seq_len 12 must be odd"):
        make_modarith(1, 12, VOCAB, seed=0)
    with pytest.raises(ValueError, match="passkey: needs 24 token ids from first_id=4, vocab 20 has 16"):
        make_passkey(1, 64, 20, seed=0)
