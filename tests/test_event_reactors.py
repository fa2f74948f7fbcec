"""pynetdicom's reactors wait for events on the daemon's associations
(``dicom_io.event_reactors``): few wakeups while idle, every message still
answered at once, and a release still ends both threads."""

from __future__ import annotations

import time
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from daemon.config import DicomSettings, Settings
from daemon.listener import DicomListener
from daemon.receive_limits import ReceiveLimits
from dicom_io import event_reactors
from tests.peers import echo_association

LIMITS = ReceiveLimits.from_settings(Settings(), free_bytes=lambda: 2**62)


def _accepted(listener: DicomListener) -> Any:
    deadline = time.monotonic() + 5
    while not listener.ae.active_associations:
        assert time.monotonic() < deadline, "no association was accepted"
        time.sleep(0.01)
    return listener.ae.active_associations[0]


def test_an_idle_association_wakes_its_reactors_rarely_and_echoes_are_answered() -> None:
    listener = DicomListener.start(DicomSettings(port=0), [], LIMITS)
    assert listener is not None
    try:
        requestor = echo_association(listener.address[1])
        wakeups = event_reactors.wakeups_of(_accepted(listener))
        assert wakeups is not None, "the accepted association polls"
        before = wakeups.woken + wakeups.timed_out
        time.sleep(1.0)
        idle_waits = wakeups.woken + wakeups.timed_out - before
        # Polling, the two reactors loop about 2,000 times a second; waiting
        # for events, about 2 / MAX_WAIT_SECONDS (40).
        assert idle_waits < 200, idle_waits

        woken_before = wakeups.woken
        for _ in range(20):
            assert requestor.send_c_echo().Status == 0x0000
        # Each request wakes the association's reactor and each response
        # the DUL's: the answers came from events, not from timeouts.
        assert wakeups.woken - woken_before >= 20
        requestor.release()
        acceptor = _accepted(listener) if listener.ae.active_associations else None
        if acceptor is not None:
            acceptor.join(timeout=5)
            assert not acceptor.is_alive()
            assert not acceptor.dul.is_alive()
    finally:
        listener.stop(2.0)


def test_associations_not_given_to_it_keep_pynetdicoms_sleep() -> None:
    """The daemon's own outgoing associations (and any other) are untouched."""
    assert event_reactors.install()
    assert event_reactors.install()  # again: harmless
    scu = AE(ae_title="SCANNER")
    scu.add_requested_context(Verification)
    listener = DicomListener.start(DicomSettings(port=0), [], LIMITS)
    assert listener is not None
    try:
        requestor = scu.associate("127.0.0.1", listener.address[1], ae_title="TRIAGE")
        assert requestor.is_established
        assert event_reactors.wakeups_of(requestor) is None
        assert requestor.send_c_echo().Status == 0x0000
        requestor.release()
    finally:
        listener.stop(2.0)
