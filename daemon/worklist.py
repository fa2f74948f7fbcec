"""Worklist: answer Modality Worklist C-FIND queries with the urgent studies.

Every study whose triage is an urgent referral is one scheduled procedure
step with Requested Procedure Priority STAT (PS3.4 K.6.1; PS3.3 C.4.11).
Patient ID, Patient's Name, Accession Number and the step's Modality are
matched as the query asks (single value or ``*``/``?`` wildcards).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from daemon.audit import AssociationAudit
from daemon.status import Status
from storage.queries import WorklistEntry, urgent_worklist

logger = logging.getLogger(__name__)

PRIORITY_STAT = "STAT"


def entry_to_dataset(entry: WorklistEntry, station_ae_title: str) -> Dataset:
    """The worklist item for one urgent study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = entry.patient_name
    ds.PatientID = entry.patient_id
    ds.PatientBirthDate = entry.patient_birth_date
    ds.PatientSex = entry.patient_sex
    ds.StudyInstanceUID = entry.study_instance_uid
    ds.AccessionNumber = entry.accession_number
    ds.ReferringPhysicianName = entry.referring_physician_name
    ds.RequestedProcedureID = entry.accession_number or entry.study_instance_uid[-16:]
    ds.RequestedProcedureDescription = f"Urgent referral: {entry.finding}"
    ds.RequestedProcedurePriority = PRIORITY_STAT
    step = Dataset()
    step.Modality = entry.modality
    step.ScheduledStationAETitle = station_ae_title
    step.ScheduledProcedureStepStartDate = entry.decided_at.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = entry.decided_at.strftime("%H%M%S")
    step.ScheduledProcedureStepID = entry.accession_number or "TRIAGE"
    step.ScheduledProcedureStepDescription = (
        f"AI triage: {entry.finding} (p={entry.probability:.2f}), {entry.referral} referral"
    )
    step.ScheduledPerformingPhysicianName = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _matches(pattern: object, value: str) -> bool:
    text = str(pattern or "")
    if text in ("", "*"):
        return True
    if "*" in text or "?" in text:
        return fnmatch.fnmatchcase(value, text)
    return value == text


def matches_query(entry: WorklistEntry, query: Dataset) -> bool:
    step_query = None
    if "ScheduledProcedureStepSequence" in query and query.ScheduledProcedureStepSequence:
        step_query = query.ScheduledProcedureStepSequence[0]
    return (
        _matches(query.get("PatientID", ""), entry.patient_id)
        and _matches(query.get("PatientName", ""), entry.patient_name)
        and _matches(query.get("AccessionNumber", ""), entry.accession_number)
        and _matches(query.get("StudyInstanceUID", ""), entry.study_instance_uid)
        and (step_query is None or _matches(step_query.get("Modality", ""), entry.modality))
    )


def handle_find(
    event: Any,
    sessions: sessionmaker[Session],
    station_ae_title: str,
    audit: AssociationAudit | None = None,
) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND handler: yield one pending response per matching urgent study."""
    if audit is not None:
        audit.query_answered(event.assoc)
    try:
        query = event.identifier
        with sessions() as session:
            entries = urgent_worklist(session)
    except Exception:
        logger.exception("Worklist query failed")
        yield Status.UNABLE_TO_PROCESS, None
        return
    matched = [entry for entry in entries if matches_query(entry, query)]
    logger.info(
        "Worklist query from %s: %d urgent item(s)", event.assoc.requestor.ae_title, len(matched)
    )
    for entry in matched:
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield Status.PENDING, entry_to_dataset(entry, station_ae_title)
