"""Data parallelism and ZeRO (stages 0-2) with DeepSpeed over megatron's data-parallel group.

DeepSpeed gets a torch optimizer instance (`CMSAdamW`), so ZeRO shards its moments and the CMS
gradient accumulators like any optimizer state, and no DeepSpeed optimizer has to be compiled.
"""

from __future__ import annotations

import sys

import torch

from ..config import Config


class MegatronMPU:
    """The model-parallel-unit interface DeepSpeed asks for, answered from megatron's groups."""

    def __init__(self):
        from megatron.core import parallel_state as ps

        self.ps = ps

    def get_model_parallel_rank(self):
        return self.ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self):
        return self.ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    def get_data_parallel_rank(self):
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self):
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()

    def get_data_parallel_group_ranks(self):
        import torch.distributed as dist

        return dist.get_process_group_ranks(self.ps.get_data_parallel_group())

    def get_tensor_model_parallel_src_rank(self):
        return self.ps.get_tensor_model_parallel_src_rank()

    # DeepSpeed's gradient-norm code asks for these names too.
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


def _skip_cpu_shm_build() -> None:
    """DeepSpeed compiles a shared-memory comm op at init (~50 s) that gloo on CPU never uses."""
    import deepspeed.comm.torch  # noqa: F401  (the module object, not the `torch` it re-exports)

    module = sys.modules["deepspeed.comm.torch"]
    if hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def deepspeed_config(cfg: Config, dp_size: int, bf16: bool) -> dict:
    t, p = cfg.train, cfg.parallel
    if p.zero_stage == 3:
        raise ValueError(
            "parallel.zero_stage: 3 is not supported with megatron-core's tensor-parallel layers "
            "and the CMS multi-period optimizer; use 1 or 2"
        )
    if t.global_batch % (t.micro_batch * dp_size):
        raise ValueError(
            f"train.global_batch: {t.global_batch} is not divisible by train.micro_batch x data-parallel "
            f"size = {t.micro_batch} x {dp_size}"
        )
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.global_batch // (t.micro_batch * dp_size),
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": p.zero_stage, "overlap_comm": False, "contiguous_gradients": False},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def build_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, dp_size: int, bf16: bool):
    import logging
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # instead of a warning on every rank
    import deepspeed

    # CMSAdamW is a plain torch optimizer; DeepSpeed warns about any it has not tested.
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        _skip_cpu_shm_build()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(cfg, dp_size, bf16),
        mpu=MegatronMPU(),
        dist_init_required=False,
    )
    return engine


def reshard_zero_optimizer(engine, ckpt, saved_dp: int) -> None:
    """Load a ZeRO-1/2 optimizer state saved with `saved_dp` data-parallel ranks into an engine
    running with another number (DeepSpeed refuses this itself).

    Each parameter group's state is one flat fp32 vector cut into equal partitions, the last
    padded at its end: join the saved partitions, drop that padding, pad for the new size and
    keep this rank's slice. That covers the fp32 master weights and every per-element optimizer
    state (Adam moments, CMS gradient accumulators); scalar state and group settings (the CMS
    period counters) are the same on every rank.
    """
    from pathlib import Path

    from megatron.core import parallel_state as ps

    zero = engine.optimizer
    tp = ps.get_tensor_model_parallel_rank()
    files = [Path(ckpt) / f"zero_pp_rank_{r}_mp_rank_{tp:02d}_optim_states.pt" for r in range(saved_dp)]
    saved = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in files]
    if any(any(p for p in paddings) for s in saved for paddings in s["param_alignment_paddings"]):
        raise ValueError(f"{ckpt}: its ZeRO partitions pad inside parameter groups; resume it with {saved_dp} data-parallel ranks")
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    base = zero.optimizer

    def reslice(parts: list[torch.Tensor], group: int, new_numel: int) -> torch.Tensor:
        flat = torch.cat([p.flatten() for p in parts])
        flat = flat[: flat.numel() - saved[-1]["group_paddings"][group]]
        flat = torch.cat([flat, flat.new_zeros(new_numel * dp - flat.numel())])
        return flat[rank * new_numel : (rank + 1) * new_numel]

    for g, fp32 in enumerate(zero.single_partition_of_fp32_groups):
        n = fp32.numel()
        with torch.no_grad():
            fp32.copy_(reslice([s["single_partition_of_fp32_groups"][g] for s in saved], g, n))
        param = base.param_groups[g]["params"][0]
        states = [s["base_optimizer_state"]["state"].get(g, {}) for s in saved]
        new_state = {}
        for key, value in states[0].items():
            if torch.is_tensor(value) and value.numel() > 1:
                new_state[key] = reslice([st[key] for st in states], g, n).clone().to(param.device)
            else:
                new_state[key] = value
        base.state[param] = new_state
        for key, value in saved[0]["base_optimizer_state"]["param_groups"][g].items():
            if key != "params":
                base.param_groups[g][key] = value
