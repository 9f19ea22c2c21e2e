"""Greedy continuation of a prompt by a trained checkpoint: what a run has learned, in text.

The prompt is preceded by EOS, as every document but the first is in the packed training rows, so
the model reads it as the start of a document. Each new token re-reads the whole sequence (no
cache): fine for the few dozen tokens a look needs, and exactly the model that was trained.
"""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def greedy_continuation(checkpoint: str | Path, tokenizer_dir: str | Path, prompt: str, new_tokens: int = 40) -> str:
    """The text the model at `checkpoint` (a step folder or a train.save_dir) writes after `prompt`,
    choosing the most likely token each time, up to `new_tokens` tokens or EOS."""
    from .data.tokenizer import load_tokenizer
    from .eval.models import load_model

    tok = load_tokenizer(tokenizer_dir)
    model = load_model(checkpoint, str(tokenizer_dir))
    ids = [tok.eos_id, *tok.encode(prompt)]
    start = len(ids)
    for _ in range(new_tokens):
        logits = model.logits_fn(torch.tensor([ids]))[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == tok.eos_id:
            break
    out = [i for i in ids[start:] if i != tok.eos_id]
    # Decode prompt and continuation together, so the first new word keeps its leading space.
    return tok.decode(ids[1:start] + out)[len(tok.decode(ids[1:start])):]
