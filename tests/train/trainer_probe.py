"""The real trainer, driven by a test (run as `torchrun ... trainer_probe.py MODE --config ... k=v`).

MODE:
  resave=DIR   set up (resuming from train.save_dir) and save at once into DIR: the state a resume
               restored, written back, so a test can compare it with the state it was read from
  nan_at=STEP  train, with the loss of data-parallel rank 1 made NaN at STEP (a bad batch), so a
               test can check that the skipped step moved nothing
  host_reads   train with every read of a tensor's values by the host (item, tolist, nonzero,
               bool/int/float of a tensor, ...) counted inside `train_step`, by call site, and
               write them to `train.save_dir/host_reads.rankR.json`
  facts        train, then print one line `FACTS {json}` from rank 0: the process group's backend
               per device, megatron's groups' device types, parameter dtypes, the gradient
               communication dtype, the optimizer DeepSpeed steps, its ZeRO overlap settings and
               CUDA_DEVICE_MAX_CONNECTIONS
"""

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from hope_mega.config import load_config
from hope_mega.train import Trainer


# The ops that make the host wait for a GPU tensor's values (what torch.cuda.set_sync_debug_mode
# reports on a GPU). On the CPU nothing waits, so they are counted instead.
HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique,
}


class CountHostReads(TorchFunctionMode):
    """Counts host reads by call site: `hope_mega/<file>:<function>` of the innermost project
    frame, or `<package>:<function>` of the innermost library frame outside torch."""

    def __init__(self):
        super().__init__()
        self.sites: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.sites[self._site()] += 1
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _site() -> str:
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if "/hope_mega/" in path:
                return "hope_mega/" + path.split("/hope_mega/", 1)[1] + ":" + frame.f_code.co_name
            if "/site-packages/" in path and "/site-packages/torch/" not in path:
                return path.split("/site-packages/", 1)[1].split("/")[0] + ":" + frame.f_code.co_name
            frame = frame.f_back
        return "other"


def facts(trainer: Trainer) -> dict:
    from megatron.core import parallel_state as mps

    groups = {"dp": mps.get_data_parallel_group(), "tp": mps.get_tensor_model_parallel_group()}
    engine = trainer.engine
    return {
        "backend": dist.get_backend(),
        "group_device_types": {k: sorted(str(d) for d in g._device_types) for k, g in groups.items()},
        "default_device_types": sorted(str(d) for d in dist.distributed_c10d._get_default_group()._device_types),
        "param_dtypes": {n: str(p.dtype) for n, p in trainer.model.named_parameters()},
        "communication_dtype": str(engine.communication_data_type),
        "optimizer": type(engine.optimizer).__name__,
        "base_optimizer": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
        "overlap_comm": engine.zero_overlap_comm(),
        "contiguous_gradients": engine.zero_contiguous_gradients(),
        "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
    }


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    config, overrides = args[args.index("--config") + 1], [a for a in args if "=" in a]
    trainer = Trainer(load_config(config, overrides))
    try:
        trainer.setup()
        if mode.startswith("resave="):
            trainer.cfg.train.save_dir = mode.split("=", 1)[1]
            trainer.save()
            return 0
        if mode.startswith("nan_at="):
            bad_step = int(mode.split("=", 1)[1])
            loss = trainer._loss

            def poisoned(batch):
                value = loss(batch)
                if trainer.step + 1 == bad_step and trainer.dp_rank == 1:
                    return value * float("nan")
                return value

            trainer._loss = poisoned
        reads = CountHostReads()
        if mode == "host_reads":
            step = trainer.train_step

            def watched():
                with reads:
                    return step()

            trainer.train_step = watched
        code = trainer.run()
        if mode == "host_reads":  # a file per rank: lines the ranks print at once can interleave
            report = {"rank": dist.get_rank(), "steps": trainer.step, "sites": dict(reads.sites)}
            (Path(trainer.cfg.train.save_dir) / f"host_reads.rank{dist.get_rank()}.json").write_text(json.dumps(report))
        if mode == "facts" and dist.get_rank() == 0:
            print("FACTS " + json.dumps(facts(trainer)), flush=True)
        return code
    finally:
        trainer.close()


if __name__ == "__main__":
    sys.exit(main())
