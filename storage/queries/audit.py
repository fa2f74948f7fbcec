"""The audit trail: events added as they happen, read back with filters."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.models import AuditEvent, Delivery, Report


def add_audit_event(session: Session, **fields: object) -> AuditEvent:
    """One event; ``fields`` are ``AuditEvent`` columns (texts cut to fit)."""
    for name, width in (
        ("calling_ae_title", 16),
        ("called_ae_title", 16),
        ("peer_address", 64),
        ("patient_id", 64),
        ("study_instance_uid", 64),
        ("detail", 2000),
    ):
        if name in fields:
            fields[name] = str(fields[name] or "")[:width]
    event = AuditEvent(**fields)
    session.add(event)
    session.flush()
    return event


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # An address (with or without its port) or a calling or called AE title.
    peer: str = ""
    patient_id: str = ""
    event: str = ""
    limit: int = 1000


def audit_events(session: Session, where: AuditFilter) -> list[AuditEvent]:
    """Events matching ``where``, oldest first (the newest ``limit``)."""
    query = select(AuditEvent)
    if where.since is not None:
        query = query.where(AuditEvent.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEvent.at < where.until)
    if where.peer:
        query = query.where(
            or_(
                AuditEvent.peer_address == where.peer,
                AuditEvent.peer_address.startswith(f"{where.peer}:"),
                AuditEvent.calling_ae_title == where.peer,
                AuditEvent.called_ae_title == where.peer,
            )
        )
    if where.patient_id:
        query = query.where(AuditEvent.patient_id == where.patient_id)
    if where.event:
        query = query.where(AuditEvent.event == where.event)
    newest = session.scalars(query.order_by(AuditEvent.id.desc()).limit(where.limit)).all()
    return list(reversed(newest))


def delivery_subject(session: Session, delivery_id: int) -> tuple[str, str]:
    """The Patient ID and Study Instance UID a delivery's object is about."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None or delivery.report_fk is None:
        return "", ""
    report = session.get(Report, delivery.report_fk)
    if report is None:
        return "", ""
    study = report.study
    return str(study.patient.patient_id or ""), str(study.study_instance_uid)
