"""Fixtures for the SLURM launcher tests: the tiny dataset of tests/train, and a real cluster."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster import Cluster, missing_binaries

_spec = importlib.util.spec_from_file_location("_train_conftest", Path(__file__).parents[1] / "train" / "conftest.py")
_train_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train_conftest)
tiny_data = _train_conftest.tiny_data


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    missing = missing_binaries()
    reason = None
    if missing:
        reason = f"SLURM test cluster needs {', '.join(missing)} (Debian: bash .ci/slurm-packages)"
    elif os.geteuid() != 0:
        reason = "SLURM test cluster runs slurmd as root (it must start jobs and mount a per-node /dev/shm)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run this test")
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(c.stop)  # registered before anything starts, so a failed start is cleaned up too
    c.start()
    return c
