"""Synthetic tasks over token ids: seeded generators for evaluation and for training data.

Every generator returns a `SyntheticBatch` of complete sequences: `input_ids` [n, T],
`labels` [n, T] with `labels[:, t]` the token that follows position t (IGNORE after the last one),
and `loss_mask` [n, T] marking the positions whose label is an answer of the task. Training on
`labels` where `loss_mask` holds is training on the answers only; `candidates` lists the ids an
answer can take, which the scorer restricts its argmax to (so chance is 1 / len(candidates)).

No tokenizer is involved: each task reserves consecutive id ranges starting at `first_id`, which
should lie above every special id of the model (an EOS inside a sequence would reset its memories).

- MQAR (multi-query associative recall, Arora et al. 2023, "Zoology"): key-value pairs, then the
  rest of the sequence is filler with some of the keys placed again, each followed by its value.
- Passkey (single needle, as RULER's S-NIAH-1): a repeated filler sentence, a needle phrase with a
  number hidden at some depth, and at the end a question phrase followed by the number.
- Parity and modular arithmetic (Deletang et al. 2023, "Neural Networks and the Chomsky
  Hierarchy"): a bit string, then the parity of its ones; an expression over {0..m-1} with + - *
  (usual precedence), then its value mod m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass
class SyntheticBatch:
    input_ids: torch.Tensor  # [n, T] int64
    labels: torch.Tensor  # [n, T] int64, IGNORE after the last position
    loss_mask: torch.Tensor  # [n, T] bool: positions whose label is an answer
    candidates: torch.Tensor  # [k] int64: the ids an answer can take

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _batch(ids: np.ndarray, answer_at: np.ndarray, candidates: np.ndarray) -> SyntheticBatch:
    """answer_at[i, t] marks the positions t whose *token* is an answer; the loss mask sits on the
    position before, which predicts it."""
    ids_t = torch.as_tensor(ids, dtype=torch.int64)
    labels = torch.full_like(ids_t, IGNORE)
    labels[:, :-1] = ids_t[:, 1:]
    mask = torch.zeros_like(ids_t, dtype=torch.bool)
    mask[:, :-1] = torch.as_tensor(answer_at[:, 1:])
    return SyntheticBatch(ids_t, labels, mask, torch.as_tensor(candidates, dtype=torch.int64))


def _need(vocab: int, first_id: int, needed: int, task: str) -> None:
    if vocab - first_id < needed:
        raise ValueError(f"{task}: needs {needed} token ids from first_id={first_id}, vocab {vocab} has {vocab - first_id}")


def make_mqar(
    n: int, seq_len: int, vocab: int, num_pairs: int, seed: int, num_queries: int | None = None, first_id: int = 4
) -> SyntheticBatch:
    """Ids: first_id is the filler, then the keys, then as many values. Each query asks for one
    of the pairs drawn independently (with replacement) and sits at a random even offset of the
    query region. Independent draws make every answer a recall: were each key asked exactly once,
    the last answer would follow by elimination from the values not yet asked for, and a model
    could score (1 + 1/2 + ... + 1/n)/n of n answers without recalling anything."""
    num_queries = num_pairs if num_queries is None else num_queries
    n_keys = (vocab - first_id - 1) // 2
    _need(vocab, first_id, 1 + 2 * num_pairs, "mqar")
    if num_pairs > n_keys:
        raise ValueError(f"mqar: {num_pairs} distinct keys do not fit in {n_keys} key ids")
    region = seq_len - 2 * num_pairs
    if region < 2 * num_queries:
        raise ValueError(
            f"mqar: seq_len {seq_len} holds {num_pairs} pairs and at most {max(region, 0) // 2} queries, "
            f"asked for {num_queries}"
        )
    rng = np.random.default_rng(seed)
    filler, key0, value0 = first_id, first_id + 1, first_id + 1 + n_keys
    ids = np.full((n, seq_len), filler, dtype=np.int64)
    answer_at = np.zeros((n, seq_len), dtype=bool)
    for i in range(n):
        keys = rng.choice(n_keys, num_pairs, replace=False) + key0
        values = rng.integers(0, n_keys, num_pairs) + value0
        ids[i, 0 : 2 * num_pairs : 2] = keys
        ids[i, 1 : 2 * num_pairs : 2] = values
        which = rng.integers(0, num_pairs, num_queries)
        slots = np.sort(rng.choice(region // 2, num_queries, replace=False))
        pos = 2 * num_pairs + 2 * slots
        ids[i, pos] = keys[which]
        ids[i, pos + 1] = values[which]
        answer_at[i, pos + 1] = True
    return _batch(ids, answer_at, np.arange(value0, value0 + n_keys))


# Passkey id layout, relative to first_id: ten digits, a needle phrase, a question phrase, filler words.
DIGITS, NEEDLE_PHRASE, QUESTION_PHRASE = 0, 10, 13
PHRASE_LEN, FILLER_WORDS, SENTENCE_LEN = 3, 16, 8


def make_passkey(
    n: int, seq_len: int, vocab: int, seed: int, digits: int = 5, depth: float | None = None, first_id: int = 4
) -> SyntheticBatch:
    """Filler is one sentence of SENTENCE_LEN filler ids (fixed by the seed) repeated; the needle
    (phrase + `digits` digit ids) sits at a sentence boundary at fractional `depth` of the filler
    (random per example when None); the sequence ends with the question phrase and the digits."""
    _need(vocab, first_id, FILLER_WORDS + SENTENCE_LEN, "passkey")
    fill = seq_len - 2 * (PHRASE_LEN + digits)
    if fill < SENTENCE_LEN:
        raise ValueError(f"passkey: seq_len {seq_len} leaves no room for filler around a {digits}-digit needle")
    rng = np.random.default_rng(seed)
    sentence = rng.integers(first_id + FILLER_WORDS, vocab, SENTENCE_LEN)
    haystack = np.resize(sentence, fill)
    needle_phrase = first_id + NEEDLE_PHRASE + np.arange(PHRASE_LEN)
    question = first_id + QUESTION_PHRASE + np.arange(PHRASE_LEN)
    ids = np.empty((n, seq_len), dtype=np.int64)
    answer_at = np.zeros((n, seq_len), dtype=bool)
    for i in range(n):
        d = rng.random() if depth is None else depth
        cut = int(round(d * (fill // SENTENCE_LEN))) * SENTENCE_LEN
        number = rng.integers(0, 10, digits) + first_id + DIGITS
        ids[i] = np.concatenate([haystack[:cut], needle_phrase, number, haystack[cut:], question, number])
        answer_at[i, seq_len - digits :] = True
    return _batch(ids, answer_at, np.arange(first_id + DIGITS, first_id + DIGITS + 10))


def make_parity(n: int, seq_len: int, vocab: int, seed: int, first_id: int = 4) -> SyntheticBatch:
    """seq_len - 2 bits (ids first_id, first_id+1), a query id (first_id+2), the parity as a bit id."""
    _need(vocab, first_id, 3, "parity")
    if seq_len < 3:
        raise ValueError(f"parity: seq_len {seq_len} < 3")
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, seq_len - 2))
    ids = np.concatenate(
        [bits + first_id, np.full((n, 1), first_id + 2), (bits.sum(1, keepdims=True) % 2) + first_id], axis=1
    )
    answer_at = np.zeros(ids.shape, dtype=bool)
    answer_at[:, -1] = True
    return _batch(ids, answer_at, np.array([first_id, first_id + 1]))


OPERATORS = "+-*"


def evaluate_modular(numbers: list[int], ops: str, modulus: int) -> int:
    """Value of n0 op0 n1 op1 ... mod modulus, * before + and -."""
    total, term = 0, numbers[0]
    for op, x in zip(ops, numbers[1:]):
        if op == "*":
            term *= x
        else:
            total += term
            term = x if op == "+" else -x
    return (total + term) % modulus


def make_modarith(n: int, seq_len: int, vocab: int, seed: int, modulus: int = 5, first_id: int = 4) -> SyntheticBatch:
    """An expression of seq_len - 2 symbols (odd: numbers at even offsets, ids first_id + value;
    operators + - * at first_id + modulus + 0..2), '=' (first_id + modulus + 3), the value."""
    _need(vocab, first_id, modulus + 4, "modarith")
    length = seq_len - 2
    if length < 1 or length % 2 == 0:
        raise ValueError(f"modarith: seq_len {seq_len} must be odd and >= 3 (an expression of odd length, '=', the value)")
    rng = np.random.default_rng(seed)
    numbers = rng.integers(0, modulus, (n, length // 2 + 1))
    ops = rng.integers(0, len(OPERATORS), (n, length // 2))
    ids = np.empty((n, seq_len), dtype=np.int64)
    ids[:, 0:length:2] = numbers + first_id
    ids[:, 1:length:2] = ops + first_id + modulus
    ids[:, length] = first_id + modulus + 3
    for i in range(n):
        value = evaluate_modular(numbers[i].tolist(), "".join(OPERATORS[o] for o in ops[i]), modulus)
        ids[i, length + 1] = first_id + value
    answer_at = np.zeros(ids.shape, dtype=bool)
    answer_at[:, -1] = True
    return _batch(ids, answer_at, np.arange(first_id, first_id + modulus))


GENERATORS = {"mqar": make_mqar, "passkey": make_passkey, "parity": make_parity, "modarith": make_modarith}
