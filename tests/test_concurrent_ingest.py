"""Images of one new study recorded at the same moment by several associations.

Scanners and PACS routers send a study's images over parallel associations,
so the patient, study and series rows of a new study are created by several
threads at once. Every image must be recorded; none may be taken for a
duplicate of another.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from storage import queries
from storage.database import create_database_engine, make_session_factory, upgrade
from storage.models import Instance, Patient, Series, Study
from tests import peers

# Network-marked so that `make test` runs it on PostgreSQL too.
pytestmark = pytest.mark.network

THREADS = 8
ROUNDS = 5


def _header(patient_id: str, study_uid: str, series_uid: str) -> Dataset:
    header = Dataset()
    header.PatientID = patient_id
    header.PatientName = "RACE^TEST"
    header.StudyInstanceUID = study_uid
    header.SeriesInstanceUID = series_uid
    header.SOPInstanceUID = generate_uid()
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
    header.Modality = "OPT"
    return header


def test_parallel_images_of_new_studies_are_all_recorded(tmp_path: Path) -> None:
    url = (
        peers.DATABASE_FACTORY[0]()
        if peers.DATABASE_FACTORY
        else f"sqlite:///{tmp_path / 'race.sqlite3'}"
    )
    engine = create_database_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    failures: list[BaseException] = []

    for round_number in range(ROUNDS):
        patient_id, study_uid = f"P{round_number}", generate_uid()
        series_uids = [generate_uid(), generate_uid()]
        barrier = threading.Barrier(THREADS)

        def record(n: int, ids: tuple[str, str, list[str]], barrier: threading.Barrier) -> None:
            patient, study, series = ids
            header = _header(patient, study, series[n % 2])
            barrier.wait()
            try:
                with sessions() as session, session.begin():
                    queries.record_instance(
                        session,
                        header,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        path=f"/spool/{header.SOPInstanceUID}",
                        size_bytes=1,
                        sha256="0" * 64,
                        calling_ae_title=f"SCANNER{n}",
                    )
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)

        threads = [
            threading.Thread(target=record, args=(n, (patient_id, study_uid, series_uids), barrier))
            for n in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert failures == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == THREADS * ROUNDS
        assert session.scalar(select(func.count()).select_from(Study)) == ROUNDS
        assert session.scalar(select(func.count()).select_from(Series)) == 2 * ROUNDS
        assert session.scalar(select(func.count()).select_from(Patient)) == ROUNDS
