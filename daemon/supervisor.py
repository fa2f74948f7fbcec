"""The supervisor: the one owner of every background thread.

Workers (``daemon.worker.Worker``) are started through it, including those
started later (a delivery worker for a newly seen destination), so that it
can judge all of them (alive, heartbeat fresh) for the watchdog and the
status file, and stop and join all of them within the drain time.

Services are the threads that libraries run for us: the DICOM listener's
accept loop with its associations (``daemon.listener``) and the metrics
endpoint (``daemon.metrics``). The supervisor owns them too: a service
whose thread has died makes the process unhealthy, and a drain stops them
first, so that no new work arrives while the workers finish theirs.
Resources the workers share (decoder child processes) are closed last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from daemon.worker import Worker

logger = logging.getLogger(__name__)


class Service(Protocol):
    """A thread a library runs for us, which the supervisor judges and stops."""

    name: str

    def alive(self) -> bool: ...

    def stop(self, seconds: float) -> None: ...


class Supervisor:
    """Starts, judges, stops and joins the workers that share ``stop``, and
    judges and stops the services it is given."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._services: list[Service] = []
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

    def own(self, service: Service) -> None:
        """Judge ``service`` with the workers, and stop it first when draining."""
        with self._lock:
            self._services.append(service)

    def services(self) -> list[Service]:
        with self._lock:
            return list(self._services)

    def close_at_exit(self, close: Callable[[], None]) -> None:
        """Call ``close`` after every worker has stopped."""
        self._closers.append(close)

    def workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers)

    def healthy(self) -> bool:
        """Every service runs, and every worker runs and has finished a round recently."""
        for service in self.services():
            if not service.alive():
                logger.error("The %s thread has stopped", service.name)
                return False
        return workers_healthy(self.workers())

    def drain(self, seconds: float) -> list[str]:
        """Stop the services, then every worker, within ``seconds`` in all.

        The services (no new associations; open ones finish or are aborted)
        get up to half; the workers the rest. Returns the names of the
        workers still running.
        """
        deadline = time.monotonic() + seconds
        # Together: the listener's open associations and the receiver
        # processes' finish in the same half, not one after the other.
        stopping = [
            threading.Thread(
                target=service.stop, args=(seconds / 2,), name=f"stop-{service.name}", daemon=True
            )
            for service in self.services()
        ]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.stop.set()
        for worker in self.workers():
            worker.wake()  # out of its idle wait at once
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
