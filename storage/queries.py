"""The daemon's reads and writes, one function per question or change.

Every function takes a ``Session`` and leaves committing to the caller, so
that the caller decides what is one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, aliased

from dicom_io.codes import Referral
from domain.triage import Classification
from storage.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceResult,
    InstanceState,
    OcclusionMapRecord,
    Patient,
    Report,
    Series,
    Study,
    StudyResult,
    StudyState,
    utcnow,
)

# Issuer given to the patient row of a study whose images have no Patient ID.
NO_PATIENT_ID_ISSUER = "no-patient-id:"


def _text(dataset: Dataset, keyword: str, limit: int = 64) -> str:
    value = dataset.get(keyword, "")
    return str(value if value is not None else "")[:limit]


def database_now(session: Session) -> dt.datetime:
    """The database server's clock, as naive UTC.

    Nodes compare times they did not write themselves (when a study last
    received an image, until when a lease holds), so every such time comes
    from the one clock they share.
    """
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(text("select (clock_timestamp() at time zone 'utc')"))
    else:
        value = session.scalar(text("select strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"The database returned {value!r} for the time.")
    return value.replace(tzinfo=None)


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def _delete_occlusion_maps(session: Session, condition: ColumnElement[bool]) -> None:
    """Delete the occlusion maps matching ``condition`` with their deliveries."""
    for record in session.scalars(select(OcclusionMapRecord).where(condition)):
        for delivery in record.deliveries:
            session.delete(delivery)
        session.delete(record)


def replace_instance(session: Session, sop_instance_uid: str, **fields: object) -> Instance:
    """Point an instance at a new copy; its result goes and it is triaged again.

    Its study is reopened, so that a new report replaces the old one's
    content (the old SR stays in the reports table for the audit trail).
    """
    instance = find_instance(session, sop_instance_uid)
    if instance is None:
        raise KeyError(sop_instance_uid)
    for name, value in fields.items():
        setattr(instance, name, value)
    if instance.result is not None:
        session.delete(instance.result)
    _delete_occlusion_maps(session, OcclusionMapRecord.instance_fk == instance.id)
    now = database_now(session)
    instance.state = InstanceState.RECEIVED
    instance.error = ""
    instance.attempts = 0
    instance.lease_until = None
    instance.received_at = now
    session.flush()
    _reopen_study(session, instance.study_fk, now)
    return instance


def _reopen_study(session: Session, study_id: int, now: dt.datetime) -> None:
    """A new or replaced image: the study waits for a (new) report.

    An explicit UPDATE that always writes the state and raises the
    revision, so that a report being built concurrently from the older
    revision cannot be committed (``commit_report``) and a study already
    reported is reopened.
    """
    session.execute(
        update(Study)
        .where(Study.id == study_id)
        .values(
            state=StudyState.RECEIVING,
            last_received_at=now,
            revision=Study.revision + 1,
            report_attempts=0,
            report_error="",
            retry_at=None,
        )
        .execution_options(synchronize_session=False)
    )


def record_instance(
    session: Session,
    header: Dataset,
    *,
    transfer_syntax_uid: str,
    path: str,
    size_bytes: int,
    sha256: str,
    calling_ae_title: str,
) -> Instance:
    """Add a received instance with its patient, study and series rows.

    The images of one new study often arrive over several associations at
    once, so the patient, study and series rows are created race-free
    (``INSERT ... ON CONFLICT DO NOTHING``, then read back): whichever
    association comes first creates them and the others use them. Only the
    instance's own insert can fail, and only for a second copy of the same
    SOP Instance UID.
    """
    now = database_now(session)
    patient_id = _patient_key(header)
    patient = _get_or_insert(
        session,
        Patient,
        {"patient_id": patient_id[0], "issuer_of_patient_id": patient_id[1]},
        patient_name=_text(header, "PatientName", 324),
        birth_date=_text(header, "PatientBirthDate", 8),
        sex=_text(header, "PatientSex", 16),
    )
    study = _get_or_insert(
        session,
        Study,
        {"study_instance_uid": str(header.StudyInstanceUID)},
        patient_fk=patient.id,
        accession_number=_text(header, "AccessionNumber", 16),
        study_id=_text(header, "StudyID", 16),
        study_date=_text(header, "StudyDate", 8),
        study_time=_text(header, "StudyTime", 32),
        study_description=_text(header, "StudyDescription", 324),
        referring_physician_name=_text(header, "ReferringPhysicianName", 324),
        patient_name=_text(header, "PatientName", 324),
        patient_birth_date=_text(header, "PatientBirthDate", 8),
        patient_sex=_text(header, "PatientSex", 16),
        first_received_at=now,
        last_received_at=now,
        state=StudyState.RECEIVING,
    )
    # A late instance reopens a reported study: it gets a new report.
    _reopen_study(session, study.id, now)
    series = _get_or_insert(
        session,
        Series,
        {"series_instance_uid": str(header.SeriesInstanceUID)},
        study_fk=study.id,
        modality=_text(header, "Modality", 16),
        body_part_examined=_text(header, "BodyPartExamined", 64).upper(),
        series_number=_text(header, "SeriesNumber", 12),
        series_description=_text(header, "SeriesDescription", 324),
    )
    instance = Instance(
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        series_fk=series.id,
        study_fk=study.id,
        transfer_syntax_uid=transfer_syntax_uid,
        path=path,
        size_bytes=size_bytes,
        sha256=sha256,
        calling_ae_title=calling_ae_title,
        received_at=now,
        state=InstanceState.RECEIVED,
    )
    session.add(instance)
    session.flush()
    return instance


_Row = TypeVar("_Row", Patient, Study, Series)


def _get_or_insert(
    session: Session, model: type[_Row], key: dict[str, object], **values: object
) -> _Row:
    """The row with ``key`` (its unique columns), inserted first if there is none.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key
    to commit (PostgreSQL) or runs under SQLite's single writer, so the row
    is then read back in the same transaction either way.
    """
    dialect = session.get_bind().dialect.name
    insert_for = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        insert_for(model).values(**key, **values).on_conflict_do_nothing(index_elements=list(key))
    )
    query = select(model)
    for column, value in key.items():
        query = query.where(getattr(model, column) == value)
    return session.scalars(query).one()


def _patient_key(header: Dataset) -> tuple[str, str]:
    """(Patient ID, issuer) for the patients table.

    An image without a Patient ID gets a patient of its own study: images
    with an empty Patient ID are no evidence of one person, and sharing a
    row would show one patient's name on another's study.
    """
    patient_id = _text(header, "PatientID", 64)
    issuer = _text(header, "IssuerOfPatientID", 64)
    if not patient_id.strip():
        study = hashlib.sha256(str(header.StudyInstanceUID).encode()).hexdigest()[:40]
        return "", f"{NO_PATIENT_ID_ISSUER}{study}"
    return patient_id, issuer


def lease_instance(session: Session, instance_id: int, lease_seconds: float) -> Instance | None:
    """Take an instance waiting for inference: count an attempt, lease it.

    None if it is done already or another worker (or node) holds it.
    Committed before decoding starts, so an image that crashes or hangs
    the worker still has its attempt counted.
    """
    return _lease(session, Instance, instance_id, InstanceState.RECEIVED, lease_seconds)


_Leasable = TypeVar("_Leasable", Instance, Delivery)


def _lease(
    session: Session,
    model: type[_Leasable],
    row_id: int,
    waiting: InstanceState | DeliveryState,
    lease_seconds: float,
) -> _Leasable | None:
    """Lease a row in state ``waiting`` that nobody holds: one more attempt, a deadline.

    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets several nodes share the
    work; SQLite has a single writer. The deadline is the database's clock.
    """
    now = database_now(session)
    row = session.scalar(
        select(model)
        .where(model.id == row_id, model.state == waiting)
        .where(model.lease_until.is_(None) | (model.lease_until < now))
        .with_for_update(skip_locked=True)
    )
    if row is not None:
        row.attempts += 1
        row.lease_until = now + dt.timedelta(seconds=lease_seconds)
    return row


def leased_instance(session: Session, instance_id: int, path: str) -> Instance | None:
    """The instance if it still waits for the result of the file ``path``."""
    return session.scalar(
        select(Instance)
        .where(
            Instance.id == instance_id,
            Instance.state == InstanceState.RECEIVED,
            Instance.path == path,
        )
        .with_for_update()
    )


def release_instance(session: Session, instance_id: int, error: str) -> None:
    """Give a leased instance back for another try, keeping the error that stopped this one."""
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.state == InstanceState.RECEIVED)
        .values(lease_until=None, error=error[:2000])
    )


def release_all_leases(session: Session) -> int:
    """Free every lease, for a single node starting up (its old process is gone)."""
    freed = session.execute(
        update(Instance).where(Instance.lease_until.is_not(None)).values(lease_until=None)
    )
    session.execute(
        update(Delivery).where(Delivery.lease_until.is_not(None)).values(lease_until=None)
    )
    return int(getattr(freed, "rowcount", 0) or 0)


def work_counts(session: Session) -> dict[str, int]:
    """Parked and failed work, for the status file and the metrics."""
    studies = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
    instances = dict(
        session.execute(select(Instance.state, func.count()).group_by(Instance.state)).all()
    )
    return {
        "studies_report_failed": int(studies.get(StudyState.REPORT_FAILED, 0)),
        "studies_receiving": int(studies.get(StudyState.RECEIVING, 0)),
        "instances_waiting": int(instances.get(InstanceState.RECEIVED, 0)),
        "instances_failed": int(instances.get(InstanceState.FAILED, 0)),
    }


def pending_instance_ids(session: Session, limit: int) -> list[int]:
    """Instances stored but not yet triaged nor held by a worker, oldest first."""
    now = database_now(session)
    return list(
        session.scalars(
            select(Instance.id)
            .where(Instance.state == InstanceState.RECEIVED)
            .where(Instance.lease_until.is_(None) | (Instance.lease_until < now))
            .order_by(Instance.id)
            .limit(limit)
        )
    )


def record_result(session: Session, instance: Instance, result: Classification) -> None:
    """Store an instance's result and bring its study's result up to date."""
    session.add(
        InstanceResult(
            instance=instance,
            modality=result.modality,
            model_name=result.model_name,
            model_version=result.model_version,
            model_sha256=result.model_sha256,
            label=result.label,
            referral=result.referral.value,
            probability=result.probability,
            probabilities=result.probabilities,
            frame_number=result.frame_number,
            execution_provider=result.execution_provider,
            inference_ms=result.inference_ms,
        )
    )
    instance.state = InstanceState.TRIAGED
    instance.lease_until = None
    session.flush()
    _update_study_result(session, instance.study)


def _update_study_result(session: Session, study: Study) -> None:
    """The most urgent image decides; among equals, the most confident."""
    # Serialise the instances of one study across threads and nodes.
    session.execute(select(Study.id).where(Study.id == study.id).with_for_update())
    results = list(
        session.scalars(select(InstanceResult).join(Instance).where(Instance.study_fk == study.id))
    )
    if not results:
        return
    deciding = min(results, key=lambda r: (Referral(r.referral).rank, -r.probability))
    current = session.scalar(select(StudyResult).where(StudyResult.study_fk == study.id))
    if current is None:
        current = StudyResult(study=study)
        session.add(current)
    current.deciding_instance_fk = deciding.instance_fk
    current.modality = deciding.modality
    current.label = deciding.label
    current.referral = deciding.referral
    current.probability = deciding.probability
    current.instances_triaged = len(results)
    current.decided_at = utcnow()


def mark_instance(session: Session, instance: Instance, state: InstanceState, error: str) -> None:
    instance.state = state
    instance.error = error[:2000]
    instance.lease_until = None


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
    max_attempts: int,
    retry_in: Callable[[int], float],
) -> float | None:
    """Count a failed report of a study and schedule the next try.

    ``retry_in(attempts)`` gives the seconds to wait after that many failures.
    Returns those seconds, or None when the study is parked (``max_attempts``
    reached, or it is gone).
    """
    study = session.get(Study, study_id)
    if study is None:
        return None
    study.report_attempts += 1
    study.report_error = error[:2000]
    if study.report_attempts >= max_attempts:
        study.state = StudyState.REPORT_FAILED
        study.retry_at = None
        return None
    delay = retry_in(study.report_attempts)
    study.retry_at = database_now(session) + dt.timedelta(seconds=delay)
    return delay


def latest_report(session: Session, study_id: int) -> Report | None:
    """The study's newest report, the one a new version supersedes."""
    return session.scalar(
        select(Report).where(Report.study_fk == study_id).order_by(Report.id.desc()).limit(1)
    )


def triaged_instances(session: Session, study: Study) -> list[Instance]:
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_fk == study.id, Instance.state == InstanceState.TRIAGED)
            .order_by(Instance.id)
        )
    )


def add_report(
    session: Session,
    study: Study,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    sop_class_uid: str,
    content: bytes,
    destinations: Sequence[tuple[str, str, int]],
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
    for ae_title, host, port in destinations:
        session.add(Delivery(report=report, ae_title=ae_title, host=host, port=port))
    session.flush()
    return report


Destination = tuple[str, str, int]  # (AE title, host, port)


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
    return _lease(session, Delivery, delivery_id, DeliveryState.PENDING, lease_seconds)


def instances_needing_maps(
    session: Session, referrals: Sequence[str], limit: int, exclude: Collection[int] = ()
) -> list[int]:
    """Triaged images the policy covers, in reported studies, without a map yet."""
    has_map = exists().where(OcclusionMapRecord.instance_fk == Instance.id)
    query = (
        select(Instance.id)
        .join(InstanceResult, InstanceResult.instance_fk == Instance.id)
        .join(Study, Study.id == Instance.study_fk)
        .where(
            Instance.state == InstanceState.TRIAGED,
            Instance.path != "",
            InstanceResult.referral.in_(list(referrals)),
            Study.state == StudyState.REPORTED,
            ~has_map,
        )
    )
    if exclude:
        query = query.where(Instance.id.not_in(list(exclude)))
    return list(session.scalars(query.order_by(Instance.id).limit(limit)))


def add_occlusion_deliveries(
    session: Session, record: OcclusionMapRecord, destinations: Sequence[tuple[str, str, int]]
) -> None:
    for ae_title, host, port in destinations:
        session.add(Delivery(occlusion=record, ae_title=ae_title, host=host, port=port))


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


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    delivery_id: int
    object: str
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
        delivery.next_attempt_at = utcnow()
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
        _delete_occlusion_maps(session, OcclusionMapRecord.study_fk == study.id)
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


def delivery_counts(session: Session) -> tuple[int, int]:
    """(pending, dead-lettered) deliveries, for the health status."""
    rows = dict(
        session.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    )
    return int(rows.get(DeliveryState.PENDING, 0)), int(rows.get(DeliveryState.FAILED, 0))
