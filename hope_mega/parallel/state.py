"""Process groups for tensor x data parallelism, set up from torchrun's environment.

megatron-core's `parallel_state` owns the groups (its layers look them up there); this module is
the one place that creates and destroys them, so the trainer, the layers and the checkpoint code
agree on who is in which group. Rank layout is megatron's: TP ranks are adjacent (ranks 0..tp-1
form the first TP group), so a TP group stays inside one node.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .megatron_cpu import apply_megatron_cpu_adaptation


class ParallelSetupError(RuntimeError):
    """The launch does not fit the requested parallel layout."""


def init_distributed(tp: int, backend: str | None = None, timeout_s: float = 600.0) -> None:
    """Join the job started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and build the
    tensor- and data-parallel groups: world = tp x dp.

    backend: None picks `default_backend()`. Without a GPU megatron-core is adapted to the CPU
    first (hope_mega.parallel.megatron_cpu). timeout_s bounds every collective (NCCL's watchdog
    included): `train.collective_timeout_s`.
    """
    from megatron.core import parallel_state

    if "WORLD_SIZE" not in os.environ:  # a plain `python train.py`: a job of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if tp < 1:
        raise ParallelSetupError(f"parallel.tp must be >= 1, got {tp}")
    if world % tp:
        raise ParallelSetupError(
            f"world size {world} is not divisible by parallel.tp={tp}: the job must launch "
            f"tp x data-parallel processes (e.g. {tp * max(1, world // tp)})"
        )
    if tp > 1:
        # Sequence parallelism issues its all-gather before the GEMM that needs it; with one
        # hardware queue per device the kernels then run in issue order, so communication
        # overlaps compute as megatron-core intends. Read when the CUDA context is created: set
        # here, before `set_device`, for every launch path (sbatch, torchrun, benchmarks).
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = default_backend(cuda)
    if not cuda:
        apply_megatron_cpu_adaptation()
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    if parallel_state.model_parallel_is_initialized():
        raise ParallelSetupError("parallel groups are already initialised; call destroy() first")
    # Gloo twins of the groups are only for megatron's distributed optimizer, which DeepSpeed
    # replaces; without a GPU the main groups are gloo already.
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, create_gloo_process_groups=False)


def default_backend(cuda: bool) -> str:
    """The process group's backend per device type. With GPUs, CUDA tensors go over NCCL and CPU
    tensors over gloo: a group made with plain "nccl" has no backend for CPU tensors (and
    megatron's sub-groups inherit that map), so one host-side collective would end the run at its
    first step. Without GPUs everything is gloo."""
    return "cpu:gloo,cuda:nccl" if cuda else "cpu:gloo"


def is_initialized() -> bool:
    from megatron.core import parallel_state

    return parallel_state.model_parallel_is_initialized()


def tp_group() -> dist.ProcessGroup:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def tp_rank() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank()


def tp_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_world_size()


def dp_group() -> dist.ProcessGroup:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def dp_rank() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_rank()


def dp_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size()


def data_parallel_ranks() -> list[int]:
    """Global ranks of this rank's data-parallel group."""
    return dist.get_process_group_ranks(dp_group())


def destroy() -> None:
    """Tear down the megatron groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
