"""The device a training process runs on, and no silent CPU fallback on a GPU node.

A CPU-only torch installed on a GPU node (a plain `pip install torch` resolved to the wrong
build, a venv that does not see the cluster's CUDA torch) still imports and trains: in fp32, on
the CPU, a thousand times slower, and nothing says so. When the launch asked for GPUs, the
trainer and the SLURM preflight refuse to start instead.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from .config import ConfigError

# Variables through which a launcher says that this process was given GPUs.
_SLURM_GPU_VARS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


class DeviceError(ConfigError):
    """GPUs were asked for and this process cannot use them."""


def gpus_requested(env: Mapping[str, str] = os.environ) -> str | None:
    """Which variable asks for GPUs ("NAME=value"), or None when none does."""
    for name in _SLURM_GPU_VARS:
        value = env.get(name, "").strip()
        # "8", "h100:8", "0,1" (device ids): anything but empty or a zero count asks for GPUs.
        if value and value.rsplit(":", 1)[-1] != "0":
            return f"{name}={value}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def require_gpu_if_requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process trains on a GPU; raises DeviceError if GPUs were asked for and torch
    cannot see one."""
    if torch.cuda.is_available():
        return True
    asked = gpus_requested(env)
    if asked is not None:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"GPUs were requested ({asked}) but torch {torch.__version__} ({build}) sees none; it would "
            f"train in fp32 on the CPU. Install a CUDA torch (bash .ci/setup --gpu, README 'GPU clusters') "
            f"or run without GPUs requested"
        )
    return False


def pick_device(choice: str = "auto") -> torch.device:
    """`--device` of the commands that run a model: auto (a GPU when torch sees one), cpu or cuda."""
    if choice not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device: {choice!r} is not one of auto, cpu, cuda")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device cuda: torch {torch.__version__} sees no GPU")
    return torch.device(choice)
