"""Worklist: answer Modality Worklist C-FIND queries with the urgent studies.

Every study whose triage is an urgent referral is one scheduled procedure
step with Requested Procedure Priority STAT (PS3.4 K.6.1; PS3.3 C.4.11).
Matching follows PS3.4 C.2.2.2: Patient ID, Patient's Name, Accession
Number and Study Instance UID by single value or ``*``/``?`` wildcards (no
other character is special); in the Scheduled Procedure Step Sequence, the
Modality and Scheduled Station AE Title the same way, and the start date and
time by range. The answer is bounded: the ``[worklist] max_answers`` most
recent matching items, each holding only the attributes the query asked for
(PS3.4 C.2.2.1.2). Only the peers ``[worklist]`` allows are answered.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from daemon.audit import MINOR_FAILURE, AssociationAudit
from daemon.config import WorklistSettings
from dicom_io.status import Status
from storage.queries import WorklistEntry, urgent_worklist

logger = logging.getLogger(__name__)

PRIORITY_STAT = "STAT"
# At most this many urgent studies are read for one query; of those, the
# [worklist] max_answers most recent that match are answered.
MAX_SCANNED = 20_000


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


def _wildcard(pattern: str) -> re.Pattern[str]:
    """A DICOM wildcard as a regular expression: only ``*`` and ``?`` are special."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def match_value(pattern: object, value: str) -> bool:
    """Single value or wildcard matching (PS3.4 C.2.2.2.1, C.2.2.2.4); empty matches all."""
    text = str(pattern or "")
    if text in ("", "*"):
        return True
    if "*" in text or "?" in text:
        return _wildcard(text).fullmatch(value) is not None
    return value == text


def match_range(pattern: object, value: str) -> bool:
    """Date or time range matching (PS3.4 C.2.2.2.5): ``A``, ``A-B``, ``A-``, ``-B``.

    ``value`` and the bounds are compared as DICOM DA or TM strings, whose
    order is their chronological order; a time bound like ``1000`` covers
    every second of that minute.
    """
    text = str(pattern or "")
    if text in ("", "*"):
        return True
    if "-" not in text:
        return value.startswith(text)
    low, high = text.split("-", 1)
    if low and value < low:
        return False
    return not high or value[: len(high)] <= high


def matches_query(entry: WorklistEntry, query: Dataset, station_ae_title: str) -> bool:
    """Whether a worklist item matches a C-FIND identifier (PS3.4 C.2.2.2, K.6.1.2).

    The Scheduled Procedure Step Sequence is matched item-wise (sequence
    matching): an empty item, or none, matches every step.
    """
    step_query = Dataset()
    if query.get("ScheduledProcedureStepSequence"):
        step_query = query.ScheduledProcedureStepSequence[0]
    date = entry.decided_at.strftime("%Y%m%d")
    time = entry.decided_at.strftime("%H%M%S")
    return (
        match_value(query.get("PatientID", ""), entry.patient_id)
        and match_value(query.get("PatientName", ""), entry.patient_name)
        and match_value(query.get("AccessionNumber", ""), entry.accession_number)
        and match_value(query.get("StudyInstanceUID", ""), entry.study_instance_uid)
        and match_value(step_query.get("Modality", ""), entry.modality)
        and match_value(step_query.get("ScheduledStationAETitle", ""), station_ae_title)
        and match_range(step_query.get("ScheduledProcedureStepStartDate", ""), date)
        and match_range(step_query.get("ScheduledProcedureStepStartTime", ""), time)
    )


def only_asked(answer: Dataset, query: Dataset) -> Dataset:
    """``answer`` with only the attributes ``query`` holds (and its character
    set). In a sequence, an item with keys asks for those keys; an empty
    sequence or item asks for every attribute of its items."""
    kept = Dataset()
    if "SpecificCharacterSet" in answer:
        kept.SpecificCharacterSet = answer.SpecificCharacterSet
    for element in answer:
        if element.tag not in query or element.keyword == "SpecificCharacterSet":
            continue
        asked = query[element.tag]
        if element.VR == "SQ" and asked.VR == "SQ" and len(asked.value) and len(asked.value[0]):
            kept.add_new(
                element.tag, "SQ", [only_asked(item, asked.value[0]) for item in element.value]
            )
        else:
            kept.add(element)
    return kept


def _asked_patient(event: Any) -> str:
    """The Patient ID a query names, for the audit; "" when it names none or
    its identifier cannot be decoded (the handler answers that below)."""
    try:
        return str(event.identifier.get("PatientID", "") or "")
    except Exception:
        return ""


def handle_find(
    event: Any,
    sessions: sessionmaker[Session],
    station_ae_title: str,
    policy: WorklistSettings,
    audit: AssociationAudit | None = None,
) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND handler: yield one pending response per matching urgent study."""
    if audit is not None:
        audit.query_answered(event.assoc)
    calling = str(event.assoc.requestor.ae_title).strip()
    address = str(event.assoc.requestor.address)
    asked_patient = _asked_patient(event)
    if not policy.allows(calling, address):
        logger.warning(
            "Refused a worklist query from %s at %s: not allowed by [worklist]", calling, address
        )
        if audit is not None:
            audit.trail.record(
                "query-refused",
                MINOR_FAILURE,
                calling_ae_title=calling,
                peer_address=address,
                patient_id=asked_patient,
                detail="not allowed by [worklist]",
            )
        yield Status.NOT_AUTHORIZED, None
        return
    try:
        query = event.identifier
        with sessions() as session:
            entries = urgent_worklist(session, limit=MAX_SCANNED)
    except Exception:
        logger.exception("Worklist query failed")
        yield Status.UNABLE_TO_PROCESS, None
        return
    matched = [entry for entry in entries if matches_query(entry, query, station_ae_title)]
    if len(matched) > policy.max_answers:
        logger.warning(
            "Worklist query matched %d items; answering the %d most recent",
            len(matched),
            policy.max_answers,
        )
        matched = matched[-policy.max_answers :]
    logger.info("Worklist query from %s: %d urgent item(s)", calling, len(matched))
    if audit is not None:
        audit.trail.record(
            "query",
            calling_ae_title=calling,
            peer_address=address,
            patient_id=asked_patient,
            detail=f"{len(matched)} urgent item(s) answered",
        )
    for entry in matched:
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield Status.PENDING, only_asked(entry_to_dataset(entry, station_ae_title), query)
