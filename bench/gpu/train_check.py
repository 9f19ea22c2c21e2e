"""Whole-model training through the real trainer, for bench/gpu/run.py: throughput, MFU, peak
memory, and a save + resume that must continue bitwise.

    python bench/gpu/train_check.py prep --out DIR --seq-len 4096 [--chapters 300 --vocab 512]
  a dataset for the runs below: the first chapters of the built-in KJV corpus, a SentencePiece
  tokenizer and MDS rows of --seq-len tokens (hope-mega tokenizer train + hope-mega prep).

    python bench/gpu/train_check.py train --config hope-760m --data DIR --work DIR \
        --seq-len 4096 --micro-batch 8 --steps 4 --resume-at 2
  run A: `torchrun --nproc_per_node 1 -m hope_mega.train` for --steps optimizer steps of one
  GPU (global batch = micro batch, no accumulation; NCCL on a GPU, gloo on the CPU; bf16 autocast
  on a GPU; configs' parallel.zero_stage, DeepSpeed ZeRO-1 for the 760M models), checkpointing at
  --resume-at and at the end. Run B: the same command again after the final checkpoint of A was
  moved aside, so it resumes from step --resume-at and trains to --steps. B's losses, data
  digests and training state (every tensor and counter of the final checkpoint's model and
  optimizer files: fp32 weights, ZeRO optimizer and CMS state) must equal A's bitwise; the RNG
  states (rank_*.pt) and the recorded configuration are compared and reported apart.
  --resume-at 0: run A only.
  Prints `RESULT {json}` last: tokens/s (median over the steps after the first), the trainer's
  MFU (Hope-aware FLOPs over the device's dense bf16 peak), peak memory, FLOPs per token, the
  process-group backend, launch-to-first-step seconds, the resume comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hope_mega.metrics import read_training_records  # noqa: E402


def log(message: str) -> None:
    print(f"kit: {message}", flush=True)


def prep(args) -> dict:
    from hope_mega.cli import main
    from hope_mega.data.default_corpus import iter_chapters

    out = Path(args.out)
    if (out / "data" / "dataset_card.json").exists():
        return {"reused": str(out)}
    start = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    corpus = tmp / "corpus.jsonl"
    with open(corpus, "w") as f:
        for _, doc in zip(range(args.chapters), iter_chapters()):
            f.write(json.dumps(doc) + "\n")
    if main(["tokenizer", "train", "--input", str(corpus), "--output", str(tmp / "tok"),
             "--vocab-size", str(args.vocab)]) != 0:
        raise SystemExit("hope-mega tokenizer train failed")
    if main(["prep", "--tokenizer", str(tmp / "tok"), "--input", str(corpus), "--output", str(tmp / "data"),
             "--seq-len", str(args.seq_len), "--workers", str(min(8, os.cpu_count() or 1)),
             "--split-val", "0.02", "--quiet"]) != 0:
        raise SystemExit("hope-mega prep failed")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    card = json.loads((out / "data" / "dataset_card.json").read_text())
    return {"seconds": round(time.perf_counter() - start, 1), "seq_len": card["seq_len"],
            "train_rows": card.get("splits", {}).get("train", {}).get("rows"), "vocab": args.vocab}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, save_dir: Path, name: str, timeout: float) -> tuple[str, float]:
    """One torchrun of the trainer; returns its stdout and wall seconds."""
    overrides = [
        f"data.paths=[{Path(args.data) / 'data'}]", f"data.tokenizer={Path(args.data) / 'tok'}",
        f"train.save_dir={save_dir}", f"train.seq_len={args.seq_len}",
        f"train.micro_batch={args.micro_batch}", f"train.global_batch={args.micro_batch}",
        f"train.steps={args.steps}", f"train.save_every={args.resume_at}", "train.keep_last=3",
        "train.log_every=1", "train.eval_every=0", "train.warmup_steps=1",
        *args.override,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(free_port()), "-m", "hope_mega.train",
           "--config", str(ROOT / "configs" / f"{args.config}.yaml"), *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log(f"{name}: {' '.join(cmd[2:6])} -m hope_mega.train --config configs/{args.config}.yaml "
        + " ".join(o for o in overrides if not o.startswith(("data.", "train.save_dir"))))
    logfile = Path(args.work) / f"{name}.log"
    start = time.perf_counter()
    with open(logfile, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.perf_counter() - start
    text = logfile.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise SystemExit(f"{name}: the trainer exited with {proc.returncode} after {seconds:.0f} s:\n{tail}")
    log(f"{name}: done in {seconds:.1f} s")
    return text, seconds


def _load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip-format file: no mmap
        return torch.load(path, map_location="cpu", weights_only=False)


def compare_tree(a, b, where: str, found: list[str], counts: dict) -> None:
    """Bitwise comparison of two loaded checkpoint objects; differences go to `found`."""
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.dtype != b.dtype or a.shape != b.shape:
            found.append(f"{where}: {getattr(a, 'shape', type(a))} vs {getattr(b, 'shape', type(b))}")
            return
        counts["tensors"] += 1
        counts["bytes"] += a.numel() * a.element_size()
        if a.numel() and not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else None
            found.append(f"{where}: tensors differ" + (f" (max abs {diff:.3e})" if diff is not None else ""))
        return
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            found.append(f"{where}: keys differ ({sorted(map(str, set(a) ^ set(b)))[:5]})")
        for key in a:
            if key in b:
                compare_tree(a[key], b[key], f"{where}.{key}", found, counts)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            found.append(f"{where}: lengths {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_tree(x, y, f"{where}[{i}]", found, counts)
        return
    if type(a) is not type(b):
        found.append(f"{where}: {type(a).__name__} vs {type(b).__name__}")
        return
    if not isinstance(a, (str, bytes, int, float, bool, type(None))) and hasattr(a, "__dict__"):
        compare_tree(vars(a), vars(b), where, found, counts)  # e.g. DeepSpeed's loss scaler object
        return
    counts["other"] += 1
    if isinstance(a, float) and a != a and b != b:  # NaN == NaN here
        return
    try:
        equal = bool(a == b)
    except Exception:  # noqa: BLE001  (no plain ==: compare the text)
        equal = repr(a) == repr(b)
    if not equal:
        found.append(f"{where}: {a!r:.60} vs {b!r:.60}")


def _kind(where: str) -> str:
    """Which part of a checkpoint a difference is in: the training state (weights, optimizer and
    CMS state, counters), the per-rank RNG states, or the recorded configuration."""
    if where.startswith("rank_"):
        return "rng"
    if ".ds_config" in where or where.startswith("trainer_state.json.config"):
        return "config"
    return "state"


def compare_checkpoints(ref: Path, new: Path) -> dict:
    """Every .pt file and trainer_state.json of two checkpoints, bitwise; differences by kind."""
    found: list[str] = []
    counts = {"tensors": 0, "bytes": 0, "other": 0, "files": 0}
    ref_files = sorted(p.name for p in ref.glob("*.pt"))
    new_files = sorted(p.name for p in new.glob("*.pt"))
    if ref_files != new_files:
        found.append(f"files differ: {ref_files} vs {new_files}")
    for name in ref_files:
        if name in new_files:
            counts["files"] += 1
            compare_tree(_load(ref / name), _load(new / name), name, found, counts)
    state_a = json.loads((ref / "trainer_state.json").read_text())
    state_b = json.loads((new / "trainer_state.json").read_text())
    compare_tree(state_a, state_b, "trainer_state.json", found, counts)
    by_kind = {k: [f for f in found if _kind(f) == k] for k in ("state", "rng", "config")}
    return {"state_equal": not by_kind["state"], "rng_equal": not by_kind["rng"],
            "config_equal": not by_kind["config"], "differences": {k: v[:8] for k, v in by_kind.items() if v},
            "files": counts["files"], "tensors": counts["tensors"], "gib": round(counts["bytes"] / 2**30, 3)}


def pick_ckpt_dir(args, cfg, work: Path) -> tuple[Path, str | None]:
    """The first of --ckpt-dirs with room for the run's checkpoints (three with a resume check:
    A's two and B's final one; fp32 weights and Adam state, 16 bytes a parameter), and why the
    resume check cannot run when none has room for three."""
    from hope_mega.params import parameter_counts

    one = parameter_counts(cfg.model)["total_params"] * 16 * 1.05 + 2**28
    candidates = [Path(p) for p in args.ckpt_dirs.split(",") if p] or [work]
    free = {}
    for need in ((3 if args.resume_at else 1) * one, one):
        for path in candidates:
            try:
                path.mkdir(parents=True, exist_ok=True)
                free[path] = shutil.disk_usage(path).free
            except OSError:
                continue
            headroom = 8 * 2**30 if str(path).startswith("/dev/shm") else 2**30  # RAM for the processes
            if free[path] >= need + headroom:
                if need < 3 * one and args.resume_at:
                    return path, f"no folder has room for 3 checkpoints of {one / 2**30:.1f} GiB " \
                                 f"(free: {', '.join(f'{p} {f / 2**30:.1f} GiB' for p, f in free.items())})"
                return path, None
    return candidates[-1], None  # let the trainer say what went wrong


def _first_step_seconds(m: dict[int, dict], start_wall: float) -> float | None:
    """Seconds from the launch to the end of step 1 (imports, setup, first-step compilation)."""
    return round(m[1]["time"] - start_wall, 1) if 1 in m else None


def train(args) -> dict:
    import torch

    from hope_mega import checkpoint
    from hope_mega.config import load_config
    from hope_mega.params import flops_per_token

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    deadline = time.monotonic() + args.timeout
    cfg = load_config(ROOT / "configs" / f"{args.config}.yaml", [f"train.seq_len={args.seq_len}", *args.override])
    ckpt_dir, skipped = pick_ckpt_dir(args, cfg, work)
    save_dir = ckpt_dir / f"run-{args.config}"
    shutil.rmtree(save_dir, ignore_errors=True)
    if skipped:
        log(f"no save + resume check: {skipped}")
        args.resume_at = 0
    result = {"config": args.config, "seq_len": args.seq_len, "micro_batch": args.micro_batch, "steps": args.steps,
              "zero_stage": cfg.parallel.zero_stage, "nproc": args.nproc,
              "flops_per_token": flops_per_token(cfg.model, args.seq_len)["total_flops_per_token"],
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "ckpt_dir": str(ckpt_dir)}
    if skipped:
        result["resume_skipped"] = skipped
    start_wall = time.time()
    text_a, result["run_a_s"] = launch(args, save_dir, "run_a", deadline - time.monotonic())
    m_a = read_training_records(save_dir)
    found = re.search(r"process group: (\d+) ranks \(([^)]*)\)", text_a)
    result["backend"] = found.group(2) if found else None
    found = re.search(r"^layout: (.*)$", text_a, re.M)
    result["layout"] = found.group(1) if found else None
    found = re.search(r"^model: .*?([\d,]+) parameters", text_a, re.M)
    result["params"] = int(found.group(1).replace(",", "")) if found else None
    result["launch_to_first_step_s"] = _first_step_seconds(m_a, start_wall)
    steps = sorted(m_a)
    timed = [m_a[s] for s in steps if s > 1] or [m_a[s] for s in steps]
    result["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in timed), 1)
    result["tokens_per_s_by_step"] = {s: round(m_a[s]["tokens_per_s"], 1) for s in steps}
    if all("mfu" in r for r in timed):
        result["mfu"] = round(statistics.median(r["mfu"] for r in timed), 4)
    if any("mem_gib" in r for r in timed):
        result["peak_mem_gib"] = round(max(r.get("mem_gib", 0.0) for r in m_a.values()), 2)
    result["loss_by_step"] = {s: m_a[s]["loss"] for s in steps}
    final = save_dir / checkpoint.tag_for(args.steps)
    if final.exists():
        result["checkpoint_gib"] = round(sum(p.stat().st_size for p in final.iterdir()) / 2**30, 2)
    if args.resume_at:
        print("RESULT " + json.dumps(result), flush=True)  # run A's figures, in case B is cut short
        k = args.resume_at
        if k in m_a and k + 1 in m_a:  # the step after a save includes the save in its wall time
            between = m_a[k + 1]["time"] - m_a[k]["time"]
            step_s = args.micro_batch * args.seq_len / m_a[k + 1]["tokens_per_s"]
            result["save_s_est"] = round(between - step_s, 1)
        ref = ckpt_dir / f"uninterrupted-{args.config}"  # beside it: a rename, not a copy
        shutil.rmtree(ref, ignore_errors=True)
        ref.mkdir()
        final.rename(ref / final.name)
        shutil.copy(save_dir / "metrics.jsonl", ref / "metrics.jsonl")
        text_b, result["run_b_s"] = launch(args, save_dir, "run_b", deadline - time.monotonic())
        resumed = f"resumed from {save_dir / checkpoint.tag_for(k)} at step {k}"
        m_b = read_training_records(save_dir)
        later = [s for s in range(k + 1, args.steps + 1)]
        resume = {
            "from_step": k, "to_step": args.steps, "resumed": resumed in text_b,
            "losses_equal": all(s in m_b and m_b[s]["loss"] == m_a[s]["loss"] for s in later),
            "data_digests_equal": all(s in m_b and m_b[s]["data_digest"] == m_a[s]["data_digest"] for s in later),
            "losses_resumed": {s: m_b.get(s, {}).get("loss") for s in later},
        }
        log("comparing the resumed run's final checkpoint with the uninterrupted run's")
        t0 = time.perf_counter()
        resume["checkpoint"] = compare_checkpoints(ref / final.name, save_dir / checkpoint.tag_for(args.steps))
        resume["compare_s"] = round(time.perf_counter() - t0, 1)
        resume["bitwise"] = bool(resume["resumed"] and resume["losses_equal"] and resume["data_digests_equal"]
                                 and resume["checkpoint"]["state_equal"])
        result["resume"] = resume
    if not args.keep:
        shutil.rmtree(save_dir, ignore_errors=True)
        shutil.rmtree(ckpt_dir / f"uninterrupted-{args.config}", ignore_errors=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--out", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--chapters", type=int, default=300)
    p.add_argument("--vocab", type=int, default=512)
    t = sub.add_parser("train")
    t.add_argument("--config", required=True, help="configs/NAME.yaml")
    t.add_argument("--data", required=True, help="a `prep` output folder")
    t.add_argument("--work", required=True, help="logs (emptied first)")
    t.add_argument("--ckpt-dirs", default="", help="comma-separated folders for the checkpoints, the first "
                   "with room for them is taken (default: --work)")
    t.add_argument("--seq-len", type=int, required=True)
    t.add_argument("--micro-batch", type=int, required=True)
    t.add_argument("--steps", type=int, default=4)
    t.add_argument("--resume-at", type=int, default=0, help="0: no save + resume check")
    t.add_argument("--nproc", type=int, default=1)
    t.add_argument("--timeout", type=float, default=600.0, help="seconds for all launches together")
    t.add_argument("--keep", action="store_true", help="keep the checkpoints")
    t.add_argument("override", nargs="*", help="more trainer overrides (section.key=value)")
    args = ap.parse_args(argv)
    if args.command == "train" and args.resume_at and not 0 < args.resume_at < args.steps:
        ap.error("--resume-at must lie between 0 and --steps")
    result = prep(args) if args.command == "prep" else train(args)
    print("RESULT " + json.dumps(result), flush=True)
    if args.command == "train" and "resume" in result and not result["resume"]["bitwise"]:
        print(f"the resumed run did not continue bitwise: {json.dumps(result['resume'])[:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
