"""`bash .ci/setup --gpu`, the GPU-cluster install, on this CPU machine.

A cluster user's environment that already holds the node's torch is stood for by a hard-linked
copy of this checkout's environment (its CPU torch in the CUDA build's place: this machine has no
GPU, and HOPE_MEGA_CPU_TORCH_OK=1 lets the recipe accept it). The recipe must pin that torch,
install hope-mega around it from pyproject.toml's ranges, and leave the torch files untouched.
Resolving every range from scratch against the newest releases is `.ci/drift`'s job.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpu_setup_keeps_the_environments_torch_and_installs_hope_mega(tmp_path):
    env_dir = tmp_path / "node-env"
    run(["cp", "-al", sys.prefix, str(env_dir)])  # hard links: seconds, no extra disk
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "uninstall", "-q", "-y", "hope-mega"])
    torch_version = run([str(python), "-c", "import torch; print(torch.__version__)"]).strip()
    record = sorted((env_dir / "lib").glob("python3*/site-packages/torch-*.dist-info/RECORD"))
    assert len(record) == 1
    before = record[0].stat().st_mtime_ns

    env = {**os.environ, "VENV": str(env_dir), "HOPE_MEGA_CPU_TORCH_OK": "1"}
    out = run(["bash", str(ROOT / ".ci/setup"), "--gpu"], env=env, cwd=ROOT)
    assert f"environment ready in {env_dir} (GPU: torch {torch_version}, CUDA cpu)" in out
    after = sorted((env_dir / "lib").glob("python3*/site-packages/torch-*.dist-info/RECORD"))
    assert after == record and after[0].stat().st_mtime_ns == before  # neither replaced nor reinstalled
    out = run([str(python), "-c", "import hope_mega, hope_mega.train, importlib.metadata as m; "
               "print(hope_mega.__file__, m.version('hope-mega'))"], env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert out.startswith(str(ROOT / "hope_mega")) and out.split()[-1] == "0.1.0"


def test_gpu_setup_refuses_a_cpu_torch(tmp_path):
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.base_prefix + "/bin/python3"}
    env.pop("HOPE_MEGA_CPU_TORCH_OK", None)
    env.pop("TORCH_INDEX_URL", None)
    proc = subprocess.run(["bash", str(ROOT / ".ci/setup"), "--gpu"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert "setup --gpu: no torch in" in proc.stderr and "TORCH_INDEX_URL" in proc.stderr
