"""Delivery workers on a real database: the circuit breaker and its effect on retries.

The network peer is replaced by a ``send`` callable that fails like an
unreachable PACS; what is tested is the worker, its leases and its breaker.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Destination, Settings, StudySettings
from daemon.delivery import BREAKER_FAILURES, CircuitBreaker, Deliverer, DeliveryWorker
from daemon.reporting import ReportBuilder
from daemon.runtime import CurrentRuntime, Runtime
from daemon.supervisor import Supervisor
from domain.errors import DeliveryError
from domain.retry import Backoff
from storage.models import Delivery, DeliveryState
from tests.records import store_triaged
from tests.traffic import plan_studies

PACS = ("PACS", "127.0.0.1", 104)


def test_the_breaker_opens_after_failures_in_a_row_and_doubles() -> None:
    breaker = CircuitBreaker(failures=3, backoff=Backoff(first=10, ceiling=40))
    assert [breaker.failed(0.0) for _ in range(3)] == [None, None, 10]
    assert breaker.is_open(9.9) and not breaker.is_open(10.0)
    assert [breaker.failed(10.0) for _ in range(3)] == [None, None, 20]
    assert [breaker.failed(30.0) for _ in range(6)][2::3] == [40, 40]
    breaker.succeeded()
    assert not breaker.is_open(31.0)
    assert breaker.failed(31.0) is None


def _reports(
    tmp_path: Path, phantoms: list[Path], sessions: sessionmaker[Session], count: int
) -> None:
    settings = dataclasses.replace(
        Settings(), study=StudySettings(stable_seconds=0), destinations=(Destination(*PACS),)
    )
    builder = ReportBuilder(CurrentRuntime(Runtime(settings, {})), sessions, threading.Event())
    for study in plan_studies(phantoms, tmp_path / "s", studies=count, images_per_study=1):
        builder.report(store_triaged(sessions, study.images[0].path))


def test_an_open_breaker_spares_the_rows_retries(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    _reports(tmp_path, oct_phantoms, sqlite_sessions, count=5)
    calls: list[str] = []

    def unreachable(
        content: bytes, ae_title: str, host: str, port: int, calling: str, tls: object = None
    ) -> None:
        calls.append(ae_title)
        raise DeliveryError(f"Association with {ae_title}@{host}:{port} was not established.")

    runtime = CurrentRuntime(Runtime(Settings(), {}))  # 5x1m,...: a failed row waits 1 min
    worker = DeliveryWorker(PACS, sqlite_sessions, runtime, threading.Event(), unreachable)
    worker.tick()
    # Three rows tried and failed; the breaker then opened before the other two.
    assert len(calls) == BREAKER_FAILURES
    assert worker.breaker.is_open(worker.breaker.open_until - 1)
    assert worker.tick() is False  # open: nothing is tried
    with sqlite_sessions() as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
    assert [r.attempts for r in rows] == [1, 1, 1, 0, 0]
    assert all(r.state == DeliveryState.PENDING and r.lease_until is None for r in rows)
    assert "not established" in rows[0].last_error


@pytest.mark.parametrize("fails", [False, True])
def test_a_delivery_is_recorded_after_the_send(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session], fails: bool
) -> None:
    _reports(tmp_path, oct_phantoms, sqlite_sessions, count=1)
    sent: list[bytes] = []

    def pacs(
        content: bytes, ae_title: str, host: str, port: int, calling: str, tls: object = None
    ) -> None:
        # While the C-STORE runs, the row is leased and no transaction is open.
        with sqlite_sessions() as session:
            (row,) = session.scalars(select(Delivery))
            assert row.lease_until is not None and row.attempts == 1
        sent.append(content)
        if fails:
            raise DeliveryError("PACS answered status 0xA700.")

    runtime = CurrentRuntime(Runtime(Settings(), {}))
    worker = DeliveryWorker(PACS, sqlite_sessions, runtime, threading.Event(), pacs)
    worker.tick()
    with sqlite_sessions() as session:
        (row,) = session.scalars(select(Delivery))
    assert len(sent) == 1 and sent[0][128:132] == b"DICM"
    assert row.state == (DeliveryState.PENDING if fails else DeliveryState.DELIVERED)
    assert row.lease_until is None


def test_the_supervisor_owns_the_delivery_workers_it_did_not_start_itself(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    _reports(tmp_path, oct_phantoms, sqlite_sessions, count=2)
    sent = threading.Event()

    def pacs(
        content: bytes, ae_title: str, host: str, port: int, calling: str, tls: object = None
    ) -> None:
        sent.set()

    supervisor = Supervisor(threading.Event())
    runtime = CurrentRuntime(Runtime(Settings(), {}))
    supervisor.start(Deliverer(sqlite_sessions, runtime, supervisor.stop, supervisor.start, pacs))
    try:
        assert sent.wait(30)
        names = [worker.name for worker in supervisor.workers()]
        assert names == ["delivery-dispatcher", "delivery-PACS@127.0.0.1:104"]
        assert supervisor.healthy()
    finally:
        assert supervisor.drain(10) == []
    assert not any(worker.is_alive() for worker in supervisor.workers())
