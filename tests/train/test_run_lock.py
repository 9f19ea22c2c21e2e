"""One writer per save_dir: a second trainer is refused naming the holder, a kill -9'd run leaves no
stale lock, ranks whose torchrun was killed checkpoint and exit, a failed start leaves no folder."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hope_mega import checkpoint
from hope_mega.run_lock import LOCK_FILE, RunLockError, acquire

from train_launch import env, kill_tree, metrics, run_train, train_command

HOLD = "import sys, time; from hope_mega.run_lock import acquire; lock = acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def _holder(save_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(save_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockError) as err:
            acquire(tmp_path)
        message = str(err.value)
        assert "\n" not in message
        assert f"{tmp_path} is in use by another run (pid {proc.pid} on " in message
    finally:
        proc.kill()
        proc.wait()
    # The kernel dropped the lock with the process: no stale lock, and we now name ourselves.
    lock = acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


def test_release_removes_only_a_folder_this_run_made_and_left_unused(tmp_path):
    made = tmp_path / "new"
    made.mkdir()
    acquire(made, created_dir=True).release(remove_if_unused=True)
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    acquire(kept, created_dir=False).release(remove_if_unused=True)
    assert kept.is_dir()
    used = tmp_path / "used"
    used.mkdir()
    lock = acquire(used, created_dir=True)
    (used / "metrics.jsonl").write_text("{}\n")
    lock.release(remove_if_unused=True)
    assert (used / "metrics.jsonl").is_file()


def _wait_for_step(save_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        if (save_dir / "metrics.jsonl").exists() and max(metrics(save_dir), default=0) >= step:
            return
        assert proc.poll() is None, "the run ended early"
        assert time.time() < deadline, f"no step {step} after {timeout} s"
        time.sleep(0.05)


def test_second_trainer_is_refused_and_a_kill_9_leaves_no_stale_lock(tiny_data, tmp_path):
    first = subprocess.Popen(train_command(1, tiny_data, tmp_path, "train.steps=100000"), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_step(tmp_path, 1, first)
        second = subprocess.run(train_command(1, tiny_data, tmp_path, "train.steps=3"), env=env(),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if "error" in line]
        assert errors == [f"hope-mega train: error: train.save_dir: {tmp_path} is in use by another run "
                          f"(pid {first.pid} on {os.uname().nodename}, started " + errors[0].split(", started ")[1]]
        assert "Traceback" not in second.stderr
    finally:
        kill_tree(first.pid)
        first.wait()
    logged = max(metrics(tmp_path))
    out = run_train(1, tiny_data, tmp_path, f"train.steps={logged + 2}")
    assert f"finished {logged + 2} steps" in out.stdout


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ranks_checkpoint_and_exit_when_torchrun_is_killed(tiny_data, tmp_path):
    run = tmp_path / "run"
    log = open(tmp_path / "launch.log", "w")  # a file, not a pipe: nobody reads while the ranks run
    launcher = subprocess.Popen(train_command(2, tiny_data, run, "train.steps=100000"), env=env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ranks = []
    try:
        _wait_for_step(run, 2, launcher)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2
        launcher.kill()  # the launcher alone, as `kill -9 <torchrun pid>` does
        launcher.wait()
        deadline = time.time() + 120
        while any(_alive(r) for r in ranks):
            assert time.time() < deadline, "ranks still running 120 s after their launcher died"
            time.sleep(0.1)
    finally:
        kill_tree(launcher.pid)
        for r in ranks:
            kill_tree(r)
    log.close()
    output = (tmp_path / "launch.log").read_text()
    assert "launcher (pid" in output and "checkpointing and stopping" in output
    saved = checkpoint.list_checkpoints(run)
    assert saved, output[-3000:]
    stopped_at = json.loads((saved[0] / checkpoint.TRAINER_STATE).read_text())["step"]
    assert stopped_at >= 2
    out = run_train(2, tiny_data, run, f"train.steps={stopped_at + 1}")
    assert f"resumed from {saved[0]} at step {stopped_at}" in out.stdout


def test_failed_init_from_leaves_no_save_dir(tiny_data, tmp_path):
    save = tmp_path / "fresh" / "run"
    proc = subprocess.run(train_command(1, tiny_data, save, f"train.init_from={tmp_path / 'missing'}"),
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"hope-mega train: error: train.init_from: cannot start from {tmp_path / 'missing'}" in proc.stderr
    assert not save.exists()
