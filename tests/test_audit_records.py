"""The audit trail's pieces without a daemon: what a syslog copy holds, its
RFC 5424 form, and how ``triage audit`` reads times."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from daemon.audit import EVENT_CODES, syslog_text
from daemon.audit_syslog import rfc5424
from daemon.cli.records import parse_moment
from domain.errors import ConfigError


def test_a_syslog_copy_names_no_patient() -> None:
    fields = {
        "patient_id": "PID-7",
        "study_instance_uid": "1.2.3.4",
        "calling_ae_title": "SCANNER",
        "peer_address": "10.0.0.5:40000",
        "instances_stored": 3,
        "detail": "",
    }
    text = syslog_text("instances-stored", 0, 42, fields)
    assert "PID-7" not in text and "1.2.3.4" not in text
    message = json.loads(text)
    assert message["event_id"] == {
        "code": "110104",
        "scheme": "DCM",
        "meaning": "DICOM Instances Transferred",
    }
    assert message["record"] == 42 and message["instances_stored"] == 3
    assert "detail" not in message  # empty fields are left out
    assert json.loads(syslog_text("rejected", 4, 1, {}))["event_type"]["code"] == "110126"
    assert all(len(codes) == 4 for codes in EVENT_CODES.values())


def test_rfc5424_form() -> None:
    at = dt.datetime(2026, 11, 30, 21, 0, 0, 123000, tzinfo=dt.UTC)
    line = rfc5424("query", '{"event":"query"}', failed=False, at=at)
    assert re.match(
        rb"<85>1 2026-11-30T21:00:00\.123Z \S+ dicom-triage-audit \d+ query - \xef\xbb\xbf\{",
        line,
    ), line
    assert rfc5424("rejected", "{}", failed=True).startswith(b"<84>1 ")


def test_times_for_the_filters() -> None:
    now = dt.datetime(2026, 11, 30, 12, 0, 0)
    assert parse_moment("2h", now) == dt.datetime(2026, 11, 30, 10, 0, 0)
    assert parse_moment("2026-11-29", now) == dt.datetime(2026, 11, 29)
    assert parse_moment("2026-11-29T14:00+01:00", now) == dt.datetime(2026, 11, 29, 13, 0)
    with pytest.raises(ConfigError, match="neither a duration"):
        parse_moment("yesterday", now)


def test_a_flood_of_refusals_is_one_alert_per_interval(tmp_path: Path) -> None:
    from daemon.audit import ALERT_INTERVAL_SECONDS, AuditTrail
    from storage.database import create_database_engine, make_session_factory, upgrade
    from storage.queries import AuditFilter, audit_events

    engine = create_database_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = [1000.0]
    trail = AuditTrail(sessions, clock=lambda: now[0])
    for _ in range(50):  # a port scan from one address
        trail.security_alert("10.0.0.9", "not in dicom.allowed_networks")
    trail.security_alert("10.0.0.10", "not in dicom.allowed_networks")
    trail.security_alert("10.0.0.9", "declared a PDU of 2147483648 bytes, over 4194304")
    trail.security_alert("10.0.0.9", "declared a PDU of 3000000000 bytes, over 4194304")
    now[0] += ALERT_INTERVAL_SECONDS
    trail.security_alert("10.0.0.9", "not in dicom.allowed_networks")
    with sessions() as session:
        rows = audit_events(session, AuditFilter(event="connection-refused"))
    assert [(r.peer_address, r.detail[:12]) for r in rows] == [
        ("10.0.0.9", "not in dicom"),
        ("10.0.0.10", "not in dicom"),
        ("10.0.0.9", "declared a P"),  # another kind of refusal: its own alert
        ("10.0.0.9", "not in dicom"),
    ]
    assert rows[3].detail.endswith("(and 49 more like it from this peer since the last alert)")
    assert all(r.outcome == 4 for r in rows)
