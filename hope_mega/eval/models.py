"""What an evaluation needs from a model, whatever it was saved as.

`load_model` accepts a Hugging Face folder (a hope-mega export, loaded through its own copied
modeling code, or any other causal LM transformers knows), a `step_*` training checkpoint or a
`train.save_dir` (joined to the canonical layout and run as a native HopeLM). It returns an
`EvalModel`: a logits callable, an encoder (None when the folder has no tokenizer) and the ids the
synthetic tasks must stay clear of.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError


class EvalError(ConfigError):
    """An evaluation that cannot run; one line naming the input and the problem."""


@dataclass
class EvalModel:
    name: str
    logits_fn: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[str], list[int]] | None
    vocab_size: int
    eos_id: int | None
    special_ids: set[int] = field(default_factory=set)

    @property
    def first_free_id(self) -> int:
        """The lowest id above every special id: where the synthetic tasks' ranges start."""
        return max(self.special_ids, default=-1) + 1


def _hf_model(path: Path, dtype: torch.dtype, device: torch.device) -> EvalModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((path / "config.json").read_text())
    # Remote code only for hope-mega's own exports, whose code this package wrote.
    trust = config.get("model_type") == "hope_mega"
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust, dtype=dtype).eval().to(device)
    tokenizer = None
    if any((path / f).is_file() for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    eos = config.get("eos_id", config.get("eos_token_id"))
    eos = eos[0] if isinstance(eos, list) else eos
    specials = {i for i in (eos, config.get("bos_token_id"), config.get("pad_token_id")) if isinstance(i, int)}
    if tokenizer is not None:
        specials |= {i for i in tokenizer.all_special_ids if i is not None}
        if eos is None:
            eos = tokenizer.eos_token_id

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(ids.to(device)).logits.cpu()

    encode = None if tokenizer is None else (lambda text: tokenizer.encode(text, add_special_tokens=False))
    return EvalModel(str(path), logits_fn, encode, int(model.config.vocab_size), eos, specials)


def _native_model(path: Path, tokenizer_dir: str | None, device: torch.device) -> EvalModel:
    from ..convert.cli import checkpoint_eos, checkpoint_tokenizer, read_checkpoint
    from ..data.tokenizer import load_tokenizer
    from ..model.lm import HopeLM

    ckpt, state, model_cfg, weights = read_checkpoint(path)
    tok_dir = checkpoint_tokenizer(state, tokenizer_dir, ckpt)
    eos, reset = checkpoint_eos(state, tok_dir)
    model = HopeLM(model_cfg, eos_id=eos if reset else None).eval()
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    model.to(device)
    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    specials = {eos} if eos is not None else set()
    if tokenizer is not None:
        specials |= {i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id) if i >= 0}

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(ids.to(device)).cpu()

    return EvalModel(str(ckpt), logits_fn, tokenizer.encode if tokenizer else None, model_cfg.vocab_size, eos, specials)


def load_model(path: str | Path, tokenizer: str | None = None, dtype: str = "fp32", device: str = "auto") -> EvalModel:
    from ..device import pick_device

    path = Path(path)
    where = pick_device(device)
    if not path.exists():
        raise EvalError(f"--model {path}: no such file or folder")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if (path / "config.json").is_file():
        if tokenizer:
            raise EvalError("--tokenizer applies to training checkpoints; a Hugging Face folder brings its own")
        return _hf_model(path, torch_dtype, where)
    return _native_model(path, tokenizer, where)
