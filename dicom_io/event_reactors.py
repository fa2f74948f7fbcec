"""pynetdicom's association reactors, woken by events instead of 1 ms polls.

Each pynetdicom association runs two threads that poll: the DUL reactor
(is there a PDU on the socket, or a primitive to send?) and the
association's reactor (is there a decoded DIMSE message?), each sleeping
1 ms whenever it found nothing. Four idle associations cost the daemon
0.28 of a core measured (``bench/README.md``), and under a burst every
one of those thousands of wakeups a second also takes the GIL from the
C-STORE handlers.

For the associations given to ``wake_on_events``, those two sleeps become
waits that end as soon as there is work:

- the DUL reactor waits on its socket and an ``eventfd``, written when the
  association's thread hands it a primitive to send (a C-STORE response)
  or asks it to stop;
- the association's reactor waits on an event, set when the DUL thread
  queues a decoded message or an A-RELEASE or A-ABORT from the peer.

Each wait ends after ``MAX_WAIT_SECONDS`` at most, so that what pynetdicom
checks by the clock (the ARTIM and idle timers, a peer gone without a
word) is still seen, late by at most that. Any other sleep, and every
association not given to ``wake_on_events`` (the daemon's own outgoing
ones, say), is left as pynetdicom has it.

pynetdicom calls ``time.sleep`` from its modules ``dul`` and
``association``; ``install`` gives those two modules a stand-in for
``time`` whose ``sleep`` asks the calling thread (pynetdicom's DUL and
Association objects are the threads themselves) for its waiter. Checked
against pynetdicom 3.0 (``uv.lock`` pins it): ``install`` refuses a
pynetdicom whose reactors it does not know, and the polling stays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import ssl
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pynetdicom
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul

logger = logging.getLogger(__name__)

# pynetdicom's reactors sleep exactly this long when they found nothing.
POLL_SECONDS = 0.001
# How late a timer-driven check may be: short against pynetdicom's ARTIM
# and network timeouts (seconds), long against a 1 ms poll.
MAX_WAIT_SECONDS = 0.05
# The attribute of a reactor thread that holds its waiter.
_WAITER = "_triage_wait"


class _ReactorTime:
    """The ``time`` module as pynetdicom's ``dul`` and ``association`` see it:
    the same, but a reactor thread's 1 ms poll waits for its events."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wait: Callable[[], None] | None = getattr(threading.current_thread(), _WAITER, None)
        if wait is None or seconds != POLL_SECONDS:
            time.sleep(seconds)
        else:
            wait()


def install() -> bool:
    """Give pynetdicom's reactors the stand-in clock; whether it could (once
    is enough, again is harmless)."""
    if not _known(pynetdicom_dul, "DULServiceProvider") or not _known(
        pynetdicom_association, "Association"
    ):
        logger.warning(
            "pynetdicom %s: its reactors are not the ones known here; they keep polling",
            pynetdicom.__version__,
        )
        return False
    for module in (pynetdicom_dul, pynetdicom_association):
        if not isinstance(module.time, _ReactorTime):
            module.time = _ReactorTime()  # type: ignore[attr-defined]
    return True


def _known(module: ModuleType, name: str) -> bool:
    kind = getattr(module, name, None)
    return (
        pynetdicom.__version__.startswith("3.")
        and isinstance(getattr(module, "time", None), ModuleType | _ReactorTime)
        and kind is not None
        and hasattr(kind, "run_reactor" if name == "DULServiceProvider" else "_run_reactor")
    )


class Wakeups:
    """One association's two waiters; counts how each wait ended (tests)."""

    def __init__(self, association: Any) -> None:
        self._association = association
        self._dul_wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._message = threading.Event()
        self.woken = 0
        self.timed_out = 0
        self._closed = False
        self._lock = threading.Lock()  # the eventfd is closed once, not written after

    def wake_dul(self) -> None:
        with self._lock:
            if not self._closed:
                os.eventfd_write(self._dul_wake, 1)

    def wake_association(self) -> None:
        self._message.set()

    def wait_in_dul(self) -> None:
        """The DUL reactor's wait: for data from the peer, or a wake."""
        transport = self._association.dul.socket
        raw = getattr(transport, "socket", None)
        if raw is None or raw.fileno() < 0:
            time.sleep(POLL_SECONDS)  # closing: pynetdicom's own pace
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes already wait, which select cannot see
        try:
            readable, _, _ = select.select([raw, self._dul_wake], [], [], MAX_WAIT_SECONDS)
        except (OSError, ValueError):
            time.sleep(POLL_SECONDS)  # closed under us: the next loop sees it
            return
        self._count(bool(readable))
        if self._dul_wake in readable:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._dul_wake)

    def wait_in_association(self) -> None:
        """The association reactor's wait: for a decoded message or an ACSE
        primitive from the peer. Cleared before the reactor looks, so that
        a message queued while it looks wakes the next wait.

        pynetdicom's ``stop_dul`` also waits here, in this thread, for the
        DUL thread to end once told to: so it is woken first."""
        if getattr(self._association.dul, "_kill_thread", False):
            self.wake_dul()
        self._count(self._message.wait(MAX_WAIT_SECONDS))
        self._message.clear()

    def _count(self, woken: bool) -> None:
        if woken:
            self.woken += 1
        else:
            self.timed_out += 1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._dul_wake)


def wake_on_events(association: Any) -> Wakeups:
    """Make ``association``'s reactors (acceptor or requestor, not yet
    started) wait for events; ``install`` must have succeeded."""
    wakeups = Wakeups(association)
    dul = association.dul
    _after(dul.to_provider_queue, "put", wakeups.wake_dul)
    _after(dul, "kill_dul", wakeups.wake_dul)
    _after(dul, "stop_dul", wakeups.wake_dul)
    _after(dul.to_user_queue, "put", wakeups.wake_association)
    _after(association.dimse.msg_queue, "put", wakeups.wake_association)
    _after(association, "kill", wakeups.wake_association)
    setattr(dul, _WAITER, wakeups.wait_in_dul)
    setattr(association, _WAITER, wakeups.wait_in_association)
    _close_when_done(dul, wakeups)
    return wakeups


def _after(owner: Any, name: str, then: Callable[[], None]) -> None:
    """``owner.name(...)`` (this instance's only) calls ``then`` after itself."""
    original = getattr(owner, name)

    def call_then(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        then()
        return result

    setattr(owner, name, call_then)


def _close_when_done(dul: Any, wakeups: Wakeups) -> None:
    """The eventfd lives as long as the DUL thread's run."""
    run = dul.run

    def run_then_close() -> None:
        try:
            run()
        finally:
            wakeups.close()
            wakeups.wake_association()  # its reactor checks whether the DUL lives

    dul.run = run_then_close


def wakeups_of(association: Any) -> Wakeups | None:
    """The ``Wakeups`` that ``wake_on_events`` gave ``association``, if any."""
    wait = getattr(association, _WAITER, None)
    owner = getattr(wait, "__self__", None)
    return owner if isinstance(owner, Wakeups) else None
