"""The urgent worklist: one entry per study whose result is an urgent referral."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.triage import Referral
from storage.models import (
    Delivery,
    DeliveryState,
    Instance,
    Patient,
    Report,
    Series,
    Study,
    StudyResult,
)


@dataclasses.dataclass(frozen=True)
class WorklistEntry:
    """One urgent study, as the worklist shows it."""

    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    referring_physician_name: str
    modality: str
    finding: str
    referral: str
    probability: float
    decided_at: dt.datetime
    report_sent: bool


def urgent_worklist(session: Session, limit: int | None = None) -> list[WorklistEntry]:
    """Studies whose result is an urgent referral, oldest decision first.

    With ``limit``, only the ``limit`` most recent decisions.
    """
    query = (
        select(Study, Patient, StudyResult, Instance, Series)
        .join(Patient, Study.patient_fk == Patient.id)
        .join(StudyResult, StudyResult.study_fk == Study.id)
        .join(Instance, StudyResult.deciding_instance_fk == Instance.id)
        .join(Series, Instance.series_fk == Series.id)
        .where(StudyResult.referral == Referral.URGENT.value)
        .order_by(StudyResult.decided_at.desc(), Study.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    rows = list(reversed(session.execute(query).all()))
    delivered_studies = set(
        session.scalars(
            select(Report.study_fk).join(Delivery).where(Delivery.state == DeliveryState.DELIVERED)
        )
    )
    return [
        WorklistEntry(
            patient_name=study.patient_name or patient.patient_name,
            patient_id=patient.patient_id,
            patient_birth_date=study.patient_birth_date or patient.birth_date,
            patient_sex=study.patient_sex or patient.sex,
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            study_date=study.study_date,
            study_time=study.study_time,
            study_description=study.study_description,
            referring_physician_name=study.referring_physician_name,
            modality=series.modality,
            finding=result.label,
            referral=result.referral,
            probability=result.probability,
            decided_at=result.decided_at,
            report_sent=study.id in delivered_studies,
        )
        for study, patient, result, _instance, series in rows
    ]
