"""Launch `hope-mega train` in real processes (torchrun for several) and read what they logged."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ports import free_port

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


def metrics(save_dir: Path) -> dict[int, dict]:
    """step -> the training record logged at that step."""
    out = {}
    for line in (save_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its workers in sessions
    of their own, so killing its process group would leave them running)."""
    import signal

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGSTOP)  # freeze first, so no process moves on while others die
        except ProcessLookupError:
            pass
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
