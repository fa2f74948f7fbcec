"""The report builder on a real database, without the network.

- an image stored while a study's report is being built is never left out;
- a late image's report supersedes the earlier one (PS3.3 C.17.2.1);
- a study whose report cannot be built is parked with its reason after a
  few tries, and never stops the reports of other studies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import threading
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Destination, Settings, StudySettings
from daemon.reporting import REPORT_RETRY, ReportBuilder
from daemon.runtime import CurrentRuntime, Runtime
from storage import queries
from storage.models import Report, Study, StudyState
from tests.peers import run_tool
from tests.records import store_triaged
from tests.traffic import plan_studies


def _builder(sessions: sessionmaker[Session]) -> ReportBuilder:
    settings = dataclasses.replace(Settings(), study=StudySettings(stable_seconds=0))
    return ReportBuilder(CurrentRuntime(Runtime(settings, {})), sessions, threading.Event())


def _referenced(content: bytes) -> set[str]:
    sr = dcmread(BytesIO(content))
    return {
        str(item.ReferencedSOPInstanceUID)
        for evidence in sr.CurrentRequestedProcedureEvidenceSequence
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def test_an_image_stored_while_the_report_is_built_is_in_a_report(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    first, second = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=2)[
        0
    ].images
    study_id = store_triaged(sqlite_sessions, first.path)
    builder = _builder(sqlite_sessions)

    # The builder reads the study, then an image arrives before it commits.
    import daemon.reporting as reporting

    original = reporting.build_study_report

    def build_then_receive(session: Session, study: Study) -> reporting.BuiltReport | None:
        built = original(session, study)
        store_triaged(sqlite_sessions, second.path)
        return built

    reporting.build_study_report = build_then_receive
    try:
        builder.report(study_id)
    finally:
        reporting.build_study_report = original
    with sqlite_sessions() as session:
        assert session.get_one(Study, study_id).state == StudyState.RECEIVING
        assert queries.latest_report(session, study_id) is None

    builder.report(study_id)  # the study is quiet now
    with sqlite_sessions() as session:
        report = queries.latest_report(session, study_id)
        assert report is not None
        assert _referenced(report.content) == {first.sop_instance_uid, second.sop_instance_uid}


def test_a_late_image_gets_a_report_that_supersedes_the_first(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    first, late = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=2)[
        0
    ].images
    study_id = store_triaged(sqlite_sessions, first.path)
    builder = _builder(sqlite_sessions)
    builder.report(study_id)
    store_triaged(sqlite_sessions, late.path)  # after the SR
    builder.report(study_id)

    with sqlite_sessions() as session:
        reports = list(session.query(Report).where(Report.study_fk == study_id).order_by(Report.id))
        assert [r.supersedes_fk for r in reports] == [None, reports[0].id]
        earlier, latest = (dcmread(BytesIO(r.content)) for r in reports)
    latest_content = reports[1].content
    assert _referenced(latest_content) == {
        first.sop_instance_uid,
        late.sop_instance_uid,
    }
    assert latest.SeriesInstanceUID == earlier.SeriesInstanceUID
    assert (earlier.InstanceNumber, latest.InstanceNumber) == (1, 2)
    predecessor = latest.PredecessorDocumentsSequence[0]
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    path = tmp_path / "latest.dcm"
    path.write_bytes(latest_content)
    if shutil.which("dciodvfy"):
        checked = run_tool(["dciodvfy", str(path)])
        assert "Error" not in checked.stderr, checked.stderr


def test_a_study_whose_report_fails_is_parked_and_others_go_on(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    broken, healthy = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    broken_id = store_triaged(sqlite_sessions, broken.images[0].path)
    healthy_id = store_triaged(sqlite_sessions, healthy.images[0].path)
    broken.images[0].path.unlink()  # the spool file is gone (purged, or on another node)
    builder = _builder(sqlite_sessions)

    for attempt in range(1, REPORT_RETRY.max_attempts + 1):
        builder.tick()
        with sqlite_sessions() as session, session.begin():
            study = session.get_one(Study, broken_id)
            assert study.report_attempts == attempt
            # Skip the back-off: make it due now.
            session.execute(update(Study).where(Study.id == broken_id).values(retry_at=None))
    with sqlite_sessions() as session:
        broken_study = session.get_one(Study, broken_id)
        assert broken_study.state == StudyState.REPORT_FAILED
        assert "FileNotFoundError" in broken_study.report_error
        assert session.get_one(Study, healthy_id).state == StudyState.REPORTED
        assert queries.work_counts(session)["studies_report_failed"] == 1


def test_purge_keeps_a_study_whose_report_was_not_delivered(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """A dead-lettered report is the only copy of the result: its study stays."""
    import datetime as dt

    from storage.models import Delivery, DeliveryState

    delivered, dead = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    ids = [store_triaged(sqlite_sessions, study.images[0].path) for study in (delivered, dead)]
    settings = dataclasses.replace(
        Settings(),
        study=StudySettings(stable_seconds=0),
        destinations=(Destination("PACS", "127.0.0.1", 104),),
    )
    runtime = CurrentRuntime(Runtime(settings, {}))
    builder = ReportBuilder(runtime, sqlite_sessions, threading.Event())
    for study_id in ids:
        builder.report(study_id)
    with sqlite_sessions() as session, session.begin():
        for study_id, state in zip(
            ids, (DeliveryState.DELIVERED, DeliveryState.FAILED), strict=True
        ):
            report = queries.latest_report(session, study_id)
            assert report is not None
            session.execute(
                update(Delivery).where(Delivery.report_fk == report.id).values(state=state)
            )
    with sqlite_sessions() as session, session.begin():
        purge = queries.purge_studies(session, dt.timedelta(0), keep_results=False)
    assert (purge.retired, purge.skipped_undelivered) == (1, 1)
    with sqlite_sessions() as session:
        assert session.get(Study, ids[0]) is None
        assert session.get(Study, ids[1]) is not None


def test_the_worklist_shows_each_study_under_the_name_its_images_carry(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """Two studies share a Patient ID; the second carries a corrected name."""
    first, second = plan_studies(
        oct_phantoms, tmp_path / "s", studies=2, images_per_study=1, empty_patient_id_every=0
    )
    assert first.patient_id == second.patient_id
    corrected = dcmread(second.images[0].path)
    corrected.PatientName = "CORRECTED^NAME"
    corrected.save_as(second.images[0].path, enforce_file_format=True)
    for study in (first, second):
        store_triaged(sqlite_sessions, study.images[0].path)
    with sqlite_sessions() as session:
        names = {e.study_instance_uid: e.patient_name for e in queries.urgent_worklist(session)}
    assert names == {
        first.study_instance_uid: first.patient_name,
        second.study_instance_uid: "CORRECTED^NAME",
    }


def test_the_builder_waits_for_the_next_quiet_study_and_tells_delivery(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """Between polls the builder sleeps only until the next study falls quiet,
    and each report it commits wakes the delivery workers."""
    settings = dataclasses.replace(
        Settings(),
        study=StudySettings(stable_seconds=20),
        destinations=(Destination("PACS", "127.0.0.1", 104),),
    )
    told: list[str] = []
    builder = ReportBuilder(
        CurrentRuntime(Runtime(settings, {})),
        sqlite_sessions,
        threading.Event(),
        idle_seconds=60,
        reported=lambda: told.append("reported"),
    )
    assert not builder.tick()
    assert builder.idle_wait() == 60  # nothing receiving: the plain idle wait
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    study_id = store_triaged(sqlite_sessions, study.images[0].path)
    assert not builder.tick()  # not quiet yet
    assert 10 < builder.idle_wait() <= 20.01
    assert told == []
    with sqlite_sessions() as session, session.begin():
        quiet = queries.database_now(session) - dt.timedelta(seconds=20)
        session.execute(update(Study).where(Study.id == study_id).values(last_received_at=quiet))
    assert builder.tick()
    assert told == ["reported"]
