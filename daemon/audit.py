"""The audit trail, in the style of IHE ATNA (DICOM PS3.15 A.5).

Each event is a row in ``audit_events`` (``triage audit`` reads them back,
and is the only place that shows the Patient ID and Study Instance UID of
one) and a syslog message (``daemon.audit_syslog``: the journal, and a
remote collector over TLS), which names no patient: the event, its DICOM
EventID code, the outcome, the peer's address and AE titles, counts, and
the row's id to look it up.

Events, with their PS3.16 CID 400/401 codes:

=====================  ======================================  ==========================
event                  EventID                                 EventTypeCode
=====================  ======================================  ==========================
association-start      110114 User Authentication              110122 Login
released, aborted      110114 User Authentication              110123 Logout
rejected               110113 Security Alert                   110126 Node Authentication
connection-refused     110113 Security Alert                   110126 Node Authentication
instances-stored       110104 DICOM Instances Transferred
query                  110112 Query
query-refused          110113 Security Alert                   110132 Use of Restricted Function
report-exported        110106 Export
application-start      110100 Application Activity             110120 Application Start
application-stop       110100 Application Activity             110121 Application Stop
configuration-change   110113 Security Alert                   110131 Software Configuration
user-login             110114 User Authentication              110122 Login
user-logout            110114 User Authentication              110123 Logout
record-viewed          110110 Patient Record
delivery-retried       110106 Export
=====================  ======================================  ==========================

The HTTP service (``daemon.web``) records the last four: who signed in
(``detail`` names the user), which study a user looked at, and who put a
dead letter back in the queue.

Writing the trail never fails the work it records: an error is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from daemon.audit_syslog import AuditSink
from dicom_io.status import Status
from storage import queries

logger = logging.getLogger(__name__)

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8

# event: (EventID code, meaning, EventTypeCode code or "", meaning or "")
EVENT_CODES: dict[str, tuple[str, str, str, str]] = {
    "association-start": ("110114", "User Authentication", "110122", "Login"),
    "released": ("110114", "User Authentication", "110123", "Logout"),
    "aborted": ("110114", "User Authentication", "110123", "Logout"),
    "rejected": ("110113", "Security Alert", "110126", "Node Authentication"),
    "connection-refused": ("110113", "Security Alert", "110126", "Node Authentication"),
    "instances-stored": ("110104", "DICOM Instances Transferred", "", ""),
    "query": ("110112", "Query", "", ""),
    "query-refused": ("110113", "Security Alert", "110132", "Use of Restricted Function"),
    "report-exported": ("110106", "Export", "", ""),
    "application-start": ("110100", "Application Activity", "110120", "Application Start"),
    "application-stop": ("110100", "Application Activity", "110121", "Application Stop"),
    "configuration-change": ("110113", "Security Alert", "110131", "Software Configuration"),
    "user-login": ("110114", "User Authentication", "110122", "Login"),
    "user-logout": ("110114", "User Authentication", "110123", "Logout"),
    "record-viewed": ("110110", "Patient Record", "", ""),
    "delivery-retried": ("110106", "Export", "", ""),
}
# Columns that name a patient: in the database only, never in a syslog message.
PATIENT_FIELDS = ("patient_id", "study_instance_uid")


# A peer that keeps being refused for one reason (a port scan, a
# misconfigured modality) gets one security alert per this many seconds,
# carrying the count of those left out, not one row per connection.
ALERT_INTERVAL_SECONDS = 10.0


class AuditTrail:
    """Records events: the row first, then each sink (syslog)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sinks: Sequence[AuditSink] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.sinks = list(sinks)
        self.clock = clock
        self._alerts_lock = threading.Lock()
        # (peer address, event, kind): (when last recorded, how many left out since)
        self._alerts: dict[tuple[str, str, str], tuple[float, int]] = {}

    def record(self, event: str, outcome: int = SUCCESS, /, **fields: Any) -> None:
        """One event; ``fields`` are ``audit_events`` columns."""
        self.record_all([(event, outcome, fields)])

    def record_all(self, events: Sequence[tuple[str, int, dict[str, Any]]]) -> None:
        """Events of one moment (an association's end): one transaction."""
        for event, _outcome, _fields in events:
            if event not in EVENT_CODES:
                raise ValueError(f"Unknown audit event {event!r}")
        row_ids: list[int | None] = [None] * len(events)
        try:
            with self.sessions() as session, session.begin():
                row_ids = [
                    queries.add_audit_event(session, event=event, outcome=outcome, **fields).id
                    for event, outcome, fields in events
                ]
        except Exception:
            logger.exception("Cannot write the audit record of %s", events[0][0])
        for (event, outcome, fields), row_id in zip(events, row_ids, strict=True):
            text = syslog_text(event, outcome, row_id, fields)
            for sink in self.sinks:
                sink.send(event, text, outcome != SUCCESS)

    def security_alert(self, peer: str, detail: str, event: str = "connection-refused") -> None:
        """A refusal; from one peer, at most one each ``ALERT_INTERVAL_SECONDS``."""
        now = self.clock()
        # One kind of refusal: the same words, whatever the numbers in them.
        key = (peer, event, re.sub(r"\d+", "#", detail))
        with self._alerts_lock:
            last, left_out = self._alerts.get(key, (-ALERT_INTERVAL_SECONDS, 0))
            if now - last < ALERT_INTERVAL_SECONDS:
                self._alerts[key] = (last, left_out + 1)
                return
            self._alerts[key] = (now, 0)
            if len(self._alerts) > 10_000:  # forget the quiet ones
                self._alerts = {
                    key: value
                    for key, value in self._alerts.items()
                    if now - value[0] < ALERT_INTERVAL_SECONDS
                }
        if left_out:
            detail += f" (and {left_out} more like it from this peer since the last alert)"
        self.record(event, MINOR_FAILURE, peer_address=peer, detail=detail)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def syslog_text(event: str, outcome: int, row_id: int | None, fields: dict[str, Any]) -> str:
    """The message's JSON: the event, its codes and the fields, no patient."""
    code, meaning, type_code, type_meaning = EVENT_CODES[event]
    message: dict[str, Any] = {
        "event": event,
        "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
        "outcome": outcome,
        "record": row_id,
    }
    if type_code:
        message["event_type"] = {"code": type_code, "scheme": "DCM", "meaning": type_meaning}
    message.update({k: v for k, v in fields.items() if k not in PATIENT_FIELDS and v != ""})
    return json.dumps(message, separators=(",", ":"), default=str)


@dataclasses.dataclass
class _Counts:
    stored: int = 0
    refused: int = 0
    queries: int = 0
    # (Patient ID, Study Instance UID): instances stored for that study
    studies: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


class AssociationAudit:
    """The events of associations: start, end with counts, the instances
    stored for each study (one event per study at the end), and rejections.
    Counts are kept in memory while an association is open."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self._lock = threading.Lock()
        self._open: dict[int, _Counts] = {}

    def _counts(self, assoc: Any) -> _Counts:
        with self._lock:
            return self._open.setdefault(id(assoc), _Counts())

    def store_answered(self, assoc: Any, status: int) -> None:
        counts = self._counts(assoc)
        if status in (Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS):
            counts.stored += 1
        else:
            counts.refused += 1

    def instance_stored(self, assoc: Any, patient_id: str, study_instance_uid: str) -> None:
        studies = self._counts(assoc).studies
        key = (patient_id, study_instance_uid)
        with self._lock:
            studies[key] = studies.get(key, 0) + 1

    def query_answered(self, assoc: Any) -> None:
        self._counts(assoc).queries += 1

    @staticmethod
    def _parties(assoc: Any) -> dict[str, Any]:
        requestor = assoc.requestor
        return {
            "calling_ae_title": str(requestor.ae_title or "").strip(),
            "called_ae_title": str(assoc.acceptor.ae_title or "").strip(),
            "peer_address": f"{requestor.address}:{requestor.port}",
        }

    def _end(self, event: Any, name: str, outcome: int, detail: str = "") -> None:
        assoc = event.assoc
        with self._lock:
            counts = self._open.pop(id(assoc), _Counts())
        parties = self._parties(assoc)
        # The studies' events, then the association's end, in one transaction.
        events: list[tuple[str, int, dict[str, Any]]] = [
            (
                "instances-stored",
                SUCCESS,
                {
                    "patient_id": patient_id,
                    "study_instance_uid": study_uid,
                    "instances_stored": stored,
                    **parties,
                },
            )
            for (patient_id, study_uid), stored in counts.studies.items()
        ]
        ending = {
            "instances_stored": counts.stored,
            "instances_refused": counts.refused,
            "queries": counts.queries,
            "detail": detail,
            **parties,
        }
        self.trail.record_all([*events, (name, outcome, ending)])

    def on_established(self, event: Any) -> None:
        self.trail.record("association-start", **self._parties(event.assoc))

    def on_released(self, event: Any) -> None:
        self._end(event, "released", SUCCESS)

    def on_aborted(self, event: Any) -> None:
        self._end(event, "aborted", MINOR_FAILURE)

    def on_rejected(self, event: Any) -> None:
        self._end(event, "rejected", MINOR_FAILURE, "association rejected at negotiation")
