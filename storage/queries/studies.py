"""Studies: reopened by a new image, their result kept current, reported once stable."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import ColumnElement, bindparam, exists, func, select, update
from sqlalchemy.orm import Session

from domain.retry import RetryPolicy
from domain.triage import Referral
from storage.models import (
    Instance,
    InstanceResult,
    InstanceState,
    Study,
    StudyResult,
    StudyState,
    utcnow,
)
from storage.queries.common import Bind, database_now


def reopen_studies(bind: Bind, study_ids: Iterable[int], now: dt.datetime) -> None:
    """New or replaced images: each study waits for a (new) report.

    An explicit UPDATE that always writes the state and raises the
    revision, so that a report being built concurrently from the older
    revision cannot be committed (``commit_report``) and a study already
    reported is reopened. One statement for all of them (Core
    ``executemany``), run in id order: concurrent writers lock the rows
    in one order and cannot deadlock.
    """
    params = [{"reopened_id": study_id, "now": now} for study_id in sorted(set(study_ids))]
    if params:
        bind.execute(_REOPEN, params)


# Built once (Core, on the table: no ORM bulk update): it runs for every
# batch of received images.
_STUDIES = Study.metadata.tables[Study.__tablename__]
_REOPEN = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("reopened_id"))
    .values(
        state=StudyState.RECEIVING,
        last_received_at=bindparam("now"),
        revision=_STUDIES.c.revision + 1,
        report_attempts=0,
        report_error="",
        retry_at=None,
    )
)


def update_study_result(session: Session, study_id: int) -> None:
    """The most urgent image decides; among equals, the most confident."""
    # Serialise the instances of one study across threads and nodes. FOR NO
    # KEY UPDATE on PostgreSQL (key_share), not FOR UPDATE: the writer's
    # INSERTs take a key-share lock on each study they reference (the
    # foreign keys), which FOR UPDATE would wait for, and with the writer
    # waiting in turn for a study held here, the two deadlocked.
    session.execute(select(Study.id).where(Study.id == study_id).with_for_update(key_share=True))
    results = list(
        session.scalars(select(InstanceResult).join(Instance).where(Instance.study_fk == study_id))
    )
    if not results:
        return
    deciding = min(results, key=lambda r: (Referral(r.referral).rank, -r.probability))
    current = session.scalar(select(StudyResult).where(StudyResult.study_fk == study_id))
    if current is None:
        current = StudyResult(study_fk=study_id)
        session.add(current)
    current.deciding_instance_fk = deciding.instance_fk
    current.modality = deciding.modality
    current.label = deciding.label
    current.referral = deciding.referral
    current.probability = deciding.probability
    current.instances_triaged = len(results)
    current.decided_at = utcnow()


def _ready_to_report(now: dt.datetime, stable_seconds: float) -> ColumnElement[bool]:
    """Receiving, quiet for ``stable_seconds``, nothing awaiting inference, not resting."""
    cutoff = now - dt.timedelta(seconds=stable_seconds)
    awaiting = exists().where(
        Instance.study_fk == Study.id, Instance.state == InstanceState.RECEIVED
    )
    return (
        (Study.state == StudyState.RECEIVING)
        & (Study.last_received_at <= cutoff)
        & (Study.retry_at.is_(None) | (Study.retry_at <= now))
        & ~awaiting
    )


def studies_ready_to_report(session: Session, stable_seconds: float, limit: int = 50) -> list[int]:
    """Ids of the studies ready for their report, longest waiting first."""
    now = database_now(session)
    return list(
        session.scalars(
            select(Study.id)
            .where(_ready_to_report(now, stable_seconds))
            .order_by(Study.last_received_at)
            .limit(limit)
        )
    )


def seconds_until_quiet(session: Session, stable_seconds: float) -> float | None:
    """Seconds until the next receiving study has been quiet for ``stable_seconds``
    (0 if one already has); None when no study is receiving."""
    now = database_now(session)
    last = session.scalar(
        select(func.min(Study.last_received_at)).where(
            Study.state == StudyState.RECEIVING,
            Study.last_received_at > now - dt.timedelta(seconds=stable_seconds),
        )
    )
    if last is None:
        return None
    return max(0.0, (last + dt.timedelta(seconds=stable_seconds) - now).total_seconds())


def study_if_ready(session: Session, study_id: int, stable_seconds: float) -> Study | None:
    """The study if it is (still) ready to report; its revision is read with it."""
    now = database_now(session)
    return session.scalar(
        select(Study).where(Study.id == study_id, _ready_to_report(now, stable_seconds))
    )


def commit_report_state(session: Session, study_id: int, revision: int, state: StudyState) -> bool:
    """Move a study to REPORTED (or NOT_REPORTABLE) if it is still at ``revision``.

    False when an image arrived since the report was built: it is then not
    committed, and the study is reported again once it is quiet.
    """
    result = session.execute(
        update(Study)
        .where(
            Study.id == study_id,
            Study.revision == revision,
            Study.state == StudyState.RECEIVING,
        )
        .values(state=state, report_attempts=0, report_error="", retry_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def report_failed(
    session: Session,
    study_id: int,
    error: str,
    policy: RetryPolicy,
) -> float | None:
    """Count a failed report of a study and schedule the next try.

    Returns the seconds it rests, as ``policy`` says, or None when the study
    is parked (past the policy's last try, or it is gone).
    """
    study = session.get(Study, study_id)
    if study is None:
        return None
    study.report_attempts += 1
    study.report_error = error[:2000]
    delay = policy.after_failure(study.report_attempts)
    if delay is None:
        study.state = StudyState.REPORT_FAILED
        study.retry_at = None
        return None
    study.retry_at = database_now(session) + dt.timedelta(seconds=delay)
    return delay


def triaged_instances(session: Session, study: Study) -> list[Instance]:
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_fk == study.id, Instance.state == InstanceState.TRIAGED)
            .order_by(Instance.id)
        )
    )
