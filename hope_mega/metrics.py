"""Training metrics: a console line, `save_dir/metrics.jsonl`, and W&B when configured.

Only the process that owns the logger (global rank 0) writes. On resume, lines logged after the
checkpoint being resumed from are dropped from metrics.jsonl, so the file reads as one run.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

# Dense bf16 peak TFLOP/s per device, for MFU: (pattern on torch.cuda.get_device_name(), peak),
# the first match wins, so variants come before their family (an H100 PCIe is not an SXM part).
PEAK_TFLOPS = [
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH200\b.*\bNVL\b", 835.0),
    (r"\bGH200\b", 989.0),
    (r"\bH200\b", 989.0),
    (r"\bH100\b", 989.0),  # SXM5, named e.g. "NVIDIA H100 80GB HBM3"
    (r"\bH800\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bB200\b", 2250.0),
]


def peak_tflops_of(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its CUDA name, or None when it is not in the table."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def device_peak_tflops(override: float = 0.0) -> float | None:
    """train.peak_tflops when set, else this GPU's peak from the table (None on the CPU or an
    unknown GPU: MFU is then not reported)."""
    if override > 0:
        return override
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_tflops_of(torch.cuda.get_device_name())


class MetricsLogger:
    def __init__(self, save_dir: str, enabled: bool, resume_step: int = 0, wandb_project: str = "",
                 wandb_id: str | None = None, run_name: str = "", config: dict | None = None):
        self.enabled = enabled
        self.path = Path(save_dir) / "metrics.jsonl" if save_dir else None
        self.wandb = None
        if not enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
        if wandb_project:
            import wandb

            if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
                os.environ["WANDB_MODE"] = "offline"  # no key: keep the run on disk, sync later
            self.wandb = wandb.init(project=wandb_project, id=wandb_id, resume="allow", name=run_name or None,
                                    config=config, dir=str(Path(save_dir) if save_dir else Path.cwd()))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short by a kill
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any], console: bool = True) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=record["step"])
        if console:
            print(format_line(record), flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_training_records(save_dir: str | Path) -> dict[int, dict[str, Any]]:
    """step -> the training record (the one with a loss) logged at that step in metrics.jsonl."""
    out = {}
    for line in (Path(save_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record
    return out


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key == "lr":
            return f"{key} {value:.3e}"
        if key == "mfu":
            return f"{key} {100 * value:.1f}%"
        if math.isfinite(value) and abs(value) >= 1000:
            return f"{key} {value:,.0f}"
        return f"{key} {value:.4f}"
    return f"{key} {value}"


def format_line(record: dict[str, Any]) -> str:
    skip = {"time", "data_digest"}
    return " | ".join(_fmt(k, v) for k, v in record.items() if k not in skip)
