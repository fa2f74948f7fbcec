"""Retention: retiring studies past their time, and what that frees."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from storage.models import (
    Delivery,
    DeliveryState,
    Instance,
    OcclusionMapRecord,
    Report,
    Study,
    StudyState,
)
from storage.queries.common import database_now
from storage.queries.occlusion_maps import delete_occlusion_maps


@dataclasses.dataclass(frozen=True)
class Purge:
    """What ``purge_studies`` did, and what it left and why."""

    retired: int
    files: list[str]
    skipped_undelivered: int  # a report of theirs is pending or dead-lettered
    skipped_unreported: int  # still receiving, or their report is parked


def purge_studies(session: Session, older_than: dt.timedelta, keep_results: bool) -> Purge:
    """Retire finished studies last touched before ``older_than`` ago.

    A study qualifies when it is reported (or not reportable) and every
    delivery of every report of it has been delivered: a dead-lettered
    report keeps its study (and its images) until it is delivered or its
    delivery is purged. Returns the spool files the caller deletes once
    this transaction commits, and how many old studies were skipped and
    why. With ``keep_results`` only the image files go; otherwise every row
    of the study goes too (patients left without studies as well).
    """
    cutoff = database_now(session) - older_than
    undelivered = exists().where(
        Report.study_fk == Study.id,
        Delivery.report_fk == Report.id,
        Delivery.state != DeliveryState.DELIVERED,
    )
    old = Study.last_received_at < cutoff
    finished = Study.state.in_([StudyState.REPORTED, StudyState.NOT_REPORTABLE])
    studies = list(session.scalars(select(Study).where(old, finished, ~undelivered)))
    skipped_undelivered = session.scalar(
        select(func.count()).select_from(Study).where(old, finished, undelivered)
    )
    skipped_unreported = session.scalar(
        select(func.count()).select_from(Study).where(old, ~finished)
    )
    files: list[str] = []
    for study in studies:
        instances = list(session.scalars(select(Instance).where(Instance.study_fk == study.id)))
        files.extend(i.path for i in instances if i.path)
        if keep_results:
            for instance in instances:
                instance.path = ""
            continue
        reports = list(session.scalars(select(Report).where(Report.study_fk == study.id)))
        for report in reports:
            for delivery in report.deliveries:
                session.delete(delivery)
            session.delete(report)
        if study.result is not None:
            session.delete(study.result)
        delete_occlusion_maps(session, OcclusionMapRecord.study_fk == study.id)
        session.flush()
        for instance in instances:
            if instance.result is not None:
                session.delete(instance.result)
            session.delete(instance)
        session.flush()
        for series in list(study.series):
            session.delete(series)
        patient = study.patient
        session.delete(study)
        session.flush()
        if not session.scalar(select(exists().where(Study.patient_fk == patient.id))):
            session.delete(patient)
    return Purge(len(studies), files, int(skipped_undelivered or 0), int(skipped_unreported or 0))
