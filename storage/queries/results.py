"""What the web pages and the REST API show: triaged studies, newest
decision first, and one study with each image's result, its heat map and
where its reports went."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from storage.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceResult,
    OcclusionMapRecord,
    Patient,
    Report,
    Series,
    Study,
    StudyResult,
)


@dataclasses.dataclass(frozen=True)
class StudyFilter:
    """Which triaged studies to list: each field left None matches all."""

    modality: str | None = None  # "oct" or "cxr", as the results name them
    referral: str | None = None  # domain.triage.Referral values
    received_from: dt.date | None = None  # the study's first image, UTC, inclusive
    received_to: dt.date | None = None
    limit: int = 100


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One triaged study, as a list shows it."""

    study_id: int
    patient_name: str
    patient_id: str
    accession_number: str
    study_date: str
    study_description: str
    modality: str
    label: str
    referral: str
    probability: float
    instances_triaged: int
    first_received_at: dt.datetime
    decided_at: dt.datetime
    # "delivered" (every SR delivery done), "failed" (one dead letter),
    # "pending", or "none" (no report yet).
    report_state: str


@dataclasses.dataclass(frozen=True)
class ImageResult:
    instance_id: int
    series_description: str
    modality: str
    state: str
    error: str
    frame_number: int | None
    label: str | None
    referral: str | None
    probability: float | None
    probabilities: dict[str, float]
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    execution_provider: str | None
    map_id: int | None
    map_error: str


@dataclasses.dataclass(frozen=True)
class DeliveryRow:
    delivery_id: int
    object: str  # "report" or "occlusion map"
    destination: str
    state: str
    attempts: int
    last_error: str
    next_attempt_at: dt.datetime
    delivered_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class StudyDetail:
    study: StudyRow | None  # None until the study has a result
    study_id: int
    patient_name: str
    patient_id: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    study_description: str
    state: str
    images: list[ImageResult]
    deliveries: list[DeliveryRow]


def _study_rows() -> Select[Study, Patient, StudyResult]:
    return (
        select(Study, Patient, StudyResult)
        .join(Patient, Study.patient_fk == Patient.id)
        .join(StudyResult, StudyResult.study_fk == Study.id)
    )


def triaged_studies(session: Session, where: StudyFilter) -> list[StudyRow]:
    """Studies with a result, newest decision first."""
    query = _study_rows().order_by(StudyResult.decided_at.desc(), Study.id.desc())
    if where.modality:
        query = query.where(StudyResult.modality == where.modality)
    if where.referral:
        query = query.where(StudyResult.referral == where.referral)
    if where.received_from:
        query = query.where(Study.first_received_at >= _midnight(where.received_from))
    if where.received_to:
        query = query.where(
            Study.first_received_at < _midnight(where.received_to + dt.timedelta(days=1))
        )
    rows = session.execute(query.limit(where.limit)).all()
    states = _report_states(session, [study.id for study, _, _ in rows])
    return [_study_row(study, patient, result, states) for study, patient, result in rows]


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _report_states(session: Session, study_ids: list[int]) -> dict[int, str]:
    """Each study's SR deliveries summed up in one word (see StudyRow)."""
    if not study_ids:
        return {}
    counts = session.execute(
        select(Report.study_fk, Delivery.state, func.count())
        .join(Delivery, Delivery.report_fk == Report.id)
        .where(Report.study_fk.in_(study_ids))
        .group_by(Report.study_fk, Delivery.state)
    ).all()
    by_study: dict[int, set[DeliveryState]] = {}
    for study_id, state, _count in counts:
        by_study.setdefault(study_id, set()).add(state)
    states = {}
    for study_id, seen in by_study.items():
        if DeliveryState.FAILED in seen:
            states[study_id] = "failed"
        elif seen == {DeliveryState.DELIVERED}:
            states[study_id] = "delivered"
        else:
            states[study_id] = "pending"
    return states


def _study_row(
    study: Study, patient: Patient, result: StudyResult, states: dict[int, str]
) -> StudyRow:
    return StudyRow(
        study_id=study.id,
        patient_name=study.patient_name or patient.patient_name,
        patient_id=patient.patient_id,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        modality=result.modality,
        label=result.label,
        referral=result.referral,
        probability=result.probability,
        instances_triaged=result.instances_triaged,
        first_received_at=study.first_received_at,
        decided_at=result.decided_at,
        report_state=states.get(study.id, "none"),
    )


def study_detail(session: Session, study_id: int) -> StudyDetail | None:
    """One study: its result, each image's, the heat maps and the deliveries."""
    found = session.execute(
        select(Study, Patient).join(Patient).where(Study.id == study_id)
    ).one_or_none()
    if found is None:
        return None
    study, patient = found
    result = session.scalar(select(StudyResult).where(StudyResult.study_fk == study_id))
    row = (
        _study_row(study, patient, result, _report_states(session, [study_id]))
        if result is not None
        else None
    )
    images = session.execute(
        select(Instance, Series, InstanceResult, OcclusionMapRecord.id)
        .join(Series, Instance.series_fk == Series.id)
        .outerjoin(InstanceResult, InstanceResult.instance_fk == Instance.id)
        .outerjoin(OcclusionMapRecord, OcclusionMapRecord.instance_fk == Instance.id)
        .where(Instance.study_fk == study_id)
        .order_by(Series.series_number, Instance.id)
    ).all()
    return StudyDetail(
        study=row,
        study_id=study.id,
        patient_name=study.patient_name or patient.patient_name,
        patient_id=patient.patient_id,
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        state=study.state.value,
        images=[_image(*image) for image in images],
        deliveries=study_deliveries(session, study_id),
    )


def _image(
    instance: Instance, series: Series, result: InstanceResult | None, map_id: int | None
) -> ImageResult:
    return ImageResult(
        instance_id=instance.id,
        series_description=series.series_description,
        modality=series.modality,
        state=instance.state.value,
        error=instance.error,
        frame_number=result.frame_number if result else None,
        label=result.label if result else None,
        referral=result.referral if result else None,
        probability=result.probability if result else None,
        probabilities=dict(result.probabilities) if result else {},
        model_name=result.model_name if result else None,
        model_version=result.model_version if result else None,
        model_sha256=result.model_sha256 if result else None,
        execution_provider=result.execution_provider if result else None,
        map_id=map_id,
        map_error=instance.map_error,
    )


def study_deliveries(session: Session, study_id: int) -> list[DeliveryRow]:
    """Every delivery of the study's reports and heat maps, the newest object first."""
    query = (
        select(Delivery)
        .outerjoin(Report, Delivery.report_fk == Report.id)
        .outerjoin(OcclusionMapRecord, Delivery.occlusion_fk == OcclusionMapRecord.id)
        .where((Report.study_fk == study_id) | (OcclusionMapRecord.study_fk == study_id))
        .order_by(Delivery.report_fk.is_(None), Delivery.id.desc())
    )
    return [
        DeliveryRow(
            delivery_id=delivery.id,
            object="report" if delivery.report_fk else "occlusion map",
            destination=f"{delivery.ae_title}@{delivery.host}:{delivery.port}",
            state=delivery.state.value,
            attempts=delivery.attempts,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            delivered_at=delivery.delivered_at,
        )
        for delivery in session.scalars(query)
    ]


def delivery_study(session: Session, delivery_id: int) -> int | None:
    """The study a delivery's object belongs to."""
    return session.scalar(
        select(func.coalesce(Report.study_fk, OcclusionMapRecord.study_fk))
        .select_from(Delivery)
        .outerjoin(Report, Delivery.report_fk == Report.id)
        .outerjoin(OcclusionMapRecord, Delivery.occlusion_fk == OcclusionMapRecord.id)
        .where(Delivery.id == delivery_id)
    )


def occlusion_map_content(session: Session, map_id: int) -> tuple[int, bytes] | None:
    """A heat map's study and its Secondary Capture bytes."""
    found = session.execute(
        select(OcclusionMapRecord.study_fk, OcclusionMapRecord.content).where(
            OcclusionMapRecord.id == map_id
        )
    ).one_or_none()
    return (found[0], found[1]) if found is not None else None
