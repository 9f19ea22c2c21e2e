"""Tiny native models and packed inputs shared by the conversion tests."""

from __future__ import annotations

import torch

from hope_mega.config import CMSLevel, ModelConfig
from hope_mega.model.lm import HopeLM

EOS = 2
VOCAB = 96


def tiny_config(mixer: str, **overrides) -> ModelConfig:
    fields = dict(
        mixer=mixer,
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        n_heads=2,
        chunk_size=4,
        cms_levels=[CMSLevel(hidden=48, period=1), CMSLevel(hidden=32, period=4)],
        init_std=0.05,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_native(mixer: str, seed: int = 0, eos_id: int | None = EOS, **overrides) -> HopeLM:
    """A native HopeLM whose initial states and norm weights are not at their trivial init, so a
    parameter the HF model reads in the wrong place (or not at all) changes the logits."""
    torch.manual_seed(seed)
    model = HopeLM(tiny_config(mixer, **overrides), eos_id=eos_id).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("mixer.s0", "out_norm", "norm.weight")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def packed_ids(seed: int = 0) -> torch.Tensor:
    """Two rows of packed documents: EOS at several places, a one-token document, documents
    longer than a chunk and lengths that are not multiples of it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(EOS + 1, VOCAB, (2, 37), generator=gen)
    ids[0, [6, 19, 20]] = EOS
    ids[1, [10, 29]] = EOS
    return ids
