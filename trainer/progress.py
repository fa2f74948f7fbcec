"""A progress bar with rate and ETA; plain periodic lines when not on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, unit: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._last_line = 0.0
        self._tty = self.stream.isatty()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done >= self.total or now - self._last_line >= (0.2 if self._tty else 10.0):
            self._last_line = now
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        eta = _duration(remaining) if remaining != float("inf") else "?"
        line = f"{self.label} [{bar}] {self.done}/{self.total} {rate:.1f} {self.unit}/s ETA {eta}"
        if self._tty:
            end = "\n" if self.done >= self.total else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
