"""CPU used by a process tree and by the whole host, read from ``/proc``.

For the ingest bench: the CPU seconds a receiver (and every process it
started: receiver processes, decoder children) spent during a burst, and
how busy the host's cores were meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its live descendants."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return total


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # guest time is counted within user already
    idle = values[3] + values[4]  # idle and iowait
    return (total - idle) / TICKS, total / TICKS
