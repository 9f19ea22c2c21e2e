"""`hope-mega convert`: training checkpoints <-> Hugging Face folders.

Forward (`--checkpoint`): the model states of every TP rank are read from a `step_*` folder (the
DeepSpeed `mp_rank_XX_model_states.pt` files hold each TP rank's full local weights under ZeRO-1/2,
so the data-parallel layout and the sharded optimizer files do not matter), joined into the
canonical TP=1 layout with the `tp_dim`/`tp_sections` that a TP=1 HopeLM carries, cut to the true
vocabulary, and exported with the checkpoint's tokenizer and EOS settings.

Reverse (`--from-hf`): the trainer resumes only from DeepSpeed states written with the same TP
size, so an HF folder is turned into a start point instead: canonical weights
(`model.safetensors`), a training config whose `model` section matches them (`config.yaml`) and
`init.json` (EOS settings, source). `load_canonical_weights` reads that folder (or an HF folder,
or a training checkpoint) back as a canonical fp32 state dict for the trainer to shard for its TP rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import ConfigError

INIT_WEIGHTS_FILE = "model.safetensors"
INIT_CONFIG_FILE = "config.yaml"
INIT_INFO_FILE = "init.json"
MODEL_STATES = "mp_rank_{:02d}_model_states.pt"


class ConvertError(ConfigError):
    """A conversion that cannot be done; one line naming the folder and what is missing."""


# ----------------------------------------------------------------------------- checkpoint -> canonical


def resolve_checkpoint(path: str | Path) -> Path:
    """A `step_*` folder as given, or the newest usable one in a `train.save_dir`."""
    from .. import checkpoint

    path = Path(path)
    if not path.is_dir():
        raise ConvertError(f"checkpoint {path}: no such folder")
    if (path / checkpoint.TRAINER_STATE).is_file() or (path / checkpoint.MANIFEST).is_file():
        return path
    candidates = checkpoint.list_checkpoints(path)
    if not candidates:
        raise ConvertError(
            f"{path} is not a checkpoint: it has no {checkpoint.TRAINER_STATE} and no {checkpoint.PREFIX}* folders"
        )
    reasons = []
    for ckpt in candidates:
        problem = checkpoint.problem_with(ckpt)
        if problem is None:
            return ckpt
        reasons.append(f"{ckpt.name}: {problem}")
    raise ConvertError(f"{path}: no usable checkpoint ({'; '.join(reasons)})")


def read_trainer_state(ckpt: Path) -> dict:
    from .. import checkpoint

    state_file = ckpt / checkpoint.TRAINER_STATE
    if not state_file.is_file():
        raise ConvertError(f"checkpoint {ckpt}: {checkpoint.TRAINER_STATE} is missing (the save did not finish)")
    state = json.loads(state_file.read_text())
    if "config" not in state:
        raise ConvertError(f"checkpoint {ckpt}: {checkpoint.TRAINER_STATE} holds no config")
    return state


def model_config_from_dict(tree: dict, where: str):
    """A validated ModelConfig from the `model` section of a saved config."""
    from ..config import ModelConfig, _build

    try:
        return _build(ModelConfig, dict(tree), "model")
    except ConfigError as err:
        raise ConvertError(f"{where}: {err}") from None


def _load_rank_states(ckpt: Path, tp: int) -> list[dict]:
    import torch

    from .. import checkpoint

    files = [ckpt / MODEL_STATES.format(r) for r in range(tp)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise ConvertError(
            f"checkpoint {ckpt}: TP shard file(s) {', '.join(absent)} missing (it was written with parallel.tp={tp})"
        )
    problem = checkpoint.problem_with(ckpt)
    if problem is not None:
        raise ConvertError(f"checkpoint {ckpt}: {problem}")
    from ..progress import Progress

    progress = Progress(f"convert {ckpt.name}", len(files), "TP rank files", every_s=5.0)
    states = []
    for f in files:
        # DeepSpeed stores its config and counters next to the weights, which needs full unpickling.
        saved = torch.load(f, map_location="cpu", weights_only=False)
        if "module" not in saved:
            raise ConvertError(f"checkpoint {ckpt}: {f.name} holds no model weights (no 'module' entry)")
        states.append({k: v for k, v in saved["module"].items() if isinstance(v, torch.Tensor)})
        progress.update()
    return states


def unshard_model_states(model_cfg, rank_states: list[dict], where: str = "checkpoint") -> dict:
    """Per-TP-rank local state dicts (rank order) -> the canonical TP=1 state dict.

    The split layout comes from a TP=1 HopeLM built on the meta device; the canonical shape along
    the split dimension is the true size, so the vocabulary padding rows fall away.
    """
    import torch

    from ..model.lm import HopeLM
    from ..parallel.sharding import unshard_tensor

    with torch.device("meta"):
        reference = HopeLM(model_cfg)
    params = dict(reference.named_parameters())
    out = {}
    for name, canonical in reference.state_dict().items():
        missing = [r for r, s in enumerate(rank_states) if name not in s]
        if missing:
            raise ConvertError(f"{where}: {name} is missing from the model states of TP rank(s) {missing}")
        parts = [s[name] for s in rank_states]
        param = params.get(name)
        if param is not None and hasattr(param, "tp_dim"):
            dim, sections = param.tp_dim, getattr(param, "tp_sections", 1)
            if sum(p.shape[dim] for p in parts) < canonical.shape[dim]:
                raise ConvertError(
                    f"{where}: {name} has {sum(p.shape[dim] for p in parts)} rows along dim {dim} over "
                    f"{len(parts)} TP ranks, the model config needs {canonical.shape[dim]}"
                )
            full = unshard_tensor(parts, dim, sections, canonical.shape[dim])
        else:
            full = parts[0]
            for r, other in enumerate(parts[1:], 1):
                if not torch.equal(other, full):
                    diff = (other.float() - full.float()).abs().max().item()
                    raise ConvertError(f"{where}: replicated parameter {name} differs between TP rank 0 and {r} "
                                       f"(max |diff| {diff:.3g})")
        if tuple(full.shape) != tuple(canonical.shape):
            raise ConvertError(f"{where}: {name} joins to shape {tuple(full.shape)}, the config needs "
                               f"{tuple(canonical.shape)}")
        out[name] = full.clone()
    return out


def read_checkpoint(path: str | Path) -> tuple:
    """(step folder, trainer state, ModelConfig, canonical state dict) of a checkpoint or save_dir."""
    ckpt = resolve_checkpoint(path)
    state = read_trainer_state(ckpt)
    config = state["config"]
    model_cfg = model_config_from_dict(config["model"], f"checkpoint {ckpt}")
    tp = int(config.get("parallel", {}).get("tp", 1))
    weights = unshard_model_states(model_cfg, _load_rank_states(ckpt, tp), f"checkpoint {ckpt}")
    return ckpt, state, model_cfg, weights


def checkpoint_eos(state: dict, tokenizer_dir: Path | None) -> tuple[int | None, bool]:
    """(EOS id, reset at EOS) the checkpoint was trained with: from its dataset card when that is
    still on disk, else from the tokenizer."""
    from ..data.dataset_card import DatasetCardError
    from ..data.loader import read_dataset_card

    data = state["config"].get("data", {})
    reset = bool(data.get("reset_at_eos", True))
    for path in data.get("paths", []):
        try:
            return int(read_dataset_card(path)["eos_id"]), reset
        except (DatasetCardError, OSError, KeyError):
            continue
    if tokenizer_dir is not None:
        from ..data.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer_dir).eos_id, reset
    return None, reset


def checkpoint_tokenizer(state: dict, explicit: str | None, ckpt: Path) -> Path | None:
    from ..data.tokenizer import MODEL_FILE

    if explicit:
        tok = Path(explicit)
        if not (tok / MODEL_FILE).is_file():
            raise ConvertError(f"--tokenizer {tok}: no {MODEL_FILE} there")
        return tok
    saved = state["config"].get("data", {}).get("tokenizer") or ""
    if not saved:
        return None
    tok = Path(saved)
    if not (tok / MODEL_FILE).is_file():
        raise ConvertError(
            f"checkpoint {ckpt}: its tokenizer {tok} (data.tokenizer) has no {MODEL_FILE}; pass --tokenizer DIR"
        )
    return tok


def convert_checkpoint(checkpoint_dir, output_dir, dtype: str = "fp32", tokenizer: str | None = None) -> Path:
    from .export import ConversionError, export_hf

    ckpt, state, model_cfg, weights = read_checkpoint(checkpoint_dir)
    tok_dir = checkpoint_tokenizer(state, tokenizer, ckpt)
    eos_id, reset = checkpoint_eos(state, tok_dir)
    if reset and eos_id is None:
        raise ConvertError(
            f"checkpoint {ckpt} was trained with data.reset_at_eos but neither its dataset card nor a tokenizer "
            f"is available to give the EOS id; pass --tokenizer DIR"
        )
    try:
        return export_hf(model_cfg, weights, output_dir, tokenizer_dir=tok_dir, dtype=dtype,
                         eos_id=eos_id, reset_at_eos=reset)
    except ConversionError as err:
        raise ConvertError(str(err)) from None


# ----------------------------------------------------------------------------- HF -> training start point


def convert_from_hf(hf_dir, output_dir, config_file: str | None = None) -> Path:
    """Write canonical fp32 weights, a training config for them and init.json into output_dir."""
    import yaml

    from ..config import Config, load_config, validate
    from .export import ConversionError, import_hf, read_hf_config, save_safetensors

    try:
        model_cfg, weights = import_hf(hf_dir)
        hf_config = read_hf_config(hf_dir)
    except ConversionError as err:
        raise ConvertError(str(err)) from None
    cfg = load_config(config_file) if config_file else Config()
    changed = [f.name for f in dataclasses.fields(model_cfg) if getattr(cfg.model, f.name) != getattr(model_cfg, f.name)]
    cfg.model = model_cfg
    cfg.data.reset_at_eos = bool(hf_config.get("reset_at_eos", cfg.data.reset_at_eos))
    try:
        validate(cfg)
    except ConfigError as err:
        raise ConvertError(f"{config_file or 'default config'} with the model of {hf_dir}: {err}") from None

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in weights.items()}
    save_safetensors(tensors, output_dir / INIT_WEIGHTS_FILE)
    (output_dir / INIT_CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    info = {
        "source": str(Path(hf_dir).resolve()),
        "weights": INIT_WEIGHTS_FILE,
        "eos_id": hf_config.get("eos_id"),
        "reset_at_eos": hf_config.get("reset_at_eos"),
        "model_fields_from_hf": changed,
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
    }
    (output_dir / INIT_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return output_dir


def load_canonical_weights(path: str | Path) -> dict:
    """Canonical (TP=1, unpadded) fp32 weights from any of: a `convert --from-hf` folder or its
    safetensors file, a Hugging Face export folder, a `step_*` checkpoint or a `train.save_dir`.

    The trainer shards the result for its TP rank with `hope_mega.parallel.sharding.shard_state_dict`.
    """
    from safetensors.torch import load_file

    from .export import CONFIG_FILE, ConversionError, import_hf

    path = Path(path)
    if path.is_file():
        weights = load_file(str(path))
    elif (path / INIT_INFO_FILE).is_file():
        weights = load_file(str(path / json.loads((path / INIT_INFO_FILE).read_text())["weights"]))
    elif (path / CONFIG_FILE).is_file():
        try:
            _, weights = import_hf(path)
        except ConversionError as err:
            raise ConvertError(str(err)) from None
    elif path.is_dir():
        weights = read_checkpoint(path)[3]
    else:
        raise ConvertError(f"initial weights {path}: no such file or folder")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}


# ----------------------------------------------------------------------------- command line


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="checkpoint -> Hugging Face folder, or Hugging Face folder -> training start point",
        description="hope-mega convert --checkpoint DIR --output HF_DIR | --from-hf HF_DIR --output DIR",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a step_* checkpoint folder, or a train.save_dir (newest usable one)")
    src.add_argument("--from-hf", dest="from_hf", help="a Hugging Face folder written by hope-mega convert")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="stored weight dtype (export only)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's data.tokenizer)")
    p.add_argument("--config", help="with --from-hf: a training config whose non-model sections to keep")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.checkpoint:
        if args.config:
            raise ConvertError("--config goes with --from-hf (a checkpoint carries its own config)")
        ckpt = resolve_checkpoint(args.checkpoint)
        step = read_trainer_state(ckpt).get("step")
        print(f"converting {ckpt} (step {step})", flush=True)
        out = convert_checkpoint(ckpt, args.output, args.dtype, args.tokenizer)
        print(f"wrote Hugging Face folder {out} from step {step}")
        return 0
    if args.tokenizer or args.dtype != "fp32":
        raise ConvertError("--tokenizer and --dtype go with --checkpoint")
    out = convert_from_hf(args.from_hf, args.output, args.config)
    info = json.loads((out / INIT_INFO_FILE).read_text())
    print(f"wrote {out / INIT_WEIGHTS_FILE} ({info['num_parameters']:,} parameters) and {out / INIT_CONFIG_FILE}")
    if info["model_fields_from_hf"]:
        print(f"model fields taken from the Hugging Face config: {', '.join(info['model_fields_from_hf'])}")
    print(f"start training from it with: hope-mega train --config {out / INIT_CONFIG_FILE} "
          f"train.init_from={out} data.paths=[...] train.save_dir=...")
    return 0
