"""Instances: recorded on receipt, leased for triage, given their result or a final state."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
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
    Bind,
    database_now,
    dialect_name,
    header_text,
    insert_for,
    insert_or_get_id,
    lease_row,
    lease_rows,
)
from storage.queries.occlusion_maps import delete_occlusion_maps
from storage.queries.studies import reopen_studies, update_study_result


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
    reopen_studies(session, [instance.study_fk], now)
    return instance


@dataclasses.dataclass(frozen=True)
class NewInstance:
    """A received instance's rows, read from its header in the handler's
    thread so that the writer only runs SQL: its patient (key and the
    columns a first insert writes), study, series and the instance itself."""

    patient_key: tuple[str, str]
    patient: dict[str, object]
    study_uid: str
    study: dict[str, object]
    series_uid: str
    series: dict[str, object]
    instance: dict[str, object]


def new_instance(
    header: Dataset,
    *,
    transfer_syntax_uid: str,
    path: str,
    size_bytes: int,
    sha256: str,
    calling_ae_title: str,
) -> NewInstance:
    """The rows ``record_instances`` writes for one received ``header``."""
    patient_id, issuer = _patient_key(header)
    name = header_text(header, "PatientName", 324)
    birth_date = header_text(header, "PatientBirthDate", 8)
    sex = header_text(header, "PatientSex", 16)
    return NewInstance(
        patient_key=(patient_id, issuer),
        patient={"patient_name": name, "birth_date": birth_date, "sex": sex},
        study_uid=str(header.StudyInstanceUID),
        study={
            "accession_number": header_text(header, "AccessionNumber", 16),
            "study_id": header_text(header, "StudyID", 16),
            "study_date": header_text(header, "StudyDate", 8),
            "study_time": header_text(header, "StudyTime", 32),
            "study_description": header_text(header, "StudyDescription", 324),
            "referring_physician_name": header_text(header, "ReferringPhysicianName", 324),
            "patient_name": name,
            "patient_birth_date": birth_date,
            "patient_sex": sex,
        },
        series_uid=str(header.SeriesInstanceUID),
        series={
            "modality": header_text(header, "Modality", 16),
            "body_part_examined": header_text(header, "BodyPartExamined", 64).upper(),
            "series_number": header_text(header, "SeriesNumber", 12),
            "series_description": header_text(header, "SeriesDescription", 324),
        },
        instance={
            "sop_instance_uid": str(header.SOPInstanceUID),
            "sop_class_uid": str(header.SOPClassUID),
            "transfer_syntax_uid": transfer_syntax_uid,
            "path": path,
            "size_bytes": size_bytes,
            "sha256": sha256,
            "calling_ae_title": calling_ae_title,
        },
    )


# What ``record_instances`` has resolved: ("patient", (id, issuer)),
# ("study", uid) or ("series", uid) to the row's id.
RowKey = tuple[str, object]


def record_instances(
    bind: Bind, rows: Sequence[NewInstance], known: Mapping[RowKey, int]
) -> tuple[list[int | None], dict[RowKey, int]]:
    """Add received instances with their patient, study and series rows, in a
    handful of statements whatever their number (SQLAlchemy Core; ``bind``
    is best a ``Connection``: the writer needs none of a session's
    bookkeeping, and it costs an acknowledgement's time).

    Returns each row's instance id, or None for a second copy of a SOP
    Instance UID already recorded (by another association, or earlier in
    ``rows``), and the ids of the patient, study and series rows it used,
    for the caller to keep once the transaction has committed. ``known``
    holds such ids from earlier transactions; a key found there is not
    looked up again.

    The images of one new study often arrive over several associations at
    once, so the patient, study and series rows are created race-free
    (``INSERT ... ON CONFLICT DO NOTHING``, then read back): whichever
    transaction comes first creates them and the others use them. A study
    that gets a new image is reopened once (``reopen_studies``: a late image
    gets a new report); a duplicate leaves it as it was.
    """
    now = database_now(bind)
    ids: dict[RowKey, int] = {}

    def known_id(key: RowKey) -> int | None:
        found = ids.get(key, known.get(key))
        if found is not None:
            ids[key] = found
        return found

    # Each kind of row in the order of its key, and the instances in the
    # order of their UIDs: concurrent batches (other receiver processes)
    # then take their row locks in one order, and cannot deadlock.
    for row in sorted(rows, key=lambda row: row.patient_key):
        patient_key: RowKey = ("patient", row.patient_key)
        if known_id(patient_key) is None:
            patient_id, issuer = row.patient_key
            ids[patient_key] = insert_or_get_id(
                bind,
                Patient,
                {"patient_id": patient_id, "issuer_of_patient_id": issuer},
                **row.patient,
            )
    for row in sorted(rows, key=lambda row: row.study_uid):
        study_key: RowKey = ("study", row.study_uid)
        if known_id(study_key) is None:
            ids[study_key] = insert_or_get_id(
                bind,
                Study,
                {"study_instance_uid": row.study_uid},
                patient_fk=ids[("patient", row.patient_key)],
                first_received_at=now,
                last_received_at=now,
                state=StudyState.RECEIVING,
                **row.study,
            )
    for row in sorted(rows, key=lambda row: row.series_uid):
        series_key: RowKey = ("series", row.series_uid)
        if known_id(series_key) is None:
            ids[series_key] = insert_or_get_id(
                bind,
                Series,
                {"series_instance_uid": row.series_uid},
                study_fk=ids[("study", row.study_uid)],
                **row.series,
            )
    first: dict[str, NewInstance] = {}
    for row in sorted(rows, key=lambda row: str(row.instance["sop_instance_uid"])):
        first.setdefault(str(row.instance["sop_instance_uid"]), row)
    inserted = bind.execute(
        _insert_instances(dialect_name(bind)),
        [
            {
                **row.instance,
                "series_fk": ids[("series", row.series_uid)],
                "study_fk": ids[("study", row.study_uid)],
                "received_at": now,
                "state": InstanceState.RECEIVED,
            }
            for row in first.values()
        ],
    ).all()
    # An image new to a reported study reopens it: it gets a new report. A
    # second copy of one it has (a sender resending what it was not told
    # was stored) changes nothing.
    by_uid = {uid: instance_id for instance_id, uid in inserted}
    reopen_studies(
        bind, (ids[("study", row.study_uid)] for uid, row in first.items() if uid in by_uid), now
    )
    return [
        by_uid.get(uid) if first[uid] is row else None
        for row in rows
        for uid in (str(row.instance["sop_instance_uid"]),)
    ], ids


@functools.cache
def _insert_instances(dialect: str) -> Any:
    """The instances' INSERT, built once per dialect: it runs for every batch."""
    columns = Instance.__table__.c
    return (
        insert_for(dialect)(Instance.__table__)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(columns.id, columns.sop_instance_uid)
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
    """Add one received instance (``record_instances`` of one); an
    ``IntegrityError`` if its SOP Instance UID is recorded already."""
    row = new_instance(
        header,
        transfer_syntax_uid=transfer_syntax_uid,
        path=path,
        size_bytes=size_bytes,
        sha256=sha256,
        calling_ae_title=calling_ae_title,
    )
    (instance_id,), _ids = record_instances(session.connection(), [row], {})
    if instance_id is None:
        raise IntegrityError(
            "INSERT INTO instances", None, ValueError("the SOP Instance UID is recorded already")
        )
    return session.get_one(Instance, instance_id)


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
