"""Reports: the SR of a study, each later one superseding the one before."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Report, Study
from storage.queries.common import Destination
from storage.queries.deliveries import queue_deliveries


def latest_report(session: Session, study_id: int) -> Report | None:
    """The study's newest report, the one a new version supersedes."""
    return session.scalar(
        select(Report).where(Report.study_fk == study_id).order_by(Report.id.desc()).limit(1)
    )


def add_report(
    session: Session,
    study: Study,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    sop_class_uid: str,
    content: bytes,
    destinations: Sequence[Destination],
    supersedes: int | None = None,
) -> Report:
    """Store a report and queue one delivery per destination.

    The caller has moved the study to REPORTED (``commit_report_state``)
    in the same transaction.
    """
    report = Report(
        study=study,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        sop_class_uid=sop_class_uid,
        content=content,
        supersedes_fk=supersedes,
    )
    session.add(report)
    queue_deliveries(session, destinations, report=report)
    session.flush()
    return report
