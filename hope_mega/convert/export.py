"""Native HopeLM weights <-> a Hugging Face folder that loads without hope_mega.

An exported folder holds `config.json` (a HopeConfig whose `auto_map` points at the copied model
code), `model.safetensors` (the native state dict, same names), `configuration_hope.py` and
`modeling_hope.py` (copied from hope_mega/convert/hf), `generation_config.json`, and with a
tokenizer `tokenizer.model`, `tokenizer.json` (the model converted once, with SentencePiece's
whitespace rule) and `tokenizer_config.json`, which transformers loads as a fast tokenizer that
encodes and decodes as SentencePiece does. Load it with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..config import CMSLevel, ModelConfig

MODEL_TYPE = "hope_mega"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_MODEL_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = "tokenizer.json"
TOKENIZER_CARD_FILE = "tokenizer_card.json"
CODE_DIR = Path(__file__).resolve().parent / "hf"
CODE_FILES = ("configuration_hope.py", "modeling_hope.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hope.HopeConfig",
    "AutoModelForCausalLM": "modeling_hope.HopeForCausalLM",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The recurrence's own parameters stay fp32 in a bf16 export: the spec keeps them fp32 (§4), and
# they are tiny next to the projections.
FP32_SUFFIXES = ("mixer.s0", "mixer.w_eta", "mixer.w_alpha", "mixer.b_eta", "mixer.b_alpha", "mixer.a_log")


def save_safetensors(tensors: dict, path: Path) -> None:
    """safetensors writes its files 0600; an export is shared like every other file, so the mode
    follows the umask (0644 under the usual 022)."""
    import os

    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class ConversionError(ValueError):
    """An export or import that cannot be done; the message names the folder and what is wrong."""


def _hf_config(model_cfg: ModelConfig, eos_id: int | None, reset_at_eos: bool, dtype: str, extra: dict):
    from .hf.configuration_hope import HopeConfig

    fields = dataclasses.asdict(model_cfg)
    config = HopeConfig(**fields, eos_id=eos_id, reset_at_eos=bool(reset_at_eos and eos_id is not None), **extra)
    config.architectures = ["HopeForCausalLM"]
    config.auto_map = dict(AUTO_MAP)
    config.dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    return config


def _check_state_dict(config, state_dict: dict, output_dir: Path) -> None:
    """Names and shapes must be exactly those of the HF model, which are the native model's."""
    from .hf.modeling_hope import HopeForCausalLM

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in HopeForCausalLM(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"export to {output_dir}: the state dict does not match the model config "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise ConversionError(
                f"export to {output_dir}: {key} has shape {tuple(state_dict[key].shape)}, the config needs {shape}"
            )


def _tokenizer_files(tokenizer_dir: Path, output_dir: Path, vocab_size: int) -> dict:
    """Copy the SentencePiece model; return its special ids for the configs."""
    import sentencepiece as spm

    model_file = tokenizer_dir / TOKENIZER_MODEL_FILE
    if not model_file.is_file():
        raise ConversionError(f"tokenizer folder {tokenizer_dir} has no {TOKENIZER_MODEL_FILE}")
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if sp.get_piece_size() > vocab_size:
        raise ConversionError(
            f"tokenizer {model_file} has {sp.get_piece_size()} pieces, more than the model's vocab_size {vocab_size}"
        )
    shutil.copyfile(model_file, output_dir / TOKENIZER_MODEL_FILE)
    if (tokenizer_dir / TOKENIZER_CARD_FILE).is_file():  # provenance: the hash data prep recorded
        shutil.copyfile(tokenizer_dir / TOKENIZER_CARD_FILE, output_dir / TOKENIZER_CARD_FILE)
    ids = {name: getattr(sp, f"{name}_id")() for name in ("bos", "eos", "unk", "pad")}
    _write_tokenizer_json(output_dir)
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as written, see below
        # Training rows carry no BOS (prep only appends EOS), so none is added here either.
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # Prep encoded "</s>" in a text as characters, never as the EOS id; so does this tokenizer.
        "split_special_tokens": True,
    }
    for name, i in ids.items():
        if i >= 0:
            tok_config[f"{name}_token"] = sp.id_to_piece(i)
    (output_dir / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tok_config, indent=2) + "\n")
    return ids


def _write_tokenizer_json(output_dir: Path) -> None:
    """`tokenizer.json`: the SentencePiece BPE as transformers converts it, with SentencePiece's own
    whitespace rule. SentencePiece prefixes every text with one `▁` and turns each space into `▁`;
    transformers' LlamaTokenizer uses Metaspace(prepend_scheme="first"), which skips the prefix
    when the text already starts with a space, so " hi" lost a `▁` (and decoded as "hi")."""
    import tempfile

    from tokenizers import normalizers
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as alone:  # no older tokenizer files for transformers to prefer
        shutil.copyfile(output_dir / TOKENIZER_MODEL_FILE, Path(alone) / TOKENIZER_MODEL_FILE)
        backend = LlamaTokenizer.from_pretrained(alone).backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.save(str(output_dir / TOKENIZER_JSON_FILE))


def export_hf(
    model_cfg: ModelConfig,
    state_dict: dict,
    output_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: str = "fp32",
    eos_id: int | None = None,
    reset_at_eos: bool = True,
) -> Path:
    """Write a Hugging Face folder for a HopeLM with config `model_cfg` and weights `state_dict`.

    `eos_id` is the EOS token id (taken from the tokenizer when not given); the HF model restarts
    every memory after each EOS when `reset_at_eos` and an EOS id is known, like
    `HopeLM(model_cfg, eos_id=eos_id)`; pass `reset_at_eos=False` to match `HopeLM(..., eos_id=None)`.
    `dtype` "bf16" stores the weights in bf16 except the recurrence's own small parameters.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    # modeling_hope.py carries its own copy of the spec's recurrence only; an ablated model
    # exported with it would load and silently compute something else.
    ablations = model_cfg.titans_ablations()
    if ablations:
        raise ConversionError(
            f"cannot export a model trained with the Titans ablation(s) "
            f"{', '.join(f'model.{k}={getattr(model_cfg, k)}' for k in ablations)}: "
            "the Hugging Face model implements only the default recurrence"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    extra = {}
    if tokenizer_dir is not None:
        ids = _tokenizer_files(Path(tokenizer_dir), output_dir, model_cfg.vocab_size)
        if eos_id is None:
            eos_id = ids["eos"]
        elif eos_id != ids["eos"]:
            raise ConversionError(f"eos_id {eos_id} differs from the EOS id {ids['eos']} of tokenizer {tokenizer_dir}")
        extra = {f"{n}_token_id": i for n, i in ids.items() if n in ("bos", "pad") and i >= 0}
    config = _hf_config(model_cfg, eos_id, reset_at_eos, dtype, extra)
    _check_state_dict(config, state_dict, output_dir)

    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().to("cpu")
        if value.is_floating_point() and not key.endswith(FP32_SUFFIXES):
            value = value.to(DTYPES[dtype])
        tensors[key] = value.contiguous().clone()  # safetensors refuses tensors that share storage
    save_safetensors(tensors, output_dir / WEIGHTS_FILE)
    config.save_pretrained(output_dir)
    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, output_dir / name)
    generation = {"eos_token_id": eos_id, "pad_token_id": extra.get("pad_token_id", eos_id)}
    if "bos_token_id" in extra:
        generation["bos_token_id"] = extra["bos_token_id"]
    (output_dir / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    return output_dir


def read_hf_config(hf_dir: str | Path) -> dict:
    """The exported config.json as a dict; refuses folders that are not a hope_mega export."""
    hf_dir = Path(hf_dir)
    path = hf_dir / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(f"{hf_dir} is not a Hugging Face model folder: {CONFIG_FILE} is missing")
    config = json.loads(path.read_text())
    found = config.get("model_type")
    if found != MODEL_TYPE:
        raise ConversionError(f"{hf_dir}: model_type is {found!r}, expected {MODEL_TYPE!r} (not a hope-mega export)")
    return config


def _load_weights(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    if (hf_dir / WEIGHTS_FILE).is_file():
        return load_file(str(hf_dir / WEIGHTS_FILE))
    index = hf_dir / WEIGHTS_INDEX_FILE
    if not index.is_file():
        raise ConversionError(f"{hf_dir}: no weights, neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} is there")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    absent = [s for s in shards if not (hf_dir / s).is_file()]
    if absent:
        raise ConversionError(f"{hf_dir}: weight shards listed in {WEIGHTS_INDEX_FILE} are missing: {absent}")
    state = {}
    for shard in shards:
        state.update(load_file(str(hf_dir / shard)))
    return state


def import_hf(hf_dir: str | Path) -> tuple[ModelConfig, dict]:
    """Read an exported folder back: the ModelConfig and the native state dict (stored dtypes).

    The EOS settings are in `read_hf_config(hf_dir)` (`eos_id`, `reset_at_eos`).
    """
    hf_dir = Path(hf_dir)
    config = read_hf_config(hf_dir)
    kwargs = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name in config:
            kwargs[f.name] = config[f.name]
    kwargs["cms_levels"] = [CMSLevel(**level) for level in kwargs.get("cms_levels", [])] or ModelConfig().cms_levels
    return ModelConfig(**kwargs), _load_weights(hf_dir)
