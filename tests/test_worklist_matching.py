"""Modality Worklist matching as PS3.4 C.2.2.2 defines it, on worklist entries."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset

from daemon.worklist import matches_query
from storage.queries import WorklistEntry

STATION = "TRIAGE"


def _entry(**changes: object) -> WorklistEntry:
    fields: dict[str, object] = {
        "patient_name": "DOE^JANE",
        "patient_id": "PID[1]",
        "patient_birth_date": "19700101",
        "patient_sex": "F",
        "study_instance_uid": "1.2.3",
        "accession_number": "ACC1",
        "study_date": "20261130",
        "study_time": "101500",
        "study_description": "OCT",
        "referring_physician_name": "",
        "modality": "OPT",
        "finding": "CNV",
        "referral": "urgent",
        "probability": 0.9,
        "decided_at": dt.datetime(2026, 11, 30, 10, 15, 0),
        "report_sent": True,
    }
    fields.update(changes)
    return WorklistEntry(**fields)  # type: ignore[arg-type]


def _query(**keys: str) -> Dataset:
    query = Dataset()
    step = Dataset()
    for keyword, value in keys.items():
        if keyword.startswith("Scheduled") or keyword == "Modality":
            setattr(step, keyword, value)
        else:
            setattr(query, keyword, value)
    query.ScheduledProcedureStepSequence = [step]
    return query


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, True),  # universal matching
        ({"PatientID": "PID[1]"}, True),  # "[" is an ordinary character in DICOM
        ({"PatientID": "PID1"}, False),
        ({"PatientID": "PID[?]"}, True),
        ({"PatientID": "PID[1"}, False),
        ({"PatientName": "DOE^*"}, True),
        ({"PatientName": "DOE^J?NE"}, True),
        ({"PatientName": "SMITH*"}, False),
        ({"ScheduledProcedureStepStartDate": "20261130"}, True),
        ({"ScheduledProcedureStepStartDate": "20261101-20261129"}, False),
        ({"ScheduledProcedureStepStartDate": "20261101-"}, True),
        ({"ScheduledProcedureStepStartDate": "-20261129"}, False),
        (
            {
                "ScheduledProcedureStepStartDate": "20261130",
                "ScheduledProcedureStepStartTime": "1000-1100",
            },
            True,
        ),
        ({"ScheduledProcedureStepStartTime": "1100-"}, False),
        ({"ScheduledStationAETitle": STATION}, True),
        ({"ScheduledStationAETitle": "OTHER"}, False),
        ({"Modality": "OPT"}, True),
        ({"Modality": "DX"}, False),
    ],
)
def test_matching(keys: dict[str, str], expected: bool) -> None:
    assert matches_query(_entry(), _query(**keys), STATION) is expected


def test_an_empty_sequence_item_matches_everything() -> None:
    query = Dataset()
    query.ScheduledProcedureStepSequence = []
    assert matches_query(_entry(), query, STATION)


def test_an_answer_holds_only_what_was_asked() -> None:
    from daemon.worklist import entry_to_dataset, only_asked

    answer = entry_to_dataset(_entry(), "TRIAGE")
    query = Dataset()
    query.PatientID = ""
    step = Dataset()
    step.Modality = ""
    query.ScheduledProcedureStepSequence = [step]
    kept = only_asked(answer, query)
    assert set(kept.dir()) == {
        "SpecificCharacterSet",
        "PatientID",
        "ScheduledProcedureStepSequence",
    }
    assert kept.PatientID == answer.PatientID
    assert kept.ScheduledProcedureStepSequence[0].dir() == ["Modality"]
    # An empty sequence asks for whole items.
    query.ScheduledProcedureStepSequence = []
    whole = only_asked(answer, query).ScheduledProcedureStepSequence[0]
    assert whole == answer.ScheduledProcedureStepSequence[0]
    assert "PatientBirthDate" not in only_asked(answer, Dataset())
