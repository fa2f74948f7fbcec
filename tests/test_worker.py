"""The worker loop: a wake starts the next round at once; a drain wakes idle workers."""

from __future__ import annotations

import threading

from daemon.supervisor import Supervisor
from daemon.worker import Worker


class CountingWorker(Worker):
    """Finds nothing to do and would then wait an hour; counts its rounds."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__("counting", stop, idle_seconds=3600.0)
        self.rounds = 0
        self.round_done = threading.Event()

    def tick(self) -> bool:
        self.rounds += 1
        self.round_done.set()
        return False


def test_a_wake_starts_the_next_round_instead_of_the_idle_wait() -> None:
    stop = threading.Event()
    worker = CountingWorker(stop)
    worker.start()
    try:
        assert worker.round_done.wait(10)
        worker.round_done.clear()
        worker.wake()
        # Without the wake the next round would come after an hour.
        assert worker.round_done.wait(10)
        assert worker.rounds == 2
    finally:
        stop.set()
        worker.wake()
        worker.join(10)
    assert not worker.is_alive()


def test_a_drain_does_not_wait_out_an_idle_wait() -> None:
    supervisor = Supervisor(threading.Event())
    worker = CountingWorker(supervisor.stop)
    supervisor.start(worker)
    assert worker.round_done.wait(10)
    assert supervisor.drain(30) == []
    assert worker.rounds == 1
