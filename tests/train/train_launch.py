"""Launch `hope-mega train` in real processes (torchrun for several) and read what they logged."""

import os
import subprocess
import sys
from pathlib import Path

from ports import free_port

from hope_mega.metrics import read_training_records
from hope_mega.process_tree import kill_tree  # noqa: F401  (the tests kill runs through this module)

CONFIG = Path(__file__).with_name("tiny.yaml")


PROBE = Path(__file__).with_name("trainer_probe.py")


def _trainer_args(data_root: Path, save_dir: Path, *overrides: str) -> list[str]:
    return ["--config", str(CONFIG), f"data.paths=[{data_root / 'data'}]", f"data.tokenizer={data_root / 'tok'}",
            f"train.save_dir={save_dir}", *overrides]


def train_command(nproc: int, data_root: Path, save_dir: Path, *overrides: str) -> list[str]:
    args = _trainer_args(data_root, save_dir, *overrides)
    if nproc == 1:
        return [sys.executable, "-m", "hope_mega.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "hope_mega.train", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}


def run_train(nproc, data_root, save_dir, *overrides, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_command(nproc, data_root, save_dir, *overrides), env=env(), timeout=timeout,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_probe(nproc, mode, data_root, save_dir, *overrides, timeout=600) -> subprocess.CompletedProcess:
    """The trainer driven by trainer_probe.py (MODE: resave=DIR, nan_at=STEP or facts) under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           str(PROBE), mode, *_trainer_args(data_root, save_dir, *overrides)]
    proc = subprocess.run(cmd, env=env(), timeout=timeout, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


metrics = read_training_records  # step -> the training record logged at that step
