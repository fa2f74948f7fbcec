"""Triage yields to the receivers while a burst lasts, and never for longer than its hold."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from daemon.ingest_priority import QUIET_SECONDS, IngestPriority


def test_quiet_receivers_keep_no_one_waiting() -> None:
    priority = IngestPriority(processes=2, hold_seconds=5.0)
    assert priority.busy_for() is None
    assert priority.wait_for_quiet(threading.Event(), "test") < QUIET_SECONDS


def test_a_store_in_progress_holds_triage_until_it_ends() -> None:
    priority = IngestPriority(processes=2, hold_seconds=5.0)
    signal = priority.receiving(1)
    signal.store_began()
    assert priority.busy_for() is not None
    ended = threading.Timer(0.3, signal.store_ended)
    ended.start()
    waited = priority.wait_for_quiet(threading.Event(), "test")
    ended.join()
    # The store lasted 0.3 s, and the receivers must then be quiet a while.
    assert 0.3 <= waited < 5.0
    assert priority.busy_for() is None


def test_data_arriving_counts_as_busy_for_the_quiet_interval() -> None:
    priority = IngestPriority(processes=1, hold_seconds=5.0)
    priority.receiving(0).data_arrived()
    busy = priority.busy_for()
    assert busy is not None and 0 < busy <= QUIET_SECONDS
    time.sleep(QUIET_SECONDS * 1.5)
    assert priority.busy_for() is None


def test_traffic_that_never_pauses_holds_a_worker_for_the_hold_at_most() -> None:
    priority = IngestPriority(processes=1, hold_seconds=0.4)
    priority.receiving(0).store_began()
    started = time.monotonic()
    priority.wait_for_quiet(threading.Event(), "test")
    assert 0.4 <= time.monotonic() - started < 2.0


def test_a_stop_ends_the_wait() -> None:
    priority = IngestPriority(processes=1, hold_seconds=30.0)
    priority.receiving(0).store_began()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    priority.wait_for_quiet(stop, "test")
    assert time.monotonic() - started < 5.0


def test_a_hold_of_zero_turns_the_guard_off() -> None:
    priority = IngestPriority(processes=1, hold_seconds=0.0)
    priority.receiving(0).store_began()
    assert priority.wait_for_quiet(threading.Event(), "test") == 0.0


def _die_mid_store(priority: IngestPriority, slot: int) -> None:
    priority.receiving(slot).store_began()  # and never ends it: killed in a C-STORE handler


def test_a_receiver_that_died_mid_store_holds_no_one_once_forgotten() -> None:
    """A receiver process killed inside a C-STORE left its slot counting a
    store that nothing will end; its supervisor forgets the slot before it
    starts another (CI saw every report wait a whole hold after such a kill)."""
    priority = IngestPriority(processes=2, hold_seconds=5.0)
    process = multiprocessing.get_context("spawn").Process(
        target=_die_mid_store, args=(priority, 1)
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    assert priority.busy_for() is not None  # the slot still counts its store
    priority.forget(1)
    time.sleep(QUIET_SECONDS * 1.5)
    assert priority.busy_for() is None


@pytest.mark.parametrize("slot", [-1, 2])
def test_a_slot_outside_the_processes_is_refused(slot: int) -> None:
    with pytest.raises(ValueError, match="slot"):
        IngestPriority(processes=2, hold_seconds=1.0).receiving(slot)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="processes"):
        IngestPriority(processes=0, hold_seconds=1.0)
    with pytest.raises(ValueError, match="hold_seconds"):
        IngestPriority(processes=1, hold_seconds=-1.0)
