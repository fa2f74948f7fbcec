"""The supervisor: the one owner of every background thread.

Workers (``daemon.worker.Worker``) are started through it, including those
started later (a delivery worker for a newly seen destination), so that it
can judge all of them (alive, heartbeat fresh) for the watchdog and the
status file, and stop and join all of them within the drain time.
Resources the workers share (decoder child processes) are closed after
every worker has been joined.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from daemon.worker import Worker

logger = logging.getLogger(__name__)


class Supervisor:
    """Starts, judges, stops and joins the workers that share ``stop``."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._workers: list[Worker] = []
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def start(self, *workers: Worker) -> None:
        """Start ``workers`` under supervision (callable from any worker thread)."""
        for worker in workers:
            if worker.stop is not self.stop:
                raise ValueError(f"Worker {worker.name} does not share the supervisor's stop.")
            # Added and started under the lock that ``workers()`` takes: the
            # health check never sees a worker that is listed but not running.
            with self._lock:
                worker.start()
                self._workers.append(worker)

    def close_at_exit(self, close: Callable[[], None]) -> None:
        """Call ``close`` after every worker has stopped."""
        self._closers.append(close)

    def workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers)

    def healthy(self) -> bool:
        """Every worker thread runs and has finished a round recently."""
        return workers_healthy(self.workers())

    def drain(self, seconds: float) -> list[str]:
        """Stop every worker, wait up to ``seconds`` in all; the names still running."""
        self.stop.set()
        deadline = time.monotonic() + seconds
        for worker in self.workers():
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        still_running = [w.name for w in self.workers() if w.is_alive()]
        for name in still_running:
            # A daemon thread: it ends with the process. Its unit of work is
            # leased in the database and is taken again after the restart.
            logger.warning("Worker %s did not stop within the drain time", name)
        for close in self._closers:
            close()
        return still_running


def workers_healthy(workers: list[Worker]) -> bool:
    """Every worker thread runs and has finished a round recently."""
    now = time.monotonic()
    for worker in workers:
        if not worker.is_alive():
            logger.error("The %s thread has stopped", worker.name)
            return False
        if worker.stuck(now):
            logger.error("The %s thread is stuck", worker.name)
            return False
    return True
