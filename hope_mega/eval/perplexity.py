"""Held-out perplexity and bits per byte of documents.

Each document is scored in full: its first token is predicted from a prefix token (EOS for
hope-mega models, the token that precedes every document in training), and a document longer than
`max_length` is cut into windows exactly as lm-evaluation-harness's rolling log-likelihood does
(each window predicts up to `max_length` new tokens and is read with as much preceding text as fits
in `max_length` inputs), so its numbers and these agree when it is given the same prefix token and
max_length. Bits per byte = total NLL (nats) / ln 2 / UTF-8 bytes of the text: tokenizer-independent,
so models with other tokenizers compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterator

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def windows(n_tokens: int, max_length: int) -> Iterator[tuple[int, int]]:
    """(input_start, predict_end) over the sequence [prefix] + tokens: the input is
    seq[input_start:predict_end] and its last predict_end - previous_end logits are scored."""
    end = 0
    while end < n_tokens:
        new_end = min(n_tokens, end + max_length)
        yield max(0, new_end - max_length), new_end
        end = new_end


@torch.no_grad()
def document_nll(logits_fn: LogitsFn, tokens: list[int], prefix_id: int, max_length: int,
                 on_scored: Callable[[int], None] | None = None) -> float:
    """Summed NLL (nats) of every token of the document; `on_scored(n)` after each window."""
    seq = torch.tensor([prefix_id, *tokens], dtype=torch.int64)
    total, done = 0.0, 0
    for start, end in windows(len(tokens), max_length):
        logits = logits_fn(seq[start:end].unsqueeze(0))[0].float()
        n_new = end - done
        logp = torch.log_softmax(logits[-n_new:], dim=-1)
        targets = seq[end - n_new + 1 : end + 1]
        total += -logp.gather(1, targets.unsqueeze(1)).double().sum().item()
        done = end
        if on_scored is not None:
            on_scored(n_new)
    return total


def read_documents(path: str | Path) -> list[str]:
    """A .jsonl file gives one document per line (its "text"); any other file is one document."""
    path = Path(path)
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                record = json.loads(line)
                if "text" not in record:
                    raise ValueError(f"{path}:{i + 1}: no \"text\" field")
                docs.append(record["text"])
        return docs
    return [path.read_text(encoding="utf-8")]


def perplexity(
    logits_fn: LogitsFn, encode: Callable[[str], list[int]], documents: list[str], prefix_id: int, max_length: int,
    label: str = "ppl", progress: bool = True,
) -> dict:
    """Scores every document; with `progress`, a line with tokens scored, rate and ETA on stderr
    every few seconds."""
    from ..progress import Progress

    nll, tokens, n_bytes = 0.0, 0, 0
    encoded = [(text, encode(text)) for text in documents]
    meter = Progress(label, sum(len(ids) for _, ids in encoded), "tokens", enabled=progress)
    for text, ids in encoded:
        if not ids:
            continue
        nll += document_nll(logits_fn, ids, prefix_id, max_length, meter.update)
        tokens += len(ids)
        n_bytes += len(text.encode("utf-8"))
    return {
        "documents": len(documents),
        "tokens": tokens,
        "bytes": n_bytes,
        "nll": nll,
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "byte_perplexity": math.exp(nll / n_bytes) if n_bytes else float("nan"),
    }
