"""One data-parallel rank for the loader tests, run as its own process (like torchrun would).

usage: loader_rank.py CONFIG_JSON RANK OUT_NPZ
Reads micro batches, saves them (and the loader state after `save_state_after` micro batches).
"""

import json
import os
import sys

import numpy as np


def main() -> None:
    cfg = json.loads(open(sys.argv[1]).read())
    rank, out = int(sys.argv[2]), sys.argv[3]
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(cfg["dp_size"]), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(cfg["dp_size"]), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(cfg["port"]))
    import torch.distributed as dist

    from hope_mega.data.loader import build_train_loader

    if cfg["dp_size"] > 1:
        dist.init_process_group("gloo", rank=rank, world_size=cfg["dp_size"])
    loader = build_train_loader(cfg["paths"], cfg.get("weights"), cfg["seq_len"],
                                cfg["micro_batch"], cfg["global_batch"], rank, cfg["dp_size"],
                                cfg["seed"], num_workers=cfg["num_workers"])
    if cfg.get("resume"):
        loader.load_state_dict(json.loads(open(cfg["resume"]).read()))
    batches, state = [], None
    for batch in loader:
        assert batch.dtype.is_floating_point is False and batch.dtype.itemsize == 8
        batches.append(batch.numpy())
        if len(batches) == cfg.get("save_state_after"):
            state = loader.state_dict()
    after_epoch = loader.state_dict()
    np.savez(out, batches=np.stack(batches), length=len(loader))
    with open(out + ".json", "w") as f:
        json.dump({"state": state, "after_epoch": after_epoch}, f)
    if cfg["dp_size"] > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
