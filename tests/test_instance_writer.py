"""Store: received instances recorded in batches by one writer per process."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon.instance_writer import InstanceWriter
from storage import queries
from storage.database import create_database_engine, make_session_factory, upgrade
from storage.models import Instance, Series, Study, StudyState
from storage.queries.instances import RowKey
from tests import peers


class _Association:
    """Stands for a pynetdicom association: the writer only keys a cache on it."""


def _row(source: Path, **attributes: str) -> queries.NewInstance:
    """The rows of ``source``'s header as a new instance (a fresh SOP
    Instance UID unless given), with ``attributes`` set."""
    header = dcmread(source, stop_before_pixels=True)
    header.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(header, keyword, value)
    return queries.new_instance(
        header,
        transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
        path=f"/spool/{header.SOPInstanceUID}.dcm",
        size_bytes=source.stat().st_size,
        sha256="0" * 64,
        calling_ae_title="SCANNER",
    )


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _record_in_threads(
    writer: InstanceWriter, rows: list[queries.NewInstance], association: object = None
) -> list[int | BaseException | None]:
    answers: list[int | BaseException | None] = [None] * len(rows)

    def record(index: int) -> None:
        try:
            answers[index] = writer.record(rows[index], association)
        except BaseException as exc:  # the test looks at what each thread got
            answers[index] = exc

    threads = [threading.Thread(target=record, args=(n,)) for n in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a handler was left waiting for its answer"
    return answers


def _queued_in_one_batch(writer: InstanceWriter, count: int) -> None:
    """Wait until ``count`` requests wait behind the (held) write lock."""
    deadline = time.monotonic() + 30
    while len(writer._queued) < count:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.005)


def test_handlers_recording_at_once_each_get_their_own_row(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    study = generate_uid()
    rows = [_row(oct_phantoms[0], StudyInstanceUID=study) for _ in range(24)]
    answers = _record_in_threads(InstanceWriter(sqlite_sessions), rows)
    assert all(isinstance(answer, int) for answer in answers), answers
    assert len(set(answers)) == len(rows)
    assert _count(sqlite_sessions, Instance) == len(rows)
    assert _count(sqlite_sessions, Study) == 1


def test_a_batch_answers_each_handler_for_its_own_row(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    writer = InstanceWriter(sqlite_sessions)
    rows = [_row(path) for path in oct_phantoms[:3]]
    rows.append(dataclasses.replace(rows[0]))  # the same SOP Instance UID again
    with writer._write_lock:  # held: the four requests become one batch
        results: list[list[int | BaseException | None]] = []
        worker = threading.Thread(target=lambda: results.append(_record_in_threads(writer, rows)))
        worker.start()
        _queued_in_one_batch(writer, len(rows))
    worker.join(timeout=60)
    answers = results[0]
    assert answers[3] is None  # the second copy is a duplicate
    with sqlite_sessions() as session:
        for row, answer in zip(rows[:3], answers[:3], strict=True):
            assert isinstance(answer, int)
            instance = session.get_one(Instance, answer)
            assert instance.sop_instance_uid == row.instance["sop_instance_uid"]


def test_a_copy_recorded_twice_is_a_duplicate(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    row = _row(oct_phantoms[0])
    first, second = InstanceWriter(sqlite_sessions), InstanceWriter(sqlite_sessions)
    assert isinstance(first.record(row, _Association()), int)
    assert second.record(row, _Association()) is None  # another process, another association
    assert _count(sqlite_sessions, Instance) == 1


def _study_state(sessions: sessionmaker[Session], study_uid: str) -> tuple[str, int]:
    with sessions() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        return study.state, study.revision


def test_a_duplicate_leaves_a_reported_study_alone_and_a_late_image_reopens_it(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    """A sender that sends again what it was not told was stored (the
    daemon was killed between the commit and the answer) must not get the
    study a second report; an image new to the study must (the crash test
    caught the first: every study of a batch was reopened, duplicate or not)."""
    row = _row(oct_phantoms[0])
    (instance_id,), _ = _record(sqlite_sessions, [row])
    assert instance_id is not None
    with sqlite_sessions() as session, session.begin():
        session.execute(update(Study).values(state=StudyState.REPORTED))
    reported = _study_state(sqlite_sessions, row.study_uid)

    assert _record(sqlite_sessions, [row])[0] == [None]
    assert _study_state(sqlite_sessions, row.study_uid) == reported

    late = _row(oct_phantoms[1], StudyInstanceUID=row.study_uid)
    (late_id,), _ = _record(sqlite_sessions, [late])
    assert late_id is not None
    state, revision = _study_state(sqlite_sessions, row.study_uid)
    assert state == StudyState.RECEIVING and revision == reported[1] + 1


def _record(
    sessions: sessionmaker[Session], rows: list[queries.NewInstance]
) -> tuple[list[int | None], dict[RowKey, int]]:
    with sessions() as session, session.begin():
        return queries.record_instances(session, rows, {})


def test_a_study_gone_since_its_first_image_is_made_again(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    """Retention may delete a study while an association still sends to it:
    the ids the association kept are stale, and the next image still lands."""
    writer = InstanceWriter(sqlite_sessions)
    association = _Association()
    first = _row(oct_phantoms[0])
    assert writer.record(first, association) is not None
    with sqlite_sessions() as session, session.begin():
        session.execute(delete(Instance))
        session.execute(delete(Series))
        session.execute(delete(Study))
    later = _row(oct_phantoms[1], StudyInstanceUID=first.study_uid)
    instance_id = writer.record(later, association)
    assert instance_id is not None
    with sqlite_sessions() as session:
        instance = session.get_one(Instance, instance_id)
        assert instance.study.study_instance_uid == first.study_uid


def test_one_bad_row_refuses_only_its_own_image(
    sqlite_sessions: sessionmaker[Session], oct_phantoms: list[Path]
) -> None:
    writer = InstanceWriter(sqlite_sessions)
    rows = [_row(path) for path in oct_phantoms[:3]]
    rows[1] = dataclasses.replace(rows[1], instance={**rows[1].instance, "sop_class_uid": None})
    with writer._write_lock:
        results: list[list[int | BaseException | None]] = []
        worker = threading.Thread(target=lambda: results.append(_record_in_threads(writer, rows)))
        worker.start()
        _queued_in_one_batch(writer, len(rows))
    worker.join(timeout=60)
    good_first, bad, good_last = results[0]
    assert isinstance(good_first, int) and isinstance(good_last, int)
    assert isinstance(bad, IntegrityError)
    assert _count(sqlite_sessions, Instance) == 2


def test_a_database_out_of_reach_answers_every_waiting_handler(
    tmp_path: Path, oct_phantoms: list[Path]
) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'missing' / 'triage.sqlite3'}")
    writer = InstanceWriter(make_session_factory(engine))
    answers = _record_in_threads(writer, [_row(path) for path in oct_phantoms[:4]])
    assert all(isinstance(answer, OperationalError) for answer in answers), answers


@pytest.mark.parametrize("max_batch", [0, -1])
def test_a_batch_must_hold_a_row(sqlite_sessions: sessionmaker[Session], max_batch: int) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        InstanceWriter(sqlite_sessions, max_batch=max_batch)


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        )


@pytest.mark.network  # so that `make test` runs it on PostgreSQL
@pytest.mark.skipif(
    os.environ.get("TRIAGE_TEST_DATABASE") != "postgresql",
    reason="row locks as PostgreSQL takes them (make test runs this on it)",
)
def test_a_study_result_brought_up_to_date_never_deadlocks_the_writer(
    oct_phantoms: list[Path],
) -> None:
    """Triage brings the results of a batch's studies up to date while the
    writer records new images of the same studies: neither may deadlock the
    other. (Under traffic, PostgreSQL broke such a deadlock by refusing four
    C-STOREs of test_traffic's one study over parallel associations with
    0xA700: each instance's INSERT holds a key-share lock on its study, which
    a study locked FOR UPDATE waits for.)"""
    engine = create_database_engine(peers.DATABASE_FACTORY[0]())
    upgrade(engine)
    sessions = make_session_factory(engine)
    first = [
        _row(oct_phantoms[0], StudyInstanceUID=generate_uid()),
        _row(oct_phantoms[1], StudyInstanceUID=generate_uid()),
    ]
    _record(sessions, first)
    with sessions() as session:
        studies = {
            uid: session.scalars(select(Study.id).where(Study.study_instance_uid == uid)).one()
            for uid in (row.study_uid for row in first)
        }
    (low_uid, low), (high_uid, high) = sorted(studies.items(), key=lambda item: item[1])
    # The writer inserts series and instances in the order of their UIDs:
    # the higher study's first, so that the higher study is key-share locked
    # (by the foreign key of its new series) before the writer meets the
    # lower one, which triage holds.
    series_uids, sop_uids = (sorted(generate_uid() for _ in range(2)) for _ in range(2))
    late = [
        _row(
            oct_phantoms[2],
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SOPInstanceUID=sop_uid,
        )
        for study_uid, series_uid, sop_uid in zip(
            (high_uid, low_uid), series_uids, sop_uids, strict=True
        )
    ]
    recorded: list[list[int | None]] = []
    failed: list[BaseException] = []

    def write() -> None:
        try:
            with engine.begin() as connection:
                recorded.append(queries.record_instances(connection, late, {})[0])
        except BaseException as exc:  # the test looks at what the writer got
            failed.append(exc)

    writer = threading.Thread(target=write)
    with sessions() as session, session.begin():
        queries.update_study_result(session, low)
        writer.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(engine):
            assert writer.is_alive() and time.monotonic() < deadline, failed
            time.sleep(0.01)
        queries.update_study_result(session, high)
    writer.join(timeout=60)
    assert not failed, failed
    assert len(recorded) == 1 and None not in recorded[0]
    engine.dispose()
