"""Checkpoints that are atomic, self-describing and resumable.

Layout: `save_dir/step_00000100/` holds DeepSpeed's model and (ZeRO-sharded) optimizer files,
which include the CMS accumulators and moments, one `rank_XXXXX.pt` per rank (RNG states),
`trainer_state.json` (step, tokens seen, data-loader state, resolved config, format version)
and, written last, `manifest.json` listing every file with its size.

Atomicity: everything is written under `save_dir/.partial-step_N/`, and only once every rank has
finished and the manifest is on disk is the folder renamed to `step_N` (a rename is atomic on
POSIX filesystems). A kill at any moment leaves either the previous checkpoints untouched or a
`.partial-*` folder that is never read. On resume the newest `step_*` whose manifest matches the
files on disk is used; a folder cut short (a file missing or shorter than listed) is skipped with
a message.

Slow filesystem work stays off the collective path where it can: every rank flushes what it
wrote itself (in parallel, on its own node), rank 0 then only records sizes and renames, and
old checkpoints and stale partial folders are deleted in the background while training goes on.
The barriers in between wait under `train.collective_timeout_s`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
PREFIX = "step_"
PARTIAL = ".partial-"


class CheckpointError(RuntimeError):
    pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_cleanup: threading.Thread | None = None


def _delete_in_background(paths: list[Path]) -> None:
    """Remove finished-with folders without holding up the ranks waiting at the next collective.
    One deletion at a time; `wait_for_cleanup` (and interpreter exit) waits for it."""
    global _cleanup
    wait_for_cleanup()
    if paths:
        _cleanup = threading.Thread(target=lambda: [shutil.rmtree(p, ignore_errors=True) for p in paths],
                                    name="checkpoint-cleanup")
        _cleanup.start()


def wait_for_cleanup() -> None:
    global _cleanup
    if _cleanup is not None:
        _cleanup.join()
        _cleanup = None


def tag_for(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def problem_with(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be used, or None if its manifest matches the files on disk."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for rel, size in files.items():
        path = ckpt / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != size:
            return f"file {rel} has {path.stat().st_size} bytes, the manifest says {size}"
    return None


def list_checkpoints(save_dir: str | Path) -> list[Path]:
    """`step_*` folders, newest first."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def latest_valid(save_dir: str | Path, log: Callable[[str], None] = print) -> Path | None:
    for ckpt in list_checkpoints(save_dir):
        problem = problem_with(ckpt)
        if problem is None:
            return ckpt
        log(f"ignoring checkpoint {ckpt}: {problem}")
    return None


def save(
    engine,
    save_dir: str | Path,
    step: int,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = Path(save_dir)
    rank = dist.get_rank()
    tag = tag_for(step)
    partial = root / f"{PARTIAL}{tag}"
    final = root / tag
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        wait_for_cleanup()  # a folder of this step from an earlier, killed save may be being deleted
        if partial.exists():
            shutil.rmtree(partial)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=partial.name, save_latest=False)
    torch.save(rank_state, partial / f"rank_{rank:05d}.pt")
    # Each rank flushes its node's writes itself: on a shared filesystem only the writing client
    # can make its cached writes durable, and the ranks do it in parallel.
    os.sync()
    dist.barrier()
    if rank == 0:
        _write_json(partial / TRAINER_STATE, {**trainer_state, "format_version": FORMAT_VERSION, "step": step})
        files = {str(path.relative_to(partial)): path.stat().st_size
                 for path in sorted(partial.rglob("*")) if path.is_file()}
        _write_json(partial / MANIFEST, {"format_version": FORMAT_VERSION, "files": files})
        if final.exists():  # a re-save of the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_path(root)
        stale = [p for p in root.glob(f"{PARTIAL}*") if p != partial]  # left by saves that were killed
        _delete_in_background(list_checkpoints(root)[keep_last:] + stale)
    dist.barrier()
    return final


def load(engine, ckpt: Path) -> dict[str, Any]:
    """Collective: restores the engine (model, optimizer, CMS state) and returns the trainer state,
    with this rank's saved state under "rank_state" when the world size is unchanged."""
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: checkpoint format version {state.get('format_version')!r}, this hope-mega reads {FORMAT_VERSION}"
        )
    saved_dp = state["world_size"] // state["config"]["parallel"]["tp"]
    dp_changed = saved_dp != engine.dp_world_size
    if dp_changed and not engine.zero_optimization():
        # Without ZeRO the optimizer state sits whole in the model-states file: nothing to re-cut.
        dp_changed = False
    load_path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=not dp_changed,
        load_lr_scheduler_states=False, load_module_only=dp_changed,
    )
    if load_path is None:
        raise CheckpointError(f"{ckpt}: DeepSpeed found no model states to load")
    if dp_changed:
        from .parallel.zero import reshard_zero_optimizer

        reshard_zero_optimizer(engine, ckpt, saved_dp)
    rank_file = ckpt / f"rank_{dist.get_rank():05d}.pt"
    if rank_file.is_file() and state.get("world_size") == dist.get_world_size():
        state["rank_state"] = torch.load(rank_file, weights_only=False)
    return state
