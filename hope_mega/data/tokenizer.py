"""Load a trained SentencePiece tokenizer and identify it by the hash of its model file.

The hash (SHA-256 of `tokenizer.model`) is what data prep records in a dataset card and what the
trainer compares before it trains on a dataset, so data made with another tokenizer is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
CARD_FILE = "tokenizer_card.json"


class TokenizerError(ValueError):
    """A tokenizer folder is missing, incomplete or inconsistent."""


def model_hash(model_path: str | Path) -> str:
    """SHA-256 hex digest of a SentencePiece model file."""
    return hashlib.sha256(Path(model_path).read_bytes()).hexdigest()


def _model_path(path: str | Path) -> Path:
    path = Path(path)
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise TokenizerError(
            f"no SentencePiece model at {model} (expected a folder made by "
            f"`hope-mega tokenizer train`, holding {MODEL_FILE})"
        )
    return model


def read_tokenizer_card(path: str | Path) -> dict[str, Any]:
    """The JSON card written next to the model by `hope-mega tokenizer train`, or {} if absent."""
    card = _model_path(path).parent / CARD_FILE
    if not card.is_file():
        return {}
    return json.loads(card.read_text())


class Tokenizer:
    """A SentencePiece model with the ids the rest of the stack relies on.

    `encode` adds neither BOS nor EOS: data prep appends EOS after each document itself.
    """

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.model_path = _model_path(path)
        self.hash = model_hash(self.model_path)
        self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.vocab_size: int = self._sp.get_piece_size()
        self.eos_id: int = self._sp.eos_id()
        self.bos_id: int = self._sp.bos_id()
        self.pad_id: int = self._sp.pad_id()
        self.unk_id: int = self._sp.unk_id()
        if self.eos_id < 0:
            raise TokenizerError(f"{self.model_path} defines no EOS id; data prep needs one")

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread: parallelism comes from worker processes, and extra threads would compete.
        return self._sp.encode(texts, out_type=int, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer in folder `path` (or the `.model` file `path` itself)."""
    return Tokenizer(path)
