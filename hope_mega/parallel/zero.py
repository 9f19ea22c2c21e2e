"""Data parallelism and ZeRO (stages 0-2) with DeepSpeed over megatron's data-parallel group.

DeepSpeed gets a torch optimizer instance (`CMSAdamW`), so ZeRO shards its moments and the CMS
gradient accumulators like any optimizer state, and no DeepSpeed optimizer has to be compiled.

DeepSpeed runs in fp32 whatever `train.dtype` says; bf16 is the trainer's autocast. DeepSpeed's
own bf16 mode would cast every parameter to bf16 (the recurrence's initial states, gates and
decays too, against spec §4), accumulate and all-reduce gradients in bf16, write bf16 weights
to the model-states file that conversion and `train.init_from` read, and, at ZeRO stage 0, wrap
the optimizer in its FP16_UnfusedOptimizer. In fp32 every parameter, gradient sum and
checkpointed weight is fp32, and the matmuls still run in bf16 under autocast.
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


# Elements per gradient reduce / all-gather bucket (DeepSpeed's default is 5e8: 2 GB of fp32 each).
GRADIENT_BUCKET_ELEMENTS = 50_000_000


def deepspeed_config(cfg: Config, dp_size: int) -> dict:
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
    # ZeRO-2 reduces each gradient bucket on its own stream while the backward goes on, into one
    # contiguous buffer (DeepSpeed's recommended setting; on the CPU the same code runs in order).
    overlap = p.zero_stage == 2
    return {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.global_batch // (t.micro_batch * dp_size),
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": p.zero_stage, "overlap_comm": overlap, "contiguous_gradients": overlap,
                              "reduce_bucket_size": GRADIENT_BUCKET_ELEMENTS,
                              "allgather_bucket_size": GRADIENT_BUCKET_ELEMENTS},
        "bf16": {"enabled": False},  # see the module docstring: bf16 is autocast, parameters stay fp32
        "communication_data_type": "fp32",
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def build_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, dp_size: int):
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
        config=deepspeed_config(cfg, dp_size),
        mpu=MegatronMPU(),
        dist_init_required=False,
    )
    return engine


def _zero_files(ckpt, dp: int, tp_rank: int) -> list:
    from pathlib import Path

    return [Path(ckpt) / f"zero_pp_rank_{r}_mp_rank_{tp_rank:02d}_optim_states.pt" for r in range(dp)]


def saved_zero_state(ckpt, dp: int, tp_rank: int) -> list[dict]:
    """The ZeRO-1/2 optimizer state of one TP rank's checkpoint files, whole: per parameter
    group, the fp32 master weights and every per-element optimizer state (Adam moments, CMS
    accumulators) as one flat vector in the group's own order, independent of the number of
    data-parallel ranks that wrote it; scalar state and group settings (step counts, CMS period
    counters) as saved.

    DeepSpeed (non-elastic ZeRO-1/2, no parameter alignment or round-robin reordering: our
    config) writes each rank's fp32 partition already without its padding, but its optimizer
    state with the padding at the end of the rank's partition (`groups_padding` of that rank).
    Files are read onto the CPU: DeepSpeed saved them as tensors of the saving rank's GPU.
    """
    saved = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
             for f in _zero_files(ckpt, dp, tp_rank)]
    for s in saved:
        if any(any(p for p in paddings) for paddings in s["param_alignment_paddings"]):
            raise ValueError(f"{ckpt}: its ZeRO partitions pad inside parameter groups (parameter_alignment), "
                             "which this re-cut does not read; resume it with its own data-parallel size")
    groups = []
    for g in range(len(saved[0]["single_partition_of_fp32_groups"])):
        fp32 = torch.cat([s["single_partition_of_fp32_groups"][g].flatten() for s in saved])
        states = [s["base_optimizer_state"]["state"].get(g, {}) for s in saved]
        group = {"fp32": fp32, "state": {}, "settings": {}}
        for key, value in states[0].items():
            if torch.is_tensor(value) and value.numel() > 1:
                parts = []
                for s, st in zip(saved, states):
                    lean = st[key].numel() - s["group_paddings"][g]
                    parts.append(st[key].flatten()[:lean])
                group["state"][key] = torch.cat(parts)
                if group["state"][key].numel() != fp32.numel():
                    raise ValueError(f"{ckpt}: optimizer state {key!r} of group {g} has {group['state'][key].numel()} "
                                     f"elements after removing padding, its weights {fp32.numel()}")
            else:
                group["state"][key] = value
        group["settings"] = {k: v for k, v in saved[0]["base_optimizer_state"]["param_groups"][g].items()
                             if k != "params"}
        groups.append(group)
    return groups


def reshard_zero_optimizer(engine, ckpt, saved_dp: int) -> None:
    """Load a ZeRO-1/2 optimizer state saved with `saved_dp` data-parallel ranks into an engine
    running with another number (DeepSpeed refuses this itself): the whole flat state of each
    group (`saved_zero_state`), padded at its end for the new size, and this rank's slice of it.
    """
    from megatron.core import parallel_state as ps

    zero = engine.optimizer
    groups = saved_zero_state(ckpt, saved_dp, ps.get_tensor_model_parallel_rank())
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    base = zero.optimizer

    def my_slice(flat: torch.Tensor, numel: int) -> torch.Tensor:
        if flat.numel() > numel * dp:
            raise ValueError(f"{ckpt}: a saved parameter group has {flat.numel()} elements, this model's "
                             f"{numel * dp} (padded); was it written for another model?")
        flat = torch.cat([flat, flat.new_zeros(numel * dp - flat.numel())])
        return flat[rank * numel : (rank + 1) * numel]

    for g, fp32 in enumerate(zero.single_partition_of_fp32_groups):
        n = fp32.numel()
        with torch.no_grad():
            fp32.copy_(my_slice(groups[g]["fp32"], n))
        param = base.param_groups[g]["params"][0]
        base.state[param] = {
            key: my_slice(value, n).clone().to(param.device) if torch.is_tensor(value) and value.numel() > 1 else value
            for key, value in groups[g]["state"].items()
        }
        base.param_groups[g].update(groups[g]["settings"])
