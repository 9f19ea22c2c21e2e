"""A real SLURM cluster on this machine: munged, slurmctld and two slurmd emulating nodes n1, n2.

Debian's 22.05 packages, run as root with everything (config, state, sockets, logs, pid files)
in one folder. Without cgroups in a container, processes are tracked by parentage
(proctrack/linuxproc) and not confined (task/none). Each slurmd gets a private /dev/shm (a mount
namespace of its own), as each node of a real cluster has: the data loader keeps per-node state
in shared memory under names that would collide between two "nodes" on one host.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "unshare")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = {
            **{f"slurmd {n}": root / f"slurmd-{n}.pid" for n in NODES},
            "slurmctld": root / "slurmctld.pid",
            "munged": root / "munge" / "munged.pid",
        }

    # --- commands ----------------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run([_which(args[0]), *args[1:]], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, ...); {} once gone."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        out = {}
        for field in proc.stdout.split():
            key, _, value = field.partition("=")
            out.setdefault(key, value)
        return out

    def wait_for(self, what: str, predicate, timeout: float, interval: float = 1.0):
        """Poll `predicate()` until it returns something truthy; fail with `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        root = self.root
        munge = root / "munge"
        munge.mkdir(mode=0o700)
        (munge / "munge.key").write_bytes(os.urandom(1024))
        os.chmod(munge / "munge.key", 0o600)
        for d in ("ctld", *NODES):
            (root / "spool" / d).mkdir(parents=True)
        (root / "log").mkdir()
        self.run("munged", f"--key-file={munge / 'munge.key'}", f"--socket={munge / 'sock'}",
                 f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'log'}",
                 f"--seed-file={munge / 'seed'}", "--force")
        host = socket.gethostname().split(".")[0]
        # Job ids feed the launcher's rendezvous port (20000 + id mod 20000); a random start keeps
        # two test clusters on one machine (concurrent test runs) from both running a job 2.
        first_job_id = random.randrange(1000, 19000)
        ctld_port, d_port = _free_port(), _free_port()
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs=2 RealMemory=2000 "
            f"State=UNKNOWN" for n in NODES
        )
        self.conf.write_text(f"""\
ClusterName=hopetest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / 'sock'}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / 'spool' / 'ctld'}
SlurmdSpoolDir={root / 'spool'}/%n
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
FirstJobId={first_job_id}
KillWait=10
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        self.run("slurmctld", "-i")
        for n in NODES:
            self.run("unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f"mount -t tmpfs -o size=512m tmpfs /dev/shm && exec {_which('slurmd')} -N {n}")
        self.wait_for("both nodes idle", lambda: self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
                      .stdout.split() == ["n1", "idle", "n2", "idle"], timeout=60)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by their pid files; never raises."""
        try:
            self.run("scancel", "--partition=debug", check=False, timeout=15)
            self.wait_for("the queue to empty", lambda: not self.run("squeue", "-h", check=False, timeout=15)
                          .stdout.strip(), timeout=30)
        except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as err:
            print(f"SLURM test cluster: cancelling jobs failed ({err}); stopping the daemons anyway")
        for pid_file in self.pid_files.values():
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            _terminate(pid)
        # Job processes outlive slurmd if a cancel did not finish; they carry this cluster's
        # SLURM_CONF, so they can be told from anything else on the machine.
        marker = f"SLURM_CONF={self.conf}".encode()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    os.kill(int(environ.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _terminate(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
