"""Ingest before triage: while images arrive, decoding, inference, reports
and maps wait for the receivers to fall quiet.

On a host whose cores the senders and the receivers already fill, triage
running at the same time takes the cores, the GIL and the database's write
lock from the C-STORE handlers, and every acknowledgement waits on it.
Triage gains nothing by running during a burst (it catches up afterwards,
in larger batches), so it yields.

Each receiving process (the daemon's own, and each receiver process) has a
slot in shared memory: when it last received a P-DATA or answered a
C-STORE (``CLOCK_MONOTONIC``, one clock for every process on the host), and
how many C-STOREs it is storing now. ``IngestPriority.wait_for_quiet`` returns
once every slot has been quiet for ``QUIET_SECONDS`` and stores nothing, or
after ``hold_seconds`` at most: under traffic that never pauses, each
waiting worker still does one unit of work per hold, so triage is slowed,
never stopped. ``hold_seconds = 0`` turns the guard off.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import time
from typing import Any

from daemon import metrics

# How long the receivers must have been quiet: longer than the gap between
# two C-STOREs of one sender (a round trip and the sender's file read), so
# that a burst counts as one, and short against a study's stable_seconds.
QUIET_SECONDS = 0.1


class IngestPriority:
    """The receivers' activity, shared by every process that receives or triages."""

    def __init__(self, processes: int, hold_seconds: float) -> None:
        if processes < 1:
            raise ValueError('Argument "processes" must be at least 1.')
        if hold_seconds < 0:
            raise ValueError('Argument "hold_seconds" must not be negative.')
        self.hold_seconds = hold_seconds
        context = multiprocessing.get_context("spawn")
        # Raw (unlocked) shared memory: each slot is written by one process
        # only, an aligned 8-byte store, and read by the others.
        self._last: Any = context.RawArray(ctypes.c_double, processes)
        self._storing: Any = context.RawArray(ctypes.c_int, processes)

    def receiving(self, slot: int) -> ReceivingSignal:
        """What the receiving process in ``slot`` (0: the daemon's own) signals with."""
        return ReceivingSignal(self._last, self._storing, slot)

    def forget(self, slot: int) -> None:
        """The process in ``slot`` died: what it counted as storing, nothing
        stores any more (its successor starts from a clear slot)."""
        self._storing[slot] = 0

    def busy_for(self) -> float | None:
        """How much longer ingest counts as busy at least, or None when quiet."""
        now = time.monotonic()
        if any(self._storing):
            return QUIET_SECONDS
        remaining = max(self._last) + QUIET_SECONDS - now
        return remaining if remaining > 0 else None

    def wait_for_quiet(self, stop: threading.Event, worker: str) -> float:
        """Wait until the receivers are quiet, ``hold_seconds`` at most, or
        ``stop``; the seconds waited (counted in the metrics by ``worker``)."""
        if not self.hold_seconds:
            return 0.0
        started = time.monotonic()
        deadline = started + self.hold_seconds
        while not stop.is_set():
            busy = self.busy_for()
            now = time.monotonic()
            if busy is None or now >= deadline:
                break
            # Until the last activity seen is QUIET_SECONDS old: then look again.
            stop.wait(min(busy, deadline - now))
        waited = time.monotonic() - started
        if waited > 0.001:
            metrics.INGEST_YIELD_SECONDS.labels(worker).inc(waited)
        return waited


class ReceivingSignal:
    """One receiving process's slot: C-STOREs begun and ended, data arriving."""

    def __init__(self, last: Any, storing: Any, slot: int) -> None:
        if not 0 <= slot < len(last):
            raise ValueError(f'Argument "slot" must be in 0..{len(last) - 1}, got {slot}.')
        self._last = last
        self._storing = storing
        self._slot = slot
        self._lock = threading.Lock()  # the handler threads of this process

    def data_arrived(self) -> None:
        self._last[self._slot] = time.monotonic()

    def store_began(self) -> None:
        with self._lock:
            self._storing[self._slot] += 1
        self._last[self._slot] = time.monotonic()

    def store_ended(self) -> None:
        with self._lock:
            self._storing[self._slot] -= 1
        self._last[self._slot] = time.monotonic()


def watch_data(association: Any, signal: ReceivingSignal) -> None:
    """Mark ``signal`` at every P-DATA ``association`` receives (a dataset
    arriving counts as ingest before its C-STORE handler runs)."""
    dimse = association.dimse
    receive = dimse.receive_primitive

    def receive_marked(primitive: Any) -> None:
        signal.data_arrived()
        receive(primitive)

    dimse.receive_primitive = receive_marked
