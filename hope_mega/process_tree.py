"""Killing a launcher with everything it started, as a node failure or `kill -9` does.

torchrun starts its workers in sessions of their own, so killing its process group would leave
them running; the tree is read from /proc instead. Used by the tests and benchmarks that kill
runs on purpose to check what a crash leaves behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """pid and every process below it, parents first (Linux /proc)."""
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
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once: frozen first (SIGSTOP), so no process
    moves on (writes, saves, notices its parent's death) while the others die."""
    tree = descendants(pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in tree:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
