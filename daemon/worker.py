"""One worker model for every background loop (STYLE rule 14, after Dramatiq).

A ``Worker`` is a thread that repeats ``tick()``: it refreshes its heartbeat
every round, stops when the shared stop event is set, and survives any
exception a round raises (a database outage, a bug), backing off
exponentially while the rounds keep failing so that an outage is neither a
busy loop nor a flood of tracebacks. The supervisor judges each worker by
``is_alive()`` and ``heartbeat``.

Units of work (an instance to triage, a study to report, a delivery, an
occlusion map) keep their attempts in the database: each is claimed with an
attempt counted before the slow part starts, so a crash or a hang still
counts; a failed try rests as its ``domain.retry.RetryPolicy`` says, and
past the policy's last delay the unit is parked in a terminal state with
its reason. The supervisor (``daemon.supervisor``) owns every worker.
"""

from __future__ import annotations

import logging
import threading
import time

from domain.retry import Backoff

logger = logging.getLogger(__name__)


class Worker(threading.Thread):
    """A supervised background loop.

    Parameters
    ----------
    name
        Thread name, also used in logs and health checks.
    stop
        Set by the daemon to stop every worker.
    idle_seconds
        Wait between rounds that found nothing to do.
    stuck_seconds
        How long a round may take before the worker counts as stuck.
    """

    def __init__(
        self,
        name: str,
        stop: threading.Event,
        idle_seconds: float = 0.5,
        stuck_seconds: float = 300.0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        if idle_seconds <= 0:
            raise ValueError('Argument "idle_seconds" must be positive.')
        self.stop = stop
        self.idle_seconds = idle_seconds
        self.stuck_seconds = stuck_seconds
        self.heartbeat = time.monotonic()
        self.failed_rounds = 0
        self.round_backoff = Backoff(first=idle_seconds, ceiling=30.0)
        self._woken = threading.Event()

    def tick(self) -> bool:
        """One round of work; True when it did something (the next round starts at once)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Start the next round now, not after the idle wait: another worker
        has just made work for this one (a report to send, a study to report)."""
        self._woken.set()

    def idle_wait(self) -> float:
        """Seconds to wait after a round that found nothing to do."""
        return self.idle_seconds

    def beat(self) -> None:
        """Refresh the heartbeat: a long round calls this between its items."""
        self.heartbeat = time.monotonic()

    def stuck(self, now: float) -> bool:
        return now - self.heartbeat > self.stuck_seconds

    def run(self) -> None:
        logger.info("Worker %s started", self.name)
        wait = 0.0
        while not self.stop.is_set():
            if wait > 0:
                self._woken.wait(wait)
                if self.stop.is_set():
                    break
            self._woken.clear()
            self.beat()
            try:
                busy = self.tick()
            except Exception:
                self.failed_rounds += 1
                wait = self.round_backoff.delay(self.failed_rounds)
                # Log the first failure of a streak in full, then only now and then.
                if self.failed_rounds == 1 or self.failed_rounds % 20 == 0:
                    logger.exception(
                        "Worker %s failed (%d in a row); next round in %.1f s",
                        self.name,
                        self.failed_rounds,
                        wait,
                    )
                continue
            if self.failed_rounds:
                logger.info(
                    "Worker %s recovered after %d failed rounds", self.name, self.failed_rounds
                )
                self.failed_rounds = 0
            wait = 0.0 if busy else self.idle_wait()
        logger.info("Worker %s stopped", self.name)
