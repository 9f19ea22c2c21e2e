"""The real trainer, driven by a test (run as `torchrun ... trainer_probe.py MODE --config ... k=v`).

MODE:
  resave=DIR   set up (resuming from train.save_dir) and save at once into DIR: the state a resume
               restored, written back, so a test can compare it with the state it was read from
  nan_at=STEP  train, with the loss of data-parallel rank 1 made NaN at STEP (a bad batch), so a
               test can check that the skipped step moved nothing
  facts        train, then print one line `FACTS {json}` from rank 0: the process group's backend
               per device, megatron's groups' device types, parameter dtypes, the gradient
               communication dtype and the optimizer DeepSpeed steps
"""

import json
import sys

import torch
import torch.distributed as dist

from hope_mega.config import load_config
from hope_mega.train import Trainer


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
        code = trainer.run()
        if mode == "facts" and dist.get_rank() == 0:
            print("FACTS " + json.dumps(facts(trainer)), flush=True)
        return code
    finally:
        trainer.close()


if __name__ == "__main__":
    sys.exit(main())
