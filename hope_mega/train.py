"""`hope-mega train`: the pretraining loop.

One code path for one CPU process, N CPU processes over gloo and N GPUs over NCCL: started by
torchrun (or as a single process), it builds the TP x DP groups, the model on megatron-core's
layers, DeepSpeed's ZeRO engine around the CMS-aware AdamW, the streaming loader, and then
steps, logs, evaluates and checkpoints. A run started again with the same `train.save_dir`
resumes from the newest complete checkpoint; SIGTERM / SIGUSR1 (SLURM's preemption warning)
make it checkpoint at the end of the current step and exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, run_lock
from .config import Config, ConfigError, load_config
from .device import require_gpu_if_requested
from .ops.common import host_to_device

EXIT_PREEMPTED = 0  # a checkpointed stop on a signal is a clean exit; the launcher requeues


class PreflightError(ConfigError):
    """A launch that would fail later (or silently train on the wrong data), caught up front."""


def preflight(cfg: Config, world_size: int) -> dict:
    """Check what can be checked before any process group or model exists. Returns the card of
    the first dataset."""
    from .data.dataset_card import DatasetCardError
    from .data.loader import read_dataset_card

    t, p, d = cfg.train, cfg.parallel, cfg.data
    if world_size % p.tp:
        raise PreflightError(f"parallel.tp: world size {world_size} is not divisible by tp={p.tp}")
    dp = world_size // p.tp
    if t.global_batch % (t.micro_batch * dp):
        raise PreflightError(
            f"train.global_batch: {t.global_batch} is not divisible by train.micro_batch x data-parallel size "
            f"= {t.micro_batch} x {dp}"
        )
    if not d.paths:
        raise PreflightError("data.paths: no prepared dataset given (run `hope-mega prep` first)")
    cards = []
    for i, path in enumerate(d.paths):
        try:
            card = read_dataset_card(path)
        except DatasetCardError as err:
            raise PreflightError(f"data.paths[{i}]: {err}") from None
        if card["seq_len"] != t.seq_len:
            raise PreflightError(
                f"data.paths[{i}]: {path} was prepared with seq_len {card['seq_len']}, train.seq_len is {t.seq_len}"
            )
        if card["vocab_size"] > cfg.model.vocab_size:
            raise PreflightError(
                f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer of {path} ({card['vocab_size']})"
            )
        cards.append(card)
    need = t.micro_batch * dp  # rows one forward of every data-parallel rank takes
    for i, (path, card) in enumerate(zip(d.paths, cards)):
        rows = card.get("splits", {}).get("train", {}).get("rows", 0)
        if rows == 0 or (len(cards) == 1 and rows < need):
            raise PreflightError(
                f"data.paths[{i}]: the train split of {path} has {rows} rows, fewer than train.micro_batch x "
                f"data-parallel ranks = {t.micro_batch} x {dp}; prepare more text or lower train.micro_batch"
            )
    val_rows = sum(c.get("splits", {}).get("val", {}).get("rows", 0) for c in cards)
    if t.eval_every > 0 and 0 < val_rows < need:
        raise PreflightError(
            f"train.eval_every: the val split of {', '.join(map(str, d.paths))} has {val_rows} rows, fewer than "
            f"train.micro_batch x data-parallel ranks = {t.micro_batch} x {dp}, so no batch could be evaluated; "
            f"set train.eval_every=0 or prepare with a larger --split-val"
        )
    hashes = {c["tokenizer_hash"] for c in cards}
    if len(hashes) > 1:
        raise PreflightError(f"data.paths: datasets were made with different tokenizers ({sorted(hashes)})")
    if d.tokenizer:
        from .data.tokenizer import TokenizerError, load_tokenizer

        try:
            tok_hash = load_tokenizer(d.tokenizer).hash
        except (TokenizerError, OSError) as err:
            raise PreflightError(f"data.tokenizer: {err}") from None
        if tok_hash not in hashes:
            raise PreflightError(
                f"data.tokenizer: {d.tokenizer} (hash {tok_hash[:12]}) is not the tokenizer the data was "
                f"prepared with (hash {cards[0]['tokenizer_hash'][:12]})"
            )
    if not t.save_dir:
        raise PreflightError("train.save_dir: required (checkpoints, metrics.jsonl)")
    save_dir = Path(t.save_dir)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        probe = save_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PreflightError(f"train.save_dir: {save_dir} is not writable ({err.strerror})") from None
    ckpt = checkpoint.latest_valid(save_dir, log=lambda message: None)
    if ckpt is not None:
        import json

        saved_tp = json.loads((ckpt / checkpoint.TRAINER_STATE).read_text())["config"]["parallel"]["tp"]
        if saved_tp != p.tp:
            raise PreflightError(
                f"parallel.tp: {ckpt} was written with tp={saved_tp} and this run has tp={p.tp}; resume with "
                f"tp={saved_tp}, use a new train.save_dir, or start from it with train.init_from={ckpt}"
            )
    return cards[0]


def _ensure_launch_env() -> None:
    """Let `hope-mega train` run as a plain single process, without torchrun."""
    if "RANK" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _sample_digest(batch: torch.Tensor) -> int:
    """An order-independent fingerprint of the rows in a batch, so runs can prove they saw the
    same data: the sum of per-row hashes (summed again over ranks)."""
    weights = torch.arange(1, batch.shape[1] + 1, dtype=torch.int64) * 2654435761
    return int(((batch.long() * weights).sum(1) % 1_000_000_007).sum())


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop_signal: int | None = None

    # --- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        from .metrics import MetricsLogger
        from .model.lm import HopeLM
        from .optim.cms_adamw import CMSAdamW, param_groups
        from .parallel import state as ps
        from .parallel.layers import MegatronLayers, mark_tensor_parallel
        from .parallel.zero import build_engine

        cfg, t = self.cfg, self.cfg.train
        # First thing: a preemption warning during a minutes-long setup must not kill the process;
        # the flag is honoured at the end of the first step.
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        run_lock.watch_launcher()
        _ensure_launch_env()
        world = int(os.environ["WORLD_SIZE"])
        save_dir_existed = bool(t.save_dir) and Path(t.save_dir).is_dir()
        card = preflight(cfg, world)
        self.cuda = require_gpu_if_requested()
        if not self.cuda and "OMP_NUM_THREADS" not in os.environ:  # torchrun sets it; a lone process may not
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        ps.init_distributed(cfg.parallel.tp, timeout_s=t.collective_timeout_s)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.log0(f"process group: {self.world} ranks ({dist.get_backend()}), master "
                  f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        try:
            self.run_lock = run_lock.hold_for_job(t.save_dir, save_dir_existed)
        except run_lock.RunLockError as err:
            raise PreflightError(str(err)) from None
        self.dp_rank, self.dp_size = ps.dp_rank(), ps.dp_size()
        self.dp_group = ps.dp_group()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.cuda else torch.device("cpu")
        self.bf16 = t.dtype == "bf16" or (t.dtype == "auto" and self.cuda)
        # bf16 is autocast over fp32 parameters: the weights DeepSpeed checkpoints, the gradients
        # it accumulates and all-reduces, and the recurrence's own parameters stay fp32 (spec §4).
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.pad_id = card.get("pad_id")

        torch.manual_seed(t.seed)
        eos_id = card["eos_id"] if cfg.data.reset_at_eos else None
        layers = MegatronLayers(sequence_parallel=cfg.parallel.sequence_parallel)
        model = HopeLM(cfg.model, layers, eos_id=eos_id,
                       activation_checkpointing=cfg.parallel.activation_checkpointing)
        mark_tensor_parallel(model)
        ckpt = checkpoint.latest_valid(t.save_dir, log=self.log0)
        if ckpt is None and t.init_from:
            self._init_weights(model, layers)
        if t.optimizer == "m3":  # M3 needs whole matrices, which ZeRO does not give: its own DP engine
            from .parallel.owner_dp import build_owner_engine

            self.optimizer, self.engine = build_owner_engine(model, cfg)
        else:
            self.optimizer = CMSAdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
            self.engine = build_engine(model, self.optimizer, cfg, self.dp_size)
        self.model = model

        from .data.loader import build_train_loader

        self.loader = build_train_loader(
            cfg.data.paths, cfg.data.weights or None, t.seq_len, t.micro_batch, t.global_batch,
            self.dp_rank, self.dp_size, t.seed, num_workers=cfg.data.num_workers,
        )
        self.accumulation = self.loader.accumulation_steps
        self.val_loader = None
        has_val = card.get("splits", {}).get("val", {}).get("rows", 0) > 0
        if t.eval_every > 0 and not has_val:
            self.log0(f"train.eval_every: {cfg.data.paths[0]} has no val split; validation is off")
        if t.eval_every > 0 and has_val:
            self.val_loader = build_train_loader(
                cfg.data.paths, cfg.data.weights or None, t.seq_len, t.micro_batch,
                t.micro_batch * self.dp_size, self.dp_rank, self.dp_size, t.seed, split="val",
            )

        self.step, self.tokens = 0, 0
        self.wandb_id = uuid.uuid4().hex[:12]
        if ckpt is not None:
            self._resume(ckpt)
        from .params import flops_per_token
        from .metrics import device_peak_tflops

        self.flops_per_token = flops_per_token(cfg.model, t.seq_len)["total_flops_per_token"]
        self.peak_tflops = device_peak_tflops(t.peak_tflops)
        self.metrics = MetricsLogger(t.save_dir, self.rank == 0, self.step, t.wandb_project, self.wandb_id,
                                     cfg.model.name, cfg.to_dict())
        from .run_summary import describe_run

        self.log0(describe_run(cfg, self.world, card, self.step, self.tokens, self.bf16,
                               str(ckpt) if ckpt is not None else None))

    def _init_weights(self, model, layers) -> None:
        """Load canonical (TP = 1) weights and keep this rank's shards, before ZeRO copies the
        module into its fp32 master partitions."""
        from .convert.cli import load_canonical_weights
        from .parallel.sharding import shard_state_dict

        source = self.cfg.train.init_from
        try:
            full = load_canonical_weights(source)
            model.load_state_dict(shard_state_dict(full, model, layers.tp_rank, layers.tp_size))
        except (KeyError, ValueError, RuntimeError, OSError, ConfigError) as err:
            raise PreflightError(f"train.init_from: cannot start from {source}: {err}") from None
        self.log0(f"initialised from {source}")

    def _resume(self, ckpt: Path) -> None:
        state = checkpoint.load(self.engine, ckpt)
        self.step, self.tokens = state["step"], state["tokens"]
        self.wandb_id = state.get("wandb_id", self.wandb_id)
        self.loader.load_state_dict(state["loader"])
        if "rank_state" in state:
            torch.set_rng_state(state["rank_state"]["torch_rng"])
        self.log0(f"resumed from {ckpt} at step {self.step} ({self.tokens:,} tokens)")

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def log0(self, message: str) -> None:
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        print(message, flush=True)

    # --- one step ----------------------------------------------------------------------------
    def _next_batch(self) -> torch.Tensor:
        try:
            return next(self._batches)
        except (StopIteration, AttributeError):
            self._batches = iter(self.loader)
            return next(self._batches)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The mean loss of a host batch. Its document layout is computed here, on the host, and
        both go to the device asynchronously: nothing in the forward waits for the device."""
        docs = self.model.documents(batch[:, :-1]).to(self.device)
        batch = host_to_device(batch, self.device)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        with self.autocast:
            per_token = self.engine(inputs, labels, docs=docs)
        if self.pad_id is None:
            return per_token.mean()
        mask = (labels != self.pad_id).float()
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)

    def _backward(self, loss: torch.Tensor) -> None:
        if self.bf16 and not self.cuda:
            # megatron-core's linear layers re-enter autocast in their backward only for CUDA
            # (custom_bwd(device_type="cuda")); on the CPU the same is done here.
            with self.autocast:
                self.engine.backward(loss)
        else:
            self.engine.backward(loss)

    def train_step(self) -> dict:
        """One optimizer step over `accumulation` micro batches.

        The host waits for the device once per step, before the optimizer: whether any rank's
        loss was not finite decides whether the step is taken, and the losses come back in the
        same read. Micro batches queue their work without a read. A non-finite micro batch is
        still backpropagated (its gradients are discarded with the skipped step), so every
        rank runs the same collectives. `grad_norm` stays a device tensor until it is logged.
        """
        t = self.cfg.train
        from .optim.cms_adamw import cosine_lr

        lr = cosine_lr(self.step, t.lr, t.warmup_steps, t.steps, t.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        digest = 0
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # non-finite count, loss sum
        for micro in range(self.accumulation):
            batch = self._next_batch()
            digest += _sample_digest(batch)
            loss = self._loss(batch)
            detached = loss.detach().double()
            sums += torch.stack([(~torch.isfinite(detached)).double(), detached])
            self._backward(loss)
            if micro + 1 < self.accumulation:
                self.engine.step()  # between boundaries DeepSpeed only counts the micro batch
        dist.all_reduce(sums)  # over the world: every rank must agree to skip
        bad, loss_total = sums.tolist()
        finite = bad == 0
        # At the boundary the engine steps the optimizer, once per parameter group under ZeRO:
        # a non-finite step must leave every group as it was.
        with self.optimizer.skipping_steps(not finite):
            self.engine.step()
        # The data digest is the host's: it goes over the process group's CPU backend (gloo).
        stats = torch.tensor([float(digest % (1 << 50))], dtype=torch.float64)
        dist.all_reduce(stats, group=self.dp_group)
        return {
            # TP ranks compute the same loss as their DP rank, so the world mean is the DP mean.
            "loss": loss_total / (self.world * self.accumulation) if finite else float("nan"),
            "lr": lr,
            "grad_norm": self.engine.get_global_grad_norm() if finite else None,
            "finite": finite,
            "data_digest": stats,  # a host tensor, read when logged
        }

    @torch.no_grad()
    def evaluate(self) -> float:
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.val_loader.epoch, self.val_loader.sample_in_epoch = 0, 0  # the same rows every time
        batches = iter(self.val_loader)
        for _ in range(self.cfg.train.eval_batches):
            try:
                batch = next(batches)
            except StopIteration:
                break
            total += torch.stack([self._loss(batch).double(), torch.ones((), dtype=torch.float64, device=self.device)])
        dist.all_reduce(total, group=self.dp_group)
        self.engine.train()
        return (total[0] / total[1].clamp_min(1)).item()

    # --- the loop ----------------------------------------------------------------------------
    def save(self) -> None:
        from .parallel import state as ps
        from .parallel.replicas import check_replicas_identical

        check_replicas_identical(self.model, ps.tp_group(), self.step)
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "loader": self.loader.state_dict(),
            "config": self.cfg.to_dict(),
            "world_size": self.world,
            "wandb_id": self.wandb_id,
        }
        path = checkpoint.save(self.engine, self.cfg.train.save_dir, self.step, state,
                               {"torch_rng": torch.get_rng_state()}, self.cfg.train.keep_last)
        self.log0(f"saved checkpoint {path}")

    def _stop_requested(self) -> bool:
        flag = torch.tensor([0.0 if self.stop_signal is None else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def run(self) -> int:
        t = self.cfg.train
        tokens_per_step = t.global_batch * t.seq_len
        bad_in_a_row = 0
        self.engine.train()
        while self.step < t.steps:
            start = time.perf_counter()
            out = self.train_step()
            elapsed = time.perf_counter() - start
            self.step += 1
            if out["finite"]:
                bad_in_a_row = 0
                self.tokens += tokens_per_step
            else:
                bad_in_a_row += 1
                self.log0(f"step {self.step}: non-finite loss, step skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= t.max_bad_steps:
                    self.log0(f"stopping: {bad_in_a_row} non-finite steps in a row (train.max_bad_steps)")
                    return 3
            if self.step % t.log_every == 0 or self.step == t.steps or self.step == 1:
                tps = tokens_per_step / elapsed
                record = {"step": self.step, "loss": out["loss"], "lr": out["lr"],
                          "grad_norm": float(out["grad_norm"]) if out["grad_norm"] is not None else float("nan"),
                          "tokens_per_s": tps, "tokens": self.tokens}
                if self.peak_tflops:
                    record["mfu"] = self.flops_per_token * tps / (self.world * self.peak_tflops * 1e12)
                if self.cuda:
                    record["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                record["data_digest"] = int(out["data_digest"][0])
                self.metrics.log(record)
            if self.val_loader is not None and self.step % t.eval_every == 0:
                self.metrics.log({"step": self.step, "val_loss": self.evaluate()})
            stop = self._stop_requested()
            if (t.save_every and self.step % t.save_every == 0) or self.step == t.steps or stop:
                self.save()
            if stop and self.step < t.steps:
                self.log0(f"stopped by signal {self.stop_signal} at step {self.step}; checkpoint saved")
                return EXIT_PREEMPTED
        self.log0(f"finished {self.step} steps ({self.tokens:,} tokens)")
        return 0

    def close(self) -> None:
        from .parallel import state as ps

        if hasattr(self, "metrics"):
            self.metrics.close()
        checkpoint.wait_for_cleanup()
        ps.destroy()
        if getattr(self, "run_lock", None) is not None:
            self.run_lock.release(remove_if_unused=True)  # a run that failed at start leaves nothing


def train(cfg: Config) -> int:
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="pretrain (single process, or under torchrun / srun)")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return train(load_config(args.config, args.overrides))


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
