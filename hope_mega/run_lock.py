"""One writer per `train.save_dir`, and no rank outliving its launcher.

A run holds an exclusive `flock` on `save_dir/.run.lock` for its whole life. The kernel drops the
lock when the holding process dies, however it dies, so a crashed or kill -9'd run never leaves a
stale lock behind; the file itself stays (unlinking a lock file lets two later runs lock two
different inodes) and holds a line naming the last holder, which a refused run prints.

Ranks started by torchrun watch their parent: when the launcher is gone (kill -9 of torchrun
leaves its workers running, re-parented), each rank sends itself SIGTERM, which the trainer
honours as a preemption (checkpoint at the end of the step, exit); if that has not ended the
process within `grace_s`, it exits hard.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

LOCK_FILE = ".run.lock"


class RunLockError(RuntimeError):
    """The save_dir is held by another live run."""


class RunLock:
    """The held lock; `release()` (or process exit) gives it up."""

    def __init__(self, save_dir: Path, handle, created_dir: bool):
        self.save_dir, self._handle, self.created_dir = save_dir, handle, created_dir

    def release(self, remove_if_unused: bool = False) -> None:
        """Give the lock up. With `remove_if_unused`, a save_dir this run created and left with
        nothing but the lock file is removed, so a run that failed at start leaves no empty folder."""
        if self._handle is None:
            return
        lock_path = self.save_dir / LOCK_FILE
        if remove_if_unused and self.created_dir:
            try:
                if {p.name for p in self.save_dir.iterdir()} <= {LOCK_FILE}:
                    lock_path.unlink()  # still held: no other run can be between open and flock here
                    self.save_dir.rmdir()
            except OSError:
                pass  # something appeared meanwhile: keep it
        self._handle.close()
        self._handle = None


def describe_holder() -> str:
    return (f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}: "
            f"{' '.join(sys.argv)[:300]}")


def acquire(save_dir: str | os.PathLike, created_dir: bool = False) -> RunLock:
    """Take the exclusive lock on `save_dir` (which must exist) or raise RunLockError naming the
    holder. `created_dir` says whether this run made the folder (for `release(remove_if_unused)`)."""
    save_dir = Path(save_dir)
    path = save_dir / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise RunLockError(
            f"train.save_dir: {save_dir} is in use by another run ({holder}); stop that run or "
            f"choose another train.save_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(describe_holder() + "\n")
    handle.flush()
    return RunLock(save_dir, handle, created_dir)


def hold_for_job(save_dir: str | os.PathLike, existed_at_launch: bool) -> RunLock | None:
    """Call on every rank once the default process group exists: global rank 0 takes the lock,
    and every rank raises the same RunLockError if it is held elsewhere. Returns the lock on rank
    0, None elsewhere. `existed_at_launch`: whether this rank found save_dir before making it."""
    import torch
    import torch.distributed as dist

    lock, message = None, ""
    # The folder predates this launch only if every rank found it (each looked before creating it).
    existed = torch.tensor([1 if existed_at_launch else 0], dtype=torch.int64)
    dist.all_reduce(existed, op=dist.ReduceOp.MIN)
    if dist.get_rank() == 0:
        try:
            lock = acquire(save_dir, created_dir=not existed.item())
        except RunLockError as err:
            message = str(err)
    encoded = torch.zeros(2048, dtype=torch.uint8)
    raw = message.encode()[:2048]
    encoded[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(encoded, src=0)
    message = bytes(encoded.tolist()).rstrip(b"\0").decode(errors="replace")
    if message:
        raise RunLockError(message)
    return lock


def watch_launcher(grace_s: float = 600.0, poll_s: float = 1.0, log=print) -> threading.Thread | None:
    """Under torchrun, stop this process when its launcher dies (see the module docstring).
    Returns the watching thread, or None when not launched by torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None  # a lone process: its parent is a shell, which may exit by design (nohup)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log(f"rank {os.environ.get('RANK', '?')}: launcher (pid {parent}) exited; checkpointing "
            f"and stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log(f"rank {os.environ.get('RANK', '?')}: still running {grace_s:.0f} s after the launcher "
            f"exited; exiting now")
        os._exit(1)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
