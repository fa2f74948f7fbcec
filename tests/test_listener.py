"""The supervisor owns the library threads too: the DICOM listener with its
associations, and the metrics endpoint (in process, loopback only)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request

import pytest
from pynetdicom import evt

from daemon.config import DicomSettings, Settings
from daemon.listener import DicomListener
from daemon.metrics import MetricsEndpoint
from daemon.receive_limits import ReceiveLimits
from daemon.supervisor import Supervisor
from tests.peers import echo_association

LIMITS = ReceiveLimits.from_settings(Settings(), free_bytes=lambda: 2**62)


def _listener() -> DicomListener:
    listener = DicomListener.start(DicomSettings(port=0), [], LIMITS)
    assert listener is not None
    return listener


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_listener_answers_and_a_drain_closes_its_door() -> None:
    supervisor = Supervisor(threading.Event())
    listener = _listener()
    supervisor.own(listener)
    port = listener.address[1]
    association = echo_association(port)
    assert association.send_c_echo().Status == 0x0000
    association.release()
    assert supervisor.healthy()
    assert supervisor.drain(5.0) == []
    assert not listener.alive()
    assert _refused(port)


def test_an_association_left_open_is_aborted_when_the_drain_time_is_up() -> None:
    supervisor = Supervisor(threading.Event())
    listener = _listener()
    supervisor.own(listener)
    association = echo_association(listener.address[1])
    started = time.monotonic()
    supervisor.drain(2.0)  # the listener's share is half: 1 s
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 5
    while association.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert association.is_aborted
    assert listener.open_associations() == 0
    print(f"\ndrain with one association held open: {elapsed:.2f} s")


def test_a_listener_whose_accept_loop_died_makes_the_process_unhealthy() -> None:
    supervisor = Supervisor(threading.Event())
    listener = _listener()
    supervisor.own(listener)
    assert supervisor.healthy()
    socketserver.BaseServer.shutdown(listener.server)  # the loop ends, as if it had crashed
    assert not listener.alive()
    assert not supervisor.healthy()
    supervisor.drain(1.0)


def test_the_metrics_endpoint_is_owned_and_stopped() -> None:
    supervisor = Supervisor(threading.Event())
    endpoint = MetricsEndpoint(0)
    supervisor.own(endpoint)
    url = f"http://127.0.0.1:{endpoint.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert b"triage_instances_received" in response.read()
    assert supervisor.healthy()
    supervisor.drain(2.0)
    assert not endpoint.alive()
    assert not supervisor.healthy()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_services_stop_before_the_workers_are_told_to() -> None:
    """The door closes first: workers keep taking work while open associations
    finish, and only then are asked to stop."""

    class Recording:
        name = "recording"

        def __init__(self, stop: threading.Event) -> None:
            self.workers_stopping_when_stopped: bool | None = None
            self._stop = stop
            self.running = True

        def alive(self) -> bool:
            return self.running

        def stop(self, seconds: float) -> None:
            self.workers_stopping_when_stopped = self._stop.is_set()
            self.running = False

    supervisor = Supervisor(threading.Event())
    service = Recording(supervisor.stop)
    supervisor.own(service)
    supervisor.drain(1.0)
    assert service.workers_stopping_when_stopped is False
    assert supervisor.stop.is_set()


def test_a_stored_echo_handler_still_runs_through_the_owned_listener() -> None:
    """Handlers given to the listener are bound to its associations."""
    seen: list[str] = []

    def on_echo(event: evt.Event) -> int:
        seen.append(event.assoc.requestor.ae_title)
        return 0x0000

    listener = DicomListener.start(DicomSettings(port=0), [(evt.EVT_C_ECHO, on_echo)], LIMITS)
    assert listener is not None
    try:
        association = echo_association(listener.address[1])
        association.send_c_echo()
        association.release()
        assert seen == ["SCANNER"]
    finally:
        listener.stop(2.0)
