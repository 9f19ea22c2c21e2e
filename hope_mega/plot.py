"""`hope-mega plot SAVE_DIR [SAVE_DIR ...]`: training and validation loss of runs, side by side.

Reads each run's `metrics.jsonl` and draws two panels, training loss and validation loss against
the step, one line per run (named by its folder), into a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PLOT_FILE = "loss.png"


class PlotError(ValueError):
    """A run cannot be drawn; the message names the file."""


def read_curves(save_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{"loss": [(step, value)], "val_loss": [...]} from a run's metrics.jsonl."""
    path = Path(save_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: no such file (is {save_dir} a train.save_dir?)")
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "val_loss": []}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise PlotError(f"{path}:{number}: not JSON ({err})") from None
        for key, points in curves.items():
            if key in record and record[key] is not None:
                points.append((int(record["step"]), float(record[key])))
    if not curves["loss"]:
        raise PlotError(f"{path}: no training loss logged yet")
    return curves


def plot_runs(save_dirs: list[str | Path], output: str | Path) -> Path:
    """Draw the runs into `output` (PNG); return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_curves(d)) for d in save_dirs]
    names = [d.name or str(d) for d, _ in runs]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run: say which is which
        names = [str(d) for d, _ in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for name, (_, curves) in zip(names, runs):
        steps, losses = zip(*curves["loss"])
        left.plot(steps, losses, label=name, linewidth=1.2)
        if curves["val_loss"]:
            steps, losses = zip(*curves["val_loss"])
            right.plot(steps, losses, marker="o", label=name, linewidth=1.2)
    for ax, title in ((left, "training loss"), (right, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged (train.eval_every)", ha="center", va="center", transform=ax.transAxes)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help="draw the training / validation loss of one or more runs (PNG)")
    p.add_argument("save_dirs", nargs="+", metavar="SAVE_DIR", help="train.save_dir of each run")
    p.add_argument("--output", default=None,
                   help=f"PNG to write (default: SAVE_DIR/{PLOT_FILE} for one run, ./{PLOT_FILE} for several)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    output = args.output or (Path(args.save_dirs[0]) / PLOT_FILE if len(args.save_dirs) == 1 else Path(PLOT_FILE))
    try:
        path = plot_runs(args.save_dirs, output)
    except PlotError as err:
        print(f"hope-mega plot: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
