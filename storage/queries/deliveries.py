"""Deliveries: the outbox, one row per object and destination, and every change of its state."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from domain.retry import RetryPolicy
from storage.models import (
    Delivery,
    DeliveryState,
    OcclusionMapRecord,
    Report,
    Study,
    utcnow,
)
from storage.queries.common import Destination, database_now, lease_row


def due_deliveries(session: Session, destination: Destination, limit: int = 20) -> list[int]:
    """Ids of pending deliveries to ``destination`` whose time has come, not leased.

    The SR goes first: a map's delivery is due only once a report of the
    same study has been delivered to the same destination.
    """
    now = database_now(session)
    ae_title, host, port = destination
    sr_delivery = aliased(Delivery)
    sr_first = exists().where(
        OcclusionMapRecord.id == Delivery.occlusion_fk,
        Report.study_fk == OcclusionMapRecord.study_fk,
        sr_delivery.report_fk == Report.id,
        sr_delivery.ae_title == Delivery.ae_title,
        sr_delivery.host == Delivery.host,
        sr_delivery.port == Delivery.port,
        sr_delivery.state == DeliveryState.DELIVERED,
    )
    return list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
            .where(Delivery.ae_title == ae_title, Delivery.host == host, Delivery.port == port)
            .where(Delivery.lease_until.is_(None) | (Delivery.lease_until < now))
            .where(Delivery.occlusion_fk.is_(None) | sr_first)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(limit)
        )
    )


def pending_destinations(session: Session) -> list[Destination]:
    """Every destination that has a delivery waiting."""
    rows = session.execute(
        select(Delivery.ae_title, Delivery.host, Delivery.port)
        .where(Delivery.state == DeliveryState.PENDING)
        .distinct()
    ).all()
    return [(str(ae), str(host), int(port)) for ae, host, port in rows]


def lease_delivery(session: Session, delivery_id: int, lease_seconds: float) -> Delivery | None:
    """Take a due delivery: count an attempt and lease it, in a short transaction.

    The C-STORE then runs with no transaction open, and its outcome is
    recorded after. None if it is delivered already or leased.
    """
    return lease_row(session, Delivery, delivery_id, DeliveryState.PENDING, lease_seconds)


def record_delivery_outcome(
    session: Session, delivery: Delivery, error: str | None, policy: RetryPolicy
) -> float | None:
    """Record one attempt's outcome (its attempt was counted when it was leased).

    Delivered, or a failure: then either retried after the policy's delay
    (returned) or, past its last one, dead-lettered (None).
    """
    delivery.lease_until = None
    if error is None:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = database_now(session)
        delivery.last_error = ""
        return None
    delivery.last_error = error[:2000]
    delay = policy.after_failure(delivery.attempts)
    if delay is None:
        delivery.state = DeliveryState.FAILED
        return None
    delivery.next_attempt_at = database_now(session) + dt.timedelta(seconds=delay)
    return delay


def queue_deliveries(
    session: Session,
    destinations: Sequence[Destination],
    *,
    report: Report | None = None,
    occlusion: OcclusionMapRecord | None = None,
) -> None:
    """One pending delivery of a report or a map per destination, due at once.

    Due by the database's clock, the one ``due_deliveries`` compares with:
    the node's own clock may be ahead of it (another host, or just finer
    than SQLite's milliseconds), and the row would wait for no reason.
    """
    if (report is None) == (occlusion is None):
        raise ValueError("A delivery carries exactly one of a report and an occlusion map.")
    now = database_now(session)
    for ae_title, host, port in destinations:
        session.add(
            Delivery(
                report=report,
                occlusion=occlusion,
                ae_title=ae_title,
                host=host,
                port=port,
                next_attempt_at=now,
            )
        )


def add_occlusion_deliveries(
    session: Session, record: OcclusionMapRecord, destinations: Sequence[Destination]
) -> None:
    queue_deliveries(session, destinations, occlusion=record)


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    delivery_id: int
    object: str
    study_id: int
    study_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str


def outbox(session: Session, state: DeliveryState | None = None) -> list[OutboxRow]:
    query = (
        select(Delivery, Study)
        .outerjoin(Report, Delivery.report_fk == Report.id)
        .outerjoin(OcclusionMapRecord, Delivery.occlusion_fk == OcclusionMapRecord.id)
        .join(
            Study,
            (Study.id == Report.study_fk) | (Study.id == OcclusionMapRecord.study_fk),
        )
        .order_by(Delivery.id)
    )
    if state is not None:
        query = query.where(Delivery.state == state)
    return [
        OutboxRow(
            delivery_id=delivery.id,
            object=delivery.object_name,
            study_id=study.id,
            study_instance_uid=study.study_instance_uid,
            destination=f"{delivery.ae_title}@{delivery.host}:{delivery.port}",
            state=delivery.state.value,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_error=delivery.last_error,
        )
        for delivery, study in session.execute(query).all()
    ]


def retry_deliveries(session: Session, delivery_ids: Sequence[int] | None) -> int:
    """Put dead-lettered deliveries (or the given ones) back in the queue, now."""
    query = select(Delivery).where(Delivery.state != DeliveryState.DELIVERED)
    if delivery_ids is not None:
        query = query.where(Delivery.id.in_(delivery_ids))
    else:
        query = query.where(Delivery.state == DeliveryState.FAILED)
    rows = list(session.scalars(query))
    for delivery in rows:
        delivery.state = DeliveryState.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = database_now(session)
    return len(rows)


def purge_deliveries(session: Session, state: DeliveryState, older_than: dt.timedelta) -> int:
    """Delete delivered or dead-lettered rows whose last change is older than ``older_than``."""
    cutoff = utcnow() - older_than
    rows = list(
        session.scalars(
            select(Delivery).where(Delivery.state == state, Delivery.next_attempt_at <= cutoff)
        )
    )
    for delivery in rows:
        session.delete(delivery)
    return len(rows)


def delivery_counts(session: Session) -> tuple[int, int]:
    """(pending, dead-lettered) deliveries, for the health status."""
    rows = dict(
        session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    )
    return int(rows.get(DeliveryState.PENDING, 0)), int(rows.get(DeliveryState.FAILED, 0))
