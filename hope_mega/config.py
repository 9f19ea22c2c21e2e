"""Typed run configuration: dataclasses, YAML loading, dotted `key=value` overrides, validation.

Every error is one line that names the source (file or command line) and the dotted key, so a
misconfigured 1000-GPU job fails in a second instead of an hour in.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the file (or override) and the key."""


@dataclass
class CMSLevel:
    """One Continuum Memory System level: a SwiGLU MLP updated every `period` optimizer steps."""

    hidden: int
    period: int = 1


@dataclass
class ModelConfig:
    name: str = "hope"
    # "titans" is Hope (self-modifying Titans); "attention" is Hope-Attention, and with a single
    # CMS level of period 1 it is Transformer++. "gdn" is Gated DeltaNet run by fla's own code
    # (hope_mega/model/gated_deltanet.py), an outside control for Titans with one chunk per
    # sequence; it ignores chunk_size and memory.
    mixer: str = "titans"
    vocab_size: int = 32000
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    chunk_size: int = 64  # self-modification period C, in tokens
    # The six fast memories of the Titans mixer: "linear" matrices M(u) = u + S u (spec §2) or
    # "mlp", the paper's residual 2-layer MLPs M(u) = u + W_1 GELU(W_2 u) (spec §2b) of hidden
    # width memory_expansion * head_dim.
    memory: str = "linear"
    memory_expansion: int = 2
    conv_size: int = 4
    cms_levels: list[CMSLevel] = field(default_factory=lambda: [CMSLevel(hidden=688, period=1)])
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    init_std: float = 0.02
    # Ablations of the Titans recurrence with matrix memories (ops.common.TitansVariant; run by
    # the torch chunk form, also on GPU, so they are slower there). The defaults are the spec (§2).
    # False: v and v̂ are not unit-normalised (the spec normalises them for stability).
    titans_value_norm: bool = True
    # False: memories read M(u) = S u instead of u + S u, so the delta rule targets v̂ instead of
    # v̂ - k and the output is S_mem q instead of q + S_mem q. S0 = 0 would then read zero, so
    # every memory's learned s0 starts at the identity instead: the layer still starts as the
    # identity map.
    titans_residual_read: bool = True
    # beta = titans_beta_max * sigmoid(...); 2.0 is Gated DeltaNet's (0, 2) option.
    titans_beta_max: float = 1.0
    # True: q is multiplied by 1/sqrt(head_dim) after its norm (the spec does not scale it).
    titans_q_scale: bool = False
    # False: beta's and the decay's logits are w . u + b, not w . M(u) + b through their own
    # (self-modified, learned-initial-state) memories: Gated DeltaNet's kind of gate.
    titans_gate_memory: bool = True
    # False: the memories' initial states s0 are not learned but stay at their initialisation
    # (zero, the identity without the residual read). With C >= T every memory but the main one
    # then reads its input unchanged, as in Gated DeltaNet, which has no such maps.
    titans_learned_s0: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def titans_ablations(self) -> list[str]:
        """The titans_* ablation keys set away from their (spec) defaults."""
        default = ModelConfig()
        return [key for key in TITANS_ABLATION_KEYS if getattr(self, key) != getattr(default, key)]


TITANS_ABLATION_KEYS = (
    "titans_value_norm", "titans_residual_read", "titans_beta_max", "titans_q_scale", "titans_gate_memory",
    "titans_learned_s0",
)


@dataclass
class TrainConfig:
    seq_len: int = 4096
    global_batch: int = 128  # sequences per optimizer step (128 x 4096 = 0.5M tokens)
    micro_batch: int = 4  # sequences per rank per forward/backward
    steps: int = 1000
    lr: float = 4e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 8
    save_every: int = 0
    keep_last: int = 3
    save_dir: str = ""
    # Start (not resume) from these weights: a `hope-mega convert --from-hf` folder, a Hugging
    # Face export, or a checkpoint of any TP size. Ignored once save_dir holds a checkpoint.
    init_from: str = ""
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    peak_tflops: float = 0.0  # per device, for MFU; 0 = known GPUs only (CPU: not reported)
    # How long a collective may wait for the slowest rank before the run fails (NCCL's watchdog
    # included). Checkpoint writes happen between collectives, so this bounds a save too.
    collective_timeout_s: float = 1800.0
    wandb_project: str = ""
    # adamw: CMS AdamW under DeepSpeed ZeRO; m3: M3 for the hidden-layer matrices (settings in
    # the m3 section), its state sharded by whole matrix over the data-parallel ranks.
    optimizer: str = "adamw"


@dataclass
class M3Config:
    """Settings of the M3 optimizer (`train.optimizer: m3`, spec §5) for the hidden-layer
    matrices; every other parameter takes AdamW with train.lr, beta1, beta2, eps, weight_decay."""

    # Peak lr of the matrices, on train.lr's schedule (scaled by m3.lr / train.lr). Not AdamW's:
    # the update is an orthogonal matrix divided by sqrt(V), so its entries are ~1/|g| (BENCHMARKS.md).
    lr: float = 1e-5
    beta1: float = 0.9  # fast momentum M1, every update
    beta2: float = 0.95  # second moment V
    beta3: float = 0.99  # slow momentum M2, every f updates
    alpha: float = 1.0  # weight of the slow direction NS(M2)
    f: int = 10  # slow-momentum period, in the matrix's own updates
    ns_steps: int = 5  # Newton–Schulz iterations
    # Near the gradient entries, not Adam's 1e-8: the first update divides by |g| itself.
    eps: float = 1e-4
    weight_decay: float = 0.0


@dataclass
class ParallelConfig:
    tp: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 1
    activation_checkpointing: bool = False


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    tokenizer: str = ""
    num_workers: int = 0
    # Reset every memory (and the chunk grid, conv window, RoPE positions) at each EOS, so a
    # packed row behaves as independent documents.
    reset_at_eos: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    m3: M3Config = field(default_factory=M3Config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if _is_optional(tp):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}.{key}: unknown key (known: {known})".replace(": .", ": "))
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}".lstrip("."))
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. model.d_model=512)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    node = tree
    for i, k in enumerate(keys[:-1]):
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(keys[: i + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config, apply `key=value` overrides, and validate the result."""
    tree: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"{source}: cannot read config ({err.strerror})") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML ({err})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    try:
        for text in overrides:
            keys, value = _parse_override(text)
            _set_dotted(tree, keys, value, f"override {text!r}")
        cfg = _build(Config, tree, "")
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def validate(cfg: Config) -> None:
    m, t, p = cfg.model, cfg.train, cfg.parallel
    if m.mixer not in ("titans", "attention", "gdn"):
        raise ConfigError(f"model.mixer: {m.mixer!r} is not one of 'titans', 'attention', 'gdn'")
    if m.memory not in ("linear", "mlp"):
        raise ConfigError(f"model.memory: {m.memory!r} is not one of 'linear', 'mlp'")
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "chunk_size", "conv_size", "memory_expansion"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key}: must be > 0, got {getattr(m, key)}")
    if not 0.0 < m.titans_beta_max <= 2.0:
        raise ConfigError(f"model.titans_beta_max: must be in (0, 2], got {m.titans_beta_max}")
    if m.mixer != "titans" and m.titans_ablations():
        raise ConfigError(
            f"model.{m.titans_ablations()[0]}: the titans_* ablations change the Titans mixer only, "
            f"not model.mixer: {m.mixer}"
        )
    if m.memory == "mlp" and m.titans_ablations():
        raise ConfigError(
            f"model.{m.titans_ablations()[0]}: the titans_* ablations are for the matrix memories only, "
            "not model.memory: mlp"
        )
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model: {m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if m.mixer == "attention" and m.head_dim % 2:
        raise ConfigError(f"model.n_heads: head width {m.head_dim} must be even for RoPE")
    if not m.cms_levels:
        raise ConfigError("model.cms_levels: at least one level is needed")
    for i, level in enumerate(m.cms_levels):
        if level.hidden <= 0 or level.period <= 0:
            raise ConfigError(f"model.cms_levels[{i}]: hidden and period must be > 0, got {level}")
    if p.tp <= 0:
        raise ConfigError(f"parallel.tp: must be > 0, got {p.tp}")
    if m.n_heads % p.tp:
        raise ConfigError(f"model.n_heads: {m.n_heads} is not divisible by parallel.tp={p.tp}")
    for i, level in enumerate(m.cms_levels):
        if level.hidden % p.tp:
            raise ConfigError(f"model.cms_levels[{i}].hidden: {level.hidden} is not divisible by parallel.tp={p.tp}")
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError("parallel.sequence_parallel: needs parallel.tp > 1 (it shards the sequence over the TP group)")
    if p.sequence_parallel and t.seq_len % p.tp:
        raise ConfigError(f"train.seq_len: {t.seq_len} is not divisible by parallel.tp={p.tp} (sequence parallelism)")
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage: must be 0, 1, 2 or 3, got {p.zero_stage}")
    for key in ("seq_len", "global_batch", "micro_batch", "steps"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key}: must be > 0, got {getattr(t, key)}")
    if t.global_batch % t.micro_batch:
        raise ConfigError(f"train.global_batch: {t.global_batch} is not divisible by train.micro_batch={t.micro_batch}")
    if t.collective_timeout_s <= 0:
        raise ConfigError(f"train.collective_timeout_s: must be > 0, got {t.collective_timeout_s}")
    if t.dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.dtype: {t.dtype!r} is not one of auto, fp32, bf16")
    _validate_m3(cfg)
    if cfg.data.weights and len(cfg.data.weights) != len(cfg.data.paths):
        raise ConfigError(
            f"data.weights: {len(cfg.data.weights)} weights for {len(cfg.data.paths)} data.paths"
        )


def _validate_m3(cfg: Config) -> None:
    t, m = cfg.train, cfg.m3
    if t.optimizer not in ("adamw", "m3"):
        raise ConfigError(f"train.optimizer: {t.optimizer!r} is not one of adamw, m3")
    for key in ("beta1", "beta2", "beta3"):
        if not 0.0 <= getattr(m, key) < 1.0:
            raise ConfigError(f"m3.{key}: must be in [0, 1), got {getattr(m, key)}")
    for key in ("lr", "eps"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"m3.{key}: must be > 0, got {getattr(m, key)}")
    for key in ("alpha", "weight_decay"):
        if getattr(m, key) < 0:
            raise ConfigError(f"m3.{key}: must be >= 0, got {getattr(m, key)}")
    for key in ("f", "ns_steps"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"m3.{key}: must be > 0, got {getattr(m, key)}")
    if t.optimizer == "m3" and t.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0 with train.optimizer=m3 (M3 scales it), got {t.lr}")
