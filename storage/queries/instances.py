"""Instances: recorded on receipt, leased for triage, given their result or a final state."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydicom.dataset import Dataset
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from domain.triage import Classification
from storage.models import (
    Delivery,
    Instance,
    InstanceResult,
    InstanceState,
    OcclusionMapRecord,
    Patient,
    Series,
    Study,
    StudyState,
)
from storage.queries.common import (
    NO_PATIENT_ID_ISSUER,
    database_now,
    get_or_insert,
    header_text,
    lease_row,
    lease_rows,
)
from storage.queries.occlusion_maps import delete_occlusion_maps
from storage.queries.studies import reopen_study, update_study_result


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


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
    delete_occlusion_maps(session, OcclusionMapRecord.instance_fk == instance.id)
    now = database_now(session)
    instance.state = InstanceState.RECEIVED
    instance.error = ""
    instance.attempts = 0
    instance.lease_until = None
    instance.map_attempts, instance.map_retry_at, instance.map_error = 0, None, ""
    instance.received_at = now
    session.flush()
    reopen_study(session, instance.study_fk, now)
    return instance


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
    patient = get_or_insert(
        session,
        Patient,
        {"patient_id": patient_id[0], "issuer_of_patient_id": patient_id[1]},
        patient_name=header_text(header, "PatientName", 324),
        birth_date=header_text(header, "PatientBirthDate", 8),
        sex=header_text(header, "PatientSex", 16),
    )
    study = get_or_insert(
        session,
        Study,
        {"study_instance_uid": str(header.StudyInstanceUID)},
        patient_fk=patient.id,
        accession_number=header_text(header, "AccessionNumber", 16),
        study_id=header_text(header, "StudyID", 16),
        study_date=header_text(header, "StudyDate", 8),
        study_time=header_text(header, "StudyTime", 32),
        study_description=header_text(header, "StudyDescription", 324),
        referring_physician_name=header_text(header, "ReferringPhysicianName", 324),
        patient_name=header_text(header, "PatientName", 324),
        patient_birth_date=header_text(header, "PatientBirthDate", 8),
        patient_sex=header_text(header, "PatientSex", 16),
        first_received_at=now,
        last_received_at=now,
        state=StudyState.RECEIVING,
    )
    # A late instance reopens a reported study: it gets a new report.
    reopen_study(session, study.id, now)
    series = get_or_insert(
        session,
        Series,
        {"series_instance_uid": str(header.SeriesInstanceUID)},
        study_fk=study.id,
        modality=header_text(header, "Modality", 16),
        body_part_examined=header_text(header, "BodyPartExamined", 64).upper(),
        series_number=header_text(header, "SeriesNumber", 12),
        series_description=header_text(header, "SeriesDescription", 324),
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


def _patient_key(header: Dataset) -> tuple[str, str]:
    """(Patient ID, issuer) for the patients table.

    An image without a Patient ID gets a patient of its own study: images
    with an empty Patient ID are no evidence of one person, and sharing a
    row would show one patient's name on another's study.
    """
    patient_id = header_text(header, "PatientID", 64)
    issuer = header_text(header, "IssuerOfPatientID", 64)
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
    return lease_row(session, Instance, instance_id, InstanceState.RECEIVED, lease_seconds)


def lease_instances(
    session: Session, instance_ids: Sequence[int], lease_seconds: float
) -> list[Instance]:
    """``lease_instance`` for several at once, their series loaded (routing reads it)."""
    return lease_rows(
        session,
        Instance,
        instance_ids,
        InstanceState.RECEIVED,
        lease_seconds,
        selectinload(Instance.series),
    )


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


def leased_instances(session: Session, leased: Sequence[tuple[int, str]]) -> dict[int, Instance]:
    """``leased_instance`` for a batch of (id, path) in one query, by id."""
    paths = dict(leased)
    rows = session.scalars(
        select(Instance)
        .where(Instance.id.in_(paths), Instance.state == InstanceState.RECEIVED)
        .order_by(Instance.id)
        .with_for_update()
    )
    return {row.id: row for row in rows if row.path == paths[row.id]}


def release_instance(session: Session, instance_id: int, error: str) -> None:
    """Give a leased instance back for another try, keeping the error that stopped this one."""
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.state == InstanceState.RECEIVED)
        .values(lease_until=None, error=error[:2000])
    )


def return_instance(session: Session, instance_id: int) -> None:
    """Give back a leased instance that was never tried (the daemon is stopping):
    its lease is freed and the attempt counted when it was leased is taken back."""
    session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            Instance.state == InstanceState.RECEIVED,
            Instance.attempts > 0,
        )
        .values(lease_until=None, attempts=Instance.attempts - 1)
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
    record_results(session, [(instance, result)])


def record_results(session: Session, results: list[tuple[Instance, Classification]]) -> None:
    """Store a batch's results; each study's result is brought up to date once."""
    for instance, result in results:
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
    for study_id in sorted({instance.study_fk for instance, _result in results}):
        update_study_result(session, study_id)


def mark_instance(session: Session, instance: Instance, state: InstanceState, error: str) -> None:
    instance.state = state
    instance.error = error[:2000]
    instance.lease_until = None
