"""slurm/train_760m.sbatch on a real two-node SLURM cluster (see cluster.py), CPUs only.

Two jobs of the same name are submitted at once with the tiny config over 2 nodes x 1 process
(gloo): A runs uninterrupted; B waits for A (--dependency=singleton), then is sent USR1 the way
Slurm does before a time limit (--signal=B:USR1@...), must checkpoint, requeue itself, resume from
that step as the same job and finish. After that resume, one of B's workers is killed with
SIGKILL on the second node (a GPU or node dying under it): the launcher must requeue the job again,
since that run had advanced the checkpoint. A and B have the same process layout, so B's losses
after both resumes must equal A's bit for bit.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_TESTS = REPO / "tests" / "train"
if str(TRAIN_TESTS) not in sys.path:
    sys.path.insert(0, str(TRAIN_TESTS))

from train_launch import CONFIG as TINY  # noqa: E402
from train_launch import metrics  # noqa: E402

STEPS = 40  # enough steps left after the resume that the crash lands mid-run, not after the end
JOB_TIMEOUT = 300  # one tiny job takes ~60 s here; generous for a loaded machine


def submit(cluster, spec, save_dir, log, *overrides, extra_env=None):
    env = {
        **cluster.env, "CONFIG": str(TINY), "DATA": str(spec["data"]), "TOKENIZER": str(spec["tok"]),
        "SAVE_DIR": str(save_dir), "GPUS_PER_NODE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={spec['job']}", "--nodes=2", "--gpus-per-node=0",
         "--time=30:00", f"--output={log}", str(REPO / "slurm" / "train_760m.sbatch"), *overrides],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait(cluster, what, predicate, timeout, log):
    try:
        return cluster.wait_for(what, predicate, timeout, interval=0.5)
    except TimeoutError as err:
        text = log.read_text() if log.exists() else "(no log yet)"
        raise AssertionError(f"{err}\n--- {log.name} (tail) ---\n{text[-4000:]}") from None


def release(cluster, job_id, log):
    """Start a requeued job now. Slurm holds it back for two minutes (Reason=BeginTime); a real
    user waits. Not before the nodes are idle and the clock has moved on: slurmd revokes the
    previous run's credential with a one-second resolution and refuses (and Slurm then fails) a
    new launch stamped within the same second."""
    wait(cluster, "the nodes to be idle again", lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False)
         .stdout.split() == ["idle", "idle"], 60, log)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def kill_worker(cluster, job_id, node_id):
    """SIGKILL the trainer process of `job_id` on node `node_id`; returns its pid."""
    want = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_NODEID={node_id}".encode(), f"SLURM_CONF={cluster.conf}".encode()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if b"hope_mega.train" in cmd and b"-m" in cmd and want <= env:
            os.kill(int(proc.name), signal.SIGKILL)
            return int(proc.name)
    raise AssertionError(f"no trainer process of job {job_id} on node {node_id}")


def finished(cluster, job_id):
    state = cluster.job(job_id).get("JobState")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None


@pytest.fixture(scope="module")
def runs(cluster, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    name = {"job": "hope-slurm-test", "data": tiny_data / "data", "tok": tiny_data / "tok"}
    a_dir, b_dir = root / "a", root / "b"
    a_log, b_log = root / "a.log", root / "b.log"
    t0 = time.monotonic()
    a = submit(cluster, name, a_dir, a_log, f"train.steps={STEPS}", "train.save_every=1")
    b = submit(cluster, name, b_dir, b_log, f"train.steps={STEPS}", "train.save_every=1")
    wait(cluster, f"job {a} to run", lambda: cluster.job(a).get("JobState") == "RUNNING", 60, a_log)
    b_while_a_runs = cluster.job(b)
    a_state = wait(cluster, f"job {a} to finish", lambda: finished(cluster, a), JOB_TIMEOUT, a_log)

    # B starts once A is gone; stop it once a few checkpoints exist and some steps remain.
    wait(cluster, "job B's step-3 checkpoint", lambda: (b_dir / "step_00000003" / "manifest.json").exists(),
         JOB_TIMEOUT, b_log)
    b_before_signal = cluster.job(b)
    cluster.run("scancel", "--signal=USR1", "--batch", b)
    requeued = wait(cluster, f"job {b} to requeue",
                    lambda: (j := cluster.job(b)).get("JobState") == "PENDING" and j.get("Restarts") == "1" and j,
                    120, b_log)
    # Slurm holds a requeued job back for two minutes (Reason=BeginTime); a real user waits, the
    # test starts it early. Not before the nodes are idle and the clock has moved on: slurmd
    # revokes the first run's credential with a one-second resolution and refuses (and Slurm then
    # fails) a new launch stamped within the same second.
    release(cluster, b, b_log)
    k = int(wait(cluster, "the resumed run", lambda: re.search(r"resumed from \S+ at step (\d+)", b_log.read_text()),
                 JOB_TIMEOUT, b_log).group(1))
    wait(cluster, f"job B's step-{k + 1} checkpoint",
         lambda: (b_dir / f"step_{k + 1:08d}" / "manifest.json").exists(), JOB_TIMEOUT, b_log)
    killed = kill_worker(cluster, b, node_id=1)
    crashed = wait(cluster, f"job {b} to requeue after the crash",
                   lambda: (j := cluster.job(b)).get("JobState") == "PENDING" and j.get("Restarts") == "2" and j,
                   120, b_log)
    release(cluster, b, b_log)
    b_state = wait(cluster, f"job {b} to finish after the requeues", lambda: finished(cluster, b), JOB_TIMEOUT, b_log)
    print(f"SLURM jobs A={a}, B={b}: {time.monotonic() - t0:.0f} s")
    return {
        "a": a, "b": b, "a_dir": a_dir, "b_dir": b_dir, "a_log": a_log.read_text(), "b_log": b_log.read_text(),
        "a_state": a_state, "b_state": b_state, "a_job": cluster.job(a), "b_job": cluster.job(b),
        "b_while_a_runs": b_while_a_runs, "b_before_signal": b_before_signal, "requeued": requeued,
        "killed": killed, "crashed": crashed,
    }


def test_preflight_error_fails_the_job_at_once_and_is_not_requeued(cluster, tiny_data, tmp_path):
    name = {"job": "hope-slurm-preflight", "data": tiny_data / "data", "tok": tiny_data / "tok"}
    log = tmp_path / "job.log"
    start = time.monotonic()
    job = submit(cluster, name, tmp_path / "save", log, "train.global_batch=3")
    state = wait(cluster, f"job {job} to end", lambda: finished(cluster, job), 120, log)
    took = time.monotonic() - start
    info, text = cluster.job(job), log.read_text()
    assert state == "FAILED" and info["ExitCode"] == "2:0" and info["Restarts"] == "0", (info, text)
    assert re.search(r"\npreflight: error: train\.global_batch: 3 is not divisible by "
                     r"train\.micro_batch x data-parallel size = 1 x 2\n", text), text
    assert "not starting the job and not requeueing it" in text
    assert "torchrun" not in text and "node n1" not in text  # no training step was launched
    assert took < 90, f"a misconfigured job took {took:.0f} s to fail"


def test_job_runs_on_both_nodes_and_writes_checkpoints_and_metrics(runs):
    log, info, save = runs["a_log"], runs["a_job"], runs["a_dir"]
    assert runs["a_state"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "0", (info, log)
    assert info["NodeList"] == "n[1-2]"
    assert "node n1 (node id 0, address 127.0.0.1): torchrun with 1 processes" in log
    assert "node n2 (node id 1, address 127.0.0.1): torchrun with 1 processes" in log
    # Workers reach rank 0's node at its NodeAddr, not at a host name the other nodes may not resolve.
    assert re.search(r"process group: 2 ranks \(.*\), master 127\.0\.0\.1:\d+", log), log[-3000:]
    assert f"finished {STEPS} steps" in log and "training complete" in log
    assert sorted(metrics(save)) == list(range(1, STEPS + 1))
    final = save / f"step_{STEPS:08d}"
    manifest = json.loads((final / "manifest.json").read_text())
    files = json.dumps(manifest)
    assert "rank_00000.pt" in files and "rank_00001.pt" in files, manifest  # both ranks wrote state
    assert json.loads((final / "trainer_state.json").read_text())["world_size"] == 2


def test_jobs_of_one_name_never_overlap(runs):
    during = runs["b_while_a_runs"]
    assert during["JobState"] == "PENDING" and during["Reason"] == "Dependency", during
    assert "singleton" in during.get("Dependency", ""), during


def test_usr1_checkpoints_requeues_and_resumes_as_the_same_job(runs):
    log, info = runs["b_log"], runs["b_job"]
    assert runs["b_state"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log)
    # Requeued, pending as the same job (its Reason is BeginTime or, for a moment, None).
    assert runs["requeued"]["Restarts"] == "1" and runs["requeued"]["JobState"] == "PENDING", runs["requeued"]
    stopped = re.search(r"stopped by signal 10 at step (\d+); checkpoint saved", log)
    assert stopped, log
    k = int(stopped.group(1))
    assert 3 <= k < STEPS
    assert f"stopped on USR1 (preemption or time limit); requeueing job {runs['b']} (restart 1)" in log
    assert f"job {runs['b']} restart 1 on n[1-2]" in log
    assert f"newest checkpoint: step {k} of {STEPS}" in log
    assert f"resumed from {runs['b_dir'] / f'step_{k:08d}'} at step {k} " in log
    assert log.count("node n2 (node id 1,") == 3  # all three runs used both nodes
    # Steps logged: 1..m without a repeat across the USR1 stop (m >= the crash run's last
    # checkpoint k2; steps after k2 are lost to the crash), then k2+1..STEPS.
    logged = [int(n) for n in re.findall(r"step (\d+) \| loss", log)]
    k2 = [int(n) for n in re.findall(r"resumed from \S+ at step (\d+)", log)][-1]
    restart = next((i for i in range(1, len(logged)) if logged[i] <= logged[i - 1]), len(logged))
    m = logged[restart - 1] if restart < len(logged) else k2  # the last step logged before the crash
    assert logged == list(range(1, m + 1)) + list(range(k2 + 1, STEPS + 1)), (logged, k2)
    assert sorted(metrics(runs["b_dir"])) == list(range(1, STEPS + 1))


def test_a_crash_after_progress_requeues_and_resumes(runs):
    log, info = runs["b_log"], runs["b_job"]
    assert info["Restarts"] == "2" and runs["crashed"]["JobState"] == "PENDING", (info, runs["crashed"])
    resumes = [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(resumes) == 2 and resumes[1] > resumes[0], resumes
    crash = re.search(r"failed with exit code (\d+) after advancing from step (\d+) to (\d+); requeueing job "
                      + runs["b"] + r" \(restart 2\)", log)
    assert crash and crash.group(1) != "0", log
    assert int(crash.group(2)) == resumes[0] and int(crash.group(3)) == resumes[1], (crash.groups(), resumes)
    assert f"job {runs['b']} restart 2 on n[1-2]" in log and "training complete" in log


def test_resumed_run_matches_the_uninterrupted_run_exactly(runs):
    a, b = metrics(runs["a_dir"]), metrics(runs["b_dir"])
    for step in range(1, STEPS + 1):
        assert b[step]["data_digest"] == a[step]["data_digest"], f"step {step}: different samples"
        # Same layout (2 nodes x 1 process, gloo), same data order: bitwise equal, not just close.
        assert b[step]["loss"] == a[step]["loss"], (step, a[step]["loss"], b[step]["loss"])
    assert b[STEPS]["loss"] < b[1]["loss"]


def test_prep_array_job_writes_one_dataset_per_task(cluster, tiny_data, tmp_path):
    """slurm/prep.sbatch as a 2-task array over 3 input files of different sizes."""
    docs = (tiny_data / "corpus.jsonl").read_text().splitlines()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, part in {"a.jsonl": docs[:90], "b.jsonl": docs[90:125], "c.jsonl": docs[125:]}.items():
        (inputs / name).write_text("\n".join(part) + "\n")
    out = tmp_path / "mds"
    env = {**cluster.env, "INPUT": str(inputs), "TOKENIZER": str(tiny_data / "tok"), "OUT": str(out),
           "SEQ_LEN": "32", "SPLIT_VAL": "0.02", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--time=30:00",
         f"--output={tmp_path}/prep-%a.log", str(REPO / "slurm" / "prep.sbatch"), "--quiet"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    log = tmp_path / "prep-0.log"
    wait(cluster, f"array job {job}", lambda: not cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip(),
         JOB_TIMEOUT, log)
    cards = [json.loads((out / f"part-{i:05d}" / "dataset_card.json").read_text()) for i in (0, 1)]
    # Largest first to the emptier task: a (90 docs) alone on task 0; b and c together on task 1.
    assert [sorted(Path(f["path"]).name for f in c["inputs"]) for c in cards] == [["a.jsonl"], ["b.jsonl", "c.jsonl"]]
    assert [c["documents_written"] for c in cards] == [90, 60]
    assert {c["tokenizer_hash"] for c in cards} == {json.loads((tiny_data / "data" / "dataset_card.json")
                                                               .read_text())["tokenizer_hash"]}
    assert "task 1 of 2: 2 files" in (tmp_path / "prep-1.log").read_text()
