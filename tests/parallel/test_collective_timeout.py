"""train.collective_timeout_s reaches the process group: a rank that does not arrive fails the
others after the timeout instead of hanging them (NCCL's watchdog reads the same setting)."""

import subprocess
import sys

from ports import free_port

RANK = """
import os, sys, time
import torch.distributed as dist
from hope_mega.parallel import state as ps
ps.init_distributed(1, timeout_s=float(sys.argv[1]))
released = sys.argv[2]
if dist.get_rank() == 1:
    # The slow rank: never reaches the barrier. It leaves once rank 0 is done, or after 20 s,
    # past the test's upper bound, so that its exit cannot pass for a timeout.
    deadline = time.time() + 20
    while not os.path.exists(released) and time.time() < deadline:
        time.sleep(0.05)
    os._exit(0)
start = time.time()
try:
    dist.barrier()
except Exception as err:
    print(f"TIMED OUT after {time.time() - start:.1f} s: {type(err).__name__}", flush=True)
else:
    print("NO TIMEOUT", flush=True)
open(released, "w").close()
os._exit(0)
"""


def test_a_missing_rank_fails_the_collective_after_the_timeout(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script), "3", str(tmp_path / "released")],
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    out = proc.stdout + proc.stderr
    line = next((l for l in out.splitlines() if "TIMED OUT after" in l), None)
    assert line is not None, out[-3000:]
    waited = float(line.split("after ")[1].split(" s")[0])
    assert 2.5 <= waited <= 15, line  # the 3 s setting, not gloo's or NCCL's 10-30 min default
