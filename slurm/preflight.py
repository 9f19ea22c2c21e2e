"""The launcher's preflight: run once on the batch node before any rank starts.

    python slurm/preflight.py --world-size N --gpus-per-node G CONFIG [key=value ...]

Runs the trainer's own checks (`hope_mega.train.preflight`: world size vs parallel.tp, global
batch vs micro batch x data-parallel size, dataset cards and tokenizer, save dir writable) with
the world size the job is about to launch, plus what would otherwise fail only after every rank
has started: GPUs allocated but a torch that cannot use them, too few GPUs visible on the node, a
checkpoint to resume from written with another parallel.tp. On success prints shell assignments for the launcher (PREFLIGHT_SAVE_DIR,
PREFLIGHT_STEPS) and exits 0; otherwise prints one line `preflight: error: ...` on stderr and
exits 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def check(config: str, overrides: list[str], world_size: int, gpus_per_node: int) -> dict:
    from hope_mega.config import load_config
    from hope_mega.train import PreflightError, preflight

    if world_size < 1 or gpus_per_node < 1:
        raise PreflightError(f"world size {world_size} with {gpus_per_node} processes per node: nothing to launch")
    cfg = load_config(config, overrides)
    preflight(cfg, world_size)
    from hope_mega.device import require_gpu_if_requested

    require_gpu_if_requested()  # a CPU-only torch on a GPU allocation would train on the CPU
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < gpus_per_node:
        raise PreflightError(
            f"GPUS_PER_NODE={gpus_per_node} but this node sees {torch.cuda.device_count()} GPUs "
            f"(request them with --gpus-per-node, or lower GPUS_PER_NODE)"
        )
    from hope_mega import checkpoint

    # The trainer's preflight has refused a checkpoint of another tp already; say here which
    # checkpoints a resume will skip, once, in the job's log.
    checkpoint.latest_valid(cfg.train.save_dir, log=lambda msg: print(msg, file=sys.stderr))
    return {"PREFLIGHT_SAVE_DIR": cfg.train.save_dir, "PREFLIGHT_STEPS": cfg.train.steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    from hope_mega.config import ConfigError

    try:
        resolved = check(args.config, args.overrides, args.world_size, args.gpus_per_node)
    except ConfigError as err:
        print(f"preflight: error: {err}", file=sys.stderr)
        return 2
    for key, value in resolved.items():
        print(f"{key}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
