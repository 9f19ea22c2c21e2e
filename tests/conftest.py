import os

# Many small ops on a 2-core machine: OpenMP threads that spin while other processes (the
# multi-process tests' ranks, the other test workers) hold the cores slow tiny kernels down by
# 10-40x. One thread per process; child processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
