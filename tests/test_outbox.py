"""Reports survive a PACS outage and a restart of the daemon, and are delivered.

Delivery is at least once: the C-STORE precedes the commit of its outcome,
so a crash between the two sends the SR again, with the same SOP Instance
UID, and the PACS keeps one copy. What is asserted: every report reaches
the PACS, the PACS holds one copy of each, and every outbox row ends
delivered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import Orthanc, TriageDaemon, free_port

pytestmark = pytest.mark.network


def _outbox(daemon: TriageDaemon, *args: str) -> list[dict]:
    return json.loads(daemon.triage("outbox", "list", "--json", *args).stdout)


def _wait(condition, timeout: float, what: str, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def test_outage_and_restart_deliver_every_report_once_in_the_pacs(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=91).rglob("*.dcm"))
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DELIVERY_RETRY_SCHEDULE="100x1s",
        TRIAGE_DESTINATIONS=json.dumps(
            [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}]
        ),
    )
    daemon.start()
    try:
        assert daemon.storescu(files).returncode == 0
        _wait(
            lambda: (
                len(rows := _outbox(daemon)) == len(files) and all(r["attempts"] >= 1 for r in rows)
            ),
            60,
            "reports to queue while the PACS is down",
            daemon.log,
        )
        assert {r["state"] for r in _outbox(daemon)} == {"pending"}
    finally:
        assert daemon.stop() == 0, daemon.log

    pacs.start(triage_port=daemon.port)
    try:
        daemon.start()
        try:
            # Once every row is delivered nothing is left to send, so a
            # second SR could no longer arrive after this.
            _wait(
                lambda: [r["state"] for r in _outbox(daemon)] == ["delivered"] * len(files),
                60,
                "every queued report to be delivered",
                daemon.log,
            )
            assert len(pacs.structured_reports()) == len(files)
        finally:
            assert daemon.stop() == 0, daemon.log
    finally:
        pacs.stop()


def test_dead_letter_and_retry(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=92).rglob("*.dcm"))[:1]
    closed = free_port()  # nothing listens there
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DELIVERY_RETRY_SCHEDULE="2x1s",
        TRIAGE_DESTINATIONS=json.dumps(
            [{"ae_title": "NOBODY", "host": "127.0.0.1", "port": closed}]
        ),
    )
    daemon.start()
    try:
        assert daemon.storescu(files).returncode == 0
        _wait(lambda: _outbox(daemon, "--state", "failed"), 60, "a dead letter", daemon.log)
        (row,) = _outbox(daemon, "--state", "failed")
        assert row["attempts"] == 3
        assert row["last_error"]
        assert "1 delivery queued again" in daemon.triage("outbox", "retry").stdout
        # Retried from scratch: three more attempts, then dead-lettered again, later.
        _wait(
            lambda: (
                [r["next_attempt_at"] for r in _outbox(daemon, "--state", "failed")]
                > [row["next_attempt_at"]]
            ),
            60,
            "the retried delivery to fail again",
            daemon.log,
        )
        assert _outbox(daemon, "--state", "failed")[0]["attempts"] == 3
    finally:
        assert daemon.stop() == 0, daemon.log
    purged = daemon.triage("outbox", "purge", "--state", "failed", "--older-than", "0s").stdout
    assert purged.strip() == "1 delivery purged"
    assert _outbox(daemon, "--state", "failed") == []
