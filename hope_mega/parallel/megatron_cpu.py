"""Let megatron-core's tensor-parallel layers run on a CPU-only machine (tests, development).

megatron-core allocates its communication buffers on `torch.cuda.current_device()`, keeps its RNG
tracker on the CUDA generator and calls `torch.cuda.synchronize()`; no flag turns that off. On a
machine without a GPU those calls can only raise, so redirecting them changes nothing that could
otherwise work: buffers go to the CPU, the tracker's states are CPU generator states, and
synchronising is a no-op (CPU collectives complete before they return). With a GPU present this
module does nothing.
"""

from __future__ import annotations

import torch

_applied = False


def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


def _cpu_synchronize(device=None) -> None:
    return None


def _get_cpu_rng_state(device=None, clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, device=None, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _tracker_add_cpu(self, name: str, seed: int) -> None:
    # Same contract as CudaRNGStatesTracker.add (distinct seeds, distinct names); the state it
    # records is a CPU generator state seeded with `seed`, and the caller's state is restored.
    self._is_initialized = True
    if seed in self.seeds_:
        raise Exception(f"seed {seed} already exists")
    if name in self.states_:
        raise Exception(f"rng state {name} already exists")
    self.seeds_.add(seed)
    outer = torch.get_rng_state()
    torch.manual_seed(seed)
    self.states_[name] = torch.get_rng_state()
    torch.set_rng_state(outer)


def apply_megatron_cpu_adaptation() -> bool:
    """Redirect megatron-core's CUDA-only calls to the CPU when no GPU is present.

    Idempotent. Returns True when the adaptation is (now or already) active, False when CUDA is
    available and nothing was changed.
    """
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = _cpu_current_device
    torch.cuda.synchronize = _cpu_synchronize
    mrandom._get_cuda_rng_state = _get_cpu_rng_state
    mrandom._set_cuda_rng_state = _set_cpu_rng_state
    mrandom.CudaRNGStatesTracker.add = _tracker_add_cpu
    _applied = True
    return True
