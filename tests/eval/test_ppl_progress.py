"""`hope-mega eval`'s perplexity reports its progress in tokens scored, and it changes no number."""

import math

import torch

from hope_mega.eval.perplexity import perplexity

VOCAB = 11


def uniform(ids: torch.Tensor) -> torch.Tensor:
    return torch.zeros(ids.shape[0], ids.shape[1], VOCAB)


def test_perplexity_prints_tokens_scored_and_ends_at_100_percent(capsys):
    docs = ["a" * 50, "b" * 7]
    encode = lambda text: [3] * len(text)  # noqa: E731
    result = perplexity(uniform, encode, docs, prefix_id=0, max_length=16)
    assert result["tokens"] == 57
    assert math.isclose(result["perplexity"], VOCAB, rel_tol=1e-6)  # uniform logits: ppl = vocab size
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1].startswith("[ppl] 57/57 tokens (100%), ")
    quiet = perplexity(uniform, encode, docs, prefix_id=0, max_length=16, progress=False)
    assert quiet == result and capsys.readouterr().err == ""
