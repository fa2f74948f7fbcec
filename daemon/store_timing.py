"""Receive and store, measured: where a C-STORE handler's time goes.

Each stage of ``scp.handle_store`` (the free-space check, the header parse
with its hash, the duplicate check, the spool's link and fsync, the
database record, the queueing) observes its wall time and the handler
thread's CPU time in ``triage_store_stage_seconds``; the ingest bench reads
the sums back from the metrics endpoint. The gap between the two clocks is
time spent waiting: for the disk, the database, or the GIL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from daemon import metrics

STAGES = ("check", "parse", "duplicate", "spool", "record", "queue")


@contextlib.contextmanager
def store_stage(stage: str) -> Iterator[None]:
    """Time the block as ``stage`` of storing one instance (wall and thread CPU)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        metrics.STORE_STAGE_SECONDS.labels(stage, "wall").observe(time.perf_counter() - wall)
        metrics.STORE_STAGE_SECONDS.labels(stage, "cpu").observe(time.thread_time() - cpu)
