"""Data parallelism in which each rank owns whole tensors: the engine of `train.optimizer: m3`.

M3 orthogonalises whole matrices, so its state cannot be cut the way DeepSpeed's ZeRO-1/2 cut it
(one flat vector per parameter group, split at arbitrary offsets, handed to the base optimizer as
flat partitions). ZeRO stage 0 would hand over whole parameters, but it all-reduces every
gradient to every rank and keeps the whole optimizer state on each (and its bf16 mode wraps the
optimizer in FP16_UnfusedOptimizer). This engine is ZeRO-1 with tensor-sized shards instead:

- every trainable tensor has one owner among the data-parallel ranks (largest first, each to the
  least loaded rank, so the shards are balanced by size; the same on every TP rank, whose local
  shapes are equal, so a TP matrix's owner is one TP group);
- each micro-batch's gradient is added to an fp32 flat buffer laid out owner by owner (a
  post-accumulate hook), scaled by 1/GA; parameters are fp32 (bf16 is the trainer's autocast);
- at the end of the global batch each owner's segment is reduced to it (averaged over DP); the
  global gradient norm is summed from the owners' segments (a tensor replicated over TP counted
  once), and gradients are clipped as DeepSpeed clips them;
- each owner steps its tensors with M3 (gathering a TP matrix's shards inside its TP group to
  orthogonalise it whole) or AdamW, and broadcasts the new weights to the DP group.

Checkpoints: the model states as DeepSpeed writes them (`mp_rank_XX_model_states.pt`, key
"module"; conversion reads those), and one optimizer file per rank holding its tensors' M3/AdamW
state keyed by parameter name, so a resume with another DP size re-assigns the owners and
picks each tensor's state out of whichever file holds it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import Config
from ..optim.m3 import M3, m3_param_groups
from ..optim.newton_schulz import orthogonalize_sections
from .sharding import shard_tensor, unshard_tensor

MODEL_STATES = "mp_rank_{tp:02d}_model_states.pt"
OPTIM_STATES = "m3_dp_rank_{dp:03d}_mp_rank_{tp:02d}_optim_states.pt"
OPTIM_GLOB = "m3_dp_rank_*_mp_rank_{tp:02d}_optim_states.pt"


def assign_owners(sizes: list[int], n_ranks: int) -> list[int]:
    """Owner rank of each tensor: largest first, each to the least loaded rank (ties: lower
    index, lower rank), so every rank computes the same answer."""
    load = [0] * n_ranks
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(n_ranks), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += sizes[i]
    return owners


class OwnerDataParallel:
    """The slice of DeepSpeed's engine interface the trainer and `hope_mega.checkpoint` use:
    forward, backward, step, get_global_grad_norm, train/eval, save/load_checkpoint."""

    def __init__(self, model: nn.Module, cfg: Config):
        from megatron.core import parallel_state as ps

        t = cfg.train
        self.module = model
        self.dp_group = ps.get_data_parallel_group()
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.dp_world_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.accumulation = t.global_batch // (t.micro_batch * self.dp_world_size)
        self.grad_clip = t.grad_clip
        self.micro_steps = 0
        self.global_grad_norm: float | None = None

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if any(p.dtype != torch.float32 for _, p in named):
            raise ValueError("the M3 engine keeps fp32 parameters (bf16 is the trainer's autocast)")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.index = {n: i for i, n in enumerate(self.names)}
        owners = assign_owners([p.numel() for p in self.params], self.dp_world_size)
        if len(set(owners)) < self.dp_world_size:
            raise ValueError(f"train.optimizer: m3 needs at least one tensor per data-parallel rank "
                             f"({len(self.params)} tensors, {self.dp_world_size} ranks)")  # fmt: skip
        self.owners = owners
        self.by_owner = [[i for i in range(len(self.params)) if owners[i] == r] for r in range(self.dp_world_size)]

        # The fp32 gradient buffer, owner by owner, and each tensor's view of it.
        self.grad_buffer = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32)
        self.grad_views: list[torch.Tensor] = [None] * len(self.params)  # type: ignore[list-item]
        self.segments = []
        offset = 0
        for r in range(self.dp_world_size):
            start = offset
            for i in self.by_owner[r]:
                n = self.params[i].numel()
                self.grad_views[i] = self.grad_buffer[offset : offset + n].view_as(self.params[i])
                offset += n
            self.segments.append((start, offset))
        for i, p in enumerate(self.params):
            p.register_post_accumulate_grad_hook(self._grad_hook(i))

        self.owned = self.by_owner[self.dp_rank]
        owned = [(self.names[i], self.params[i]) for i in self.owned]
        self.optimizer = M3(m3_param_groups(owned, cfg), lr=t.lr, orthogonalize=self._orthogonalize)

    # --- the DeepSpeed-like surface ----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_optimization(self) -> bool:
        # Its optimizer files are keyed by tensor name, not cut by DP size: checkpoint.load hands
        # every resume to load_checkpoint, which re-assigns owners itself.
        return False

    def get_global_grad_norm(self) -> torch.Tensor | None:
        return self.global_grad_norm

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return
        self._reduce_gradients()
        self._clip_gradients()
        for i in self.owned:
            self.params[i].grad = self.grad_views[i]
        self.optimizer.step()
        for i in self.owned:
            self.params[i].grad = None
        self._share_weights()
        self.grad_buffer.zero_()

    # --- the step's parts --------------------------------------------------------------------
    def _grad_hook(self, i: int):
        view = self.grad_views[i]

        def hook(p: torch.Tensor) -> None:
            view.add_(p.grad)
            p.grad = None

        return hook

    def _global_rank(self, dp_rank: int) -> int:
        return dist.get_global_rank(self.dp_group, dp_rank)

    def _reduce_gradients(self) -> None:
        if self.dp_world_size == 1:
            return
        for r, (start, end) in enumerate(self.segments):
            dist.reduce(self.grad_buffer[start:end], dst=self._global_rank(r), group=self.dp_group)
        start, end = self.segments[self.dp_rank]
        self.grad_buffer[start:end].div_(self.dp_world_size)

    def _clip_gradients(self) -> None:
        # On the gradients' device throughout: the norm and the clip factor never go to the host.
        total = torch.zeros(1, dtype=torch.float64, device=self.grad_buffer.device)
        for i in self.owned:
            if self.tp_rank == 0 or getattr(self.params[i], "tensor_model_parallel", False):
                total += self.grad_views[i].double().square().sum()
        dist.all_reduce(total)  # over the world: DP ranks own different tensors, TP ranks hold shards
        norm = total.sqrt()[0]
        self.global_grad_norm = norm
        if self.grad_clip > 0:
            coef = (self.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            start, end = self.segments[self.dp_rank]
            self.grad_buffer[start:end].mul_(coef.to(self.grad_buffer.dtype))

    def _orthogonalize(self, param: torch.Tensor, m: torch.Tensor, steps: int) -> torch.Tensor:
        """NS of the whole logical matrix: gather a TP matrix's shards in this TP group, run NS on
        each fused section, keep this rank's slice."""
        dim, sections = getattr(param, "tp_dim", 0), getattr(param, "tp_sections", 1)
        if self.tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
            return orthogonalize_sections(m, dim, sections, steps)
        parts = [torch.empty_like(m) for _ in range(self.tp_size)]
        dist.all_gather(parts, m.contiguous(), group=self.tp_group)
        full = orthogonalize_sections(unshard_tensor(parts, dim, sections), dim, sections, steps)
        return shard_tensor(full, dim, sections, self.tp_rank, self.tp_size, m.shape[dim])

    @torch.no_grad()
    def _share_weights(self) -> None:
        """Each owner's new weights to every DP rank, one broadcast per owner."""
        if self.dp_world_size == 1:
            return
        for r in range(self.dp_world_size):
            idx = self.by_owner[r]
            if r == self.dp_rank:
                flat = torch.cat([self.params[i].reshape(-1) for i in idx])
            else:
                flat = torch.empty(sum(self.params[i].numel() for i in idx), dtype=torch.float32)
            dist.broadcast(flat, src=self._global_rank(r), group=self.dp_group)
            if r != self.dp_rank:
                offset = 0
                for i in idx:
                    n = self.params[i].numel()
                    self.params[i].copy_(flat[offset : offset + n].view_as(self.params[i]))
                    offset += n

    # --- checkpoints -------------------------------------------------------------------------
    def optimizer_shard(self) -> dict:
        """This rank's tensors' optimizer state, by parameter name."""
        tensors = {}
        for i in self.owned:
            tensors[self.names[i]] = {key: value.clone() if torch.is_tensor(value) else value
                                      for key, value in self.optimizer.state.get(self.params[i], {}).items()}  # fmt: skip
        steps_seen = {g["steps_seen"] for g in self.optimizer.param_groups}
        assert len(steps_seen) == 1, steps_seen  # every group steps at every (not skipped) step
        return {"dp_size": self.dp_world_size, "steps_seen": steps_seen.pop(), "tensors": tensors}

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool = False) -> None:
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        if self.dp_rank == 0:
            torch.save({"module": self.module.state_dict()}, folder / MODEL_STATES.format(tp=self.tp_rank))
        torch.save(self.optimizer_shard(), folder / OPTIM_STATES.format(dp=self.dp_rank, tp=self.tp_rank))

    @torch.no_grad()
    def load_checkpoint(self, load_dir: str, tag: str, load_optimizer_states: bool = True,
                        load_lr_scheduler_states: bool = False, load_module_only: bool = False):  # fmt: skip
        folder = Path(load_dir) / tag
        model_file = folder / MODEL_STATES.format(tp=self.tp_rank)
        if not model_file.is_file():
            return None, None
        self.module.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=False)["module"])
        if load_optimizer_states and not load_module_only:
            self._load_optimizer(folder)
        return str(folder), {}

    def _load_optimizer(self, folder: Path) -> None:
        files = sorted(folder.glob(OPTIM_GLOB.format(tp=self.tp_rank)))
        if not files:
            raise FileNotFoundError(f"{folder}: no M3 optimizer files for TP rank {self.tp_rank}")
        found = set()
        steps_seen = None
        for path in files:
            shard = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            steps_seen = shard["steps_seen"]
            for name, entry in shard["tensors"].items():
                i = self.index[name]
                if self.owners[i] != self.dp_rank:
                    continue
                if entry:  # a tensor that has had no gradient yet has no state
                    self.optimizer.state[self.params[i]] = {k: v.clone() if torch.is_tensor(v) else v
                                                            for k, v in entry.items()}  # fmt: skip
                found.add(name)
        missing = {self.names[i] for i in self.owned} - found
        if missing:
            raise ValueError(f"{folder}: no M3 optimizer state for {sorted(missing)[:3]}")
        for group in self.optimizer.param_groups:
            group["steps_seen"] = steps_seen


def build_owner_engine(model: nn.Module, cfg: Config) -> tuple[M3, OwnerDataParallel]:
    engine = OwnerDataParallel(model, cfg)
    return engine.optimizer, engine


def saved_optimizer_state(ckpt: str | Path, tp_rank: int = 0) -> tuple[int, dict[str, dict]]:
    """(steps_seen, {parameter name: its optimizer state}) of a checkpoint's M3 files for one TP
    rank, whole, whatever data-parallel size wrote it."""
    tensors, steps_seen = {}, set()
    for path in sorted(Path(ckpt).glob(OPTIM_GLOB.format(tp=tp_rank))):
        shard = torch.load(path, map_location="cpu", weights_only=False)
        steps_seen.add(shard["steps_seen"])
        tensors.update(shard["tensors"])
    if len(steps_seen) != 1:
        raise ValueError(f"{ckpt}: M3 files disagree on the step count ({sorted(steps_seen)})")
    return steps_seen.pop(), tensors
