"""Progress lines for long jobs: done / total, rate and time left, on stderr, at most every few
seconds, so a 10-minute evaluation is never silent and a log file stays short."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`update(n)` after each piece of work; prints when `every_s` passed since the last line, and
    always at the end (`done == total`). `enabled=False` prints nothing."""

    def __init__(self, label: str, total: float, unit: str, every_s: float = 10.0, enabled: bool = True,
                 stream=None, clock=time.monotonic):
        self.label, self.total, self.unit = label, total, unit
        self.every_s, self.enabled = every_s, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0.0
        self.start = self.last = clock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 1.0
        text = (f"[{self.label}] {self.done:,.0f}/{self.total:,.0f} {self.unit} ({share:.0%}), "
                f"{rate:,.1f} {self.unit}/s, {format_duration(elapsed)} elapsed")
        if self.done < self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        return text

    def update(self, n: float = 1) -> None:
        self.done += n
        now = self.clock()
        if self.enabled and (now - self.last >= self.every_s or self.done >= self.total):
            self.last = now
            print(self.line(), file=self.stream, flush=True)
