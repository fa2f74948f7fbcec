"""The queries of each aggregate, in process on SQLite: no daemon, no network, no root."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from domain.retry import RetryPolicy
from storage import queries
from storage.models import Delivery, DeliveryState, Instance, InstanceState, Study, StudyState
from tests.records import classification, store_received, store_reported, store_triaged
from tests.traffic import plan_studies

PACS = ("PACS", "127.0.0.1", 104)


def test_an_instance_is_leased_once_counted_and_failed_for_good(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    instance_id = store_received(sqlite_sessions, study.images[0].path)
    with sqlite_sessions() as session:
        assert queries.pending_instance_ids(session, 10) == [instance_id]

    with sqlite_sessions() as session, session.begin():
        leased = queries.lease_instance(session, instance_id, 60)
        assert leased is not None and leased.attempts == 1
    with sqlite_sessions() as session, session.begin():
        # Held: neither a second worker nor the sweep gets it.
        assert queries.lease_instance(session, instance_id, 60) is None
        assert queries.pending_instance_ids(session, 10) == []
        queries.release_instance(session, instance_id, "DecoderCrashed: killed")
    with sqlite_sessions() as session, session.begin():
        again = queries.lease_instance(session, instance_id, 60)
        assert again is not None and again.attempts == 2
        assert again.error == "DecoderCrashed: killed"
        queries.mark_instance(session, again, InstanceState.FAILED, "Given up")
    with sqlite_sessions() as session, session.begin():
        assert queries.lease_instance(session, instance_id, 60) is None
        assert queries.pending_instance_ids(session, 10) == []
        assert queries.work_counts(session)["instances_failed"] == 1


def test_two_workers_racing_for_the_same_images_never_both_lease_one(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """SQLite ignores FOR UPDATE, and pysqlite opens the transaction only at the
    first write: a second worker reads the images as free while the first holds
    the write lock, then must not lease them again once it gets the lock."""
    import threading
    import time

    studies = plan_studies(oct_phantoms, tmp_path / "s", studies=3, images_per_study=1)
    ids = [store_received(sqlite_sessions, s.images[0].path) for s in studies]
    second: list[int] = []

    def second_worker() -> None:
        with sqlite_sessions() as session, session.begin():
            second.extend(row.id for row in queries.lease_instances(session, ids, 60))

    with sqlite_sessions() as session, session.begin():
        first = [row.id for row in queries.lease_instances(session, ids, 60)]
        session.flush()  # the first worker's lease is written: it holds the write lock
        racer = threading.Thread(target=second_worker)
        racer.start()
        time.sleep(0.5)  # the second reads, then waits for the lock
    racer.join(timeout=30)
    assert first == ids
    assert second == []
    with sqlite_sessions() as session:
        assert [session.get_one(Instance, i).attempts for i in ids] == [1, 1, 1]


def test_a_restart_releases_every_lease(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    studies = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    ids = [store_received(sqlite_sessions, s.images[0].path) for s in studies]
    with sqlite_sessions() as session, session.begin():
        for instance_id in ids:
            assert queries.lease_instance(session, instance_id, 3600) is not None
    with sqlite_sessions() as session, session.begin():
        assert queries.release_all_leases(session) == 2
    with sqlite_sessions() as session:
        assert sorted(queries.pending_instance_ids(session, 10)) == sorted(ids)


def test_a_late_image_reopens_its_study_and_refuses_the_stale_report(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=2)
    study_id = store_triaged(sqlite_sessions, study.images[0].path)
    with sqlite_sessions() as session:
        ready = queries.study_if_ready(session, study_id, stable_seconds=0)
        assert ready is not None
        revision = ready.revision

    store_received(sqlite_sessions, study.images[1].path)  # arrives while the SR is built
    with sqlite_sessions() as session, session.begin():
        assert not queries.commit_report_state(session, study_id, revision, StudyState.REPORTED)
        # Not ready either: its new image is still waiting for inference.
        assert queries.study_if_ready(session, study_id, stable_seconds=0) is None
        current = session.get_one(Study, study_id)
        assert current.state == StudyState.RECEIVING and current.revision > revision


def test_a_study_whose_report_keeps_failing_rests_then_is_parked(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    study_id = store_triaged(sqlite_sessions, study.images[0].path)
    with sqlite_sessions() as session, session.begin():
        delay = queries.report_failed(session, study_id, "boom", RetryPolicy((30.0,)))
        assert delay == 30.0
        # Resting: not ready again until its retry time.
        assert queries.studies_ready_to_report(session, 0) == []
    with sqlite_sessions() as session, session.begin():
        assert queries.report_failed(session, study_id, "again", RetryPolicy((30.0,))) is None
        parked = session.get_one(Study, study_id)
        assert parked.state == StudyState.REPORT_FAILED and parked.report_error == "again"
        assert queries.work_counts(session)["studies_report_failed"] == 1


def _queued_report(tmp_path: Path, phantoms: list[Path], sessions: sessionmaker[Session]) -> int:
    (study,) = plan_studies(phantoms, tmp_path / "s", studies=1, images_per_study=1)
    study_id = store_triaged(sessions, study.images[0].path)
    with sessions() as session, session.begin():
        queries.add_report(
            session,
            session.get_one(Study, study_id),
            sop_instance_uid="1.2.3.4",
            series_instance_uid="1.2.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            content=b"SR",
            destinations=[PACS],
            supersedes=None,
        )
        (delivery_id,) = queries.due_deliveries(session, PACS)
    return int(delivery_id)


def test_a_delivery_retries_on_its_schedule_then_is_dead_lettered_and_retried(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    delivery_id = _queued_report(tmp_path, oct_phantoms, sqlite_sessions)
    policy = RetryPolicy((60.0,))
    with sqlite_sessions() as session, session.begin():
        delivery = queries.lease_delivery(session, delivery_id, 120)
        assert delivery is not None and delivery.attempts == 1
        assert queries.lease_delivery(session, delivery_id, 120) is None  # held
        assert queries.record_delivery_outcome(session, delivery, "refused", policy) == 60.0
    with sqlite_sessions() as session, session.begin():
        assert queries.due_deliveries(session, PACS) == []  # waits its minute
        delivery = session.get_one(Delivery, delivery_id)
        delivery.next_attempt_at = queries.database_now(session) - dt.timedelta(seconds=1)
    with sqlite_sessions() as session, session.begin():
        delivery = queries.lease_delivery(session, delivery_id, 120)
        assert delivery is not None and delivery.attempts == 2
        assert queries.record_delivery_outcome(session, delivery, "refused", policy) is None
    with sqlite_sessions() as session, session.begin():
        assert session.get_one(Delivery, delivery_id).state == DeliveryState.FAILED
        assert queries.delivery_counts(session) == (0, 1)
        assert queries.retry_deliveries(session, None) == 1
    with sqlite_sessions() as session, session.begin():
        delivery = queries.lease_delivery(session, delivery_id, 120)
        assert delivery is not None and delivery.attempts == 1
        assert queries.record_delivery_outcome(session, delivery, None, policy) is None
        assert delivery.state == DeliveryState.DELIVERED and delivery.last_error == ""
    with sqlite_sessions() as session:
        assert queries.delivery_counts(session) == (0, 0)
        (row,) = queries.outbox(session, DeliveryState.DELIVERED)
        assert row.delivery_id == delivery_id and row.destination == "PACS@127.0.0.1:104"


def test_a_result_decides_its_study_and_a_replaced_copy_is_triaged_again(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    path = study.images[0].path
    study_id = store_triaged(sqlite_sessions, path)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    with sqlite_sessions() as session, session.begin():
        decided = session.get_one(Study, study_id)
        assert decided.result is not None and decided.result.label == classification().label
        queries.replace_instance(session, uid, path=str(path), sha256="1" * 64)
    with sqlite_sessions() as session:
        instance = queries.find_instance(session, uid)
        assert isinstance(instance, Instance)
        assert instance.state == InstanceState.RECEIVED and instance.result is None
        assert instance.sha256 == "1" * 64
        assert queries.pending_instance_ids(session, 10) == [instance.id]


def test_a_failed_map_rests_then_is_given_up_and_a_new_copy_starts_again(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    path = study.images[0].path
    reported_id = store_reported(sqlite_sessions, path)  # CNV: urgent
    with sqlite_sessions() as session, session.begin():
        (instance_id,) = queries.instances_needing_maps(session, ["urgent"], 10)
        assert instance_id == reported_id
        assert queries.instances_needing_maps(session, ["urgent"], 10, exclude={instance_id}) == []
        assert queries.instances_needing_maps(session, ["routine"], 10) == []

    policy = RetryPolicy((60.0,))
    with sqlite_sessions() as session, session.begin():
        assert queries.map_failed(session, instance_id, "OSError: gone", policy) == (1, 60.0)
        assert queries.instances_needing_maps(session, ["urgent"], 10) == []  # resting
        assert queries.map_counts(session) == {"maps_retrying": 1, "maps_given_up": 0}
        instance = session.get_one(Instance, instance_id)
        instance.map_retry_at = queries.database_now(session) - dt.timedelta(seconds=1)
    with sqlite_sessions() as session, session.begin():
        assert queries.instances_needing_maps(session, ["urgent"], 10) == [instance_id]
        assert queries.map_failed(session, instance_id, "OSError: gone", policy) == (2, None)
    with sqlite_sessions() as session, session.begin():
        assert queries.instances_needing_maps(session, ["urgent"], 10) == []  # given up
        assert queries.map_counts(session) == {"maps_retrying": 0, "maps_given_up": 1}
        assert session.get_one(Instance, instance_id).map_error == "OSError: gone"
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        queries.replace_instance(session, uid, path=str(path))
    with sqlite_sessions() as session:
        assert queries.map_counts(session) == {"maps_retrying": 0, "maps_given_up": 0}


def test_the_next_study_to_fall_quiet_is_known_to_the_second(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    with sqlite_sessions() as session:
        assert queries.seconds_until_quiet(session, stable_seconds=30) is None
    first, second = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    store_received(sqlite_sessions, first.images[0].path)
    store_received(sqlite_sessions, second.images[0].path)
    with sqlite_sessions() as session, session.begin():
        # The first study was last heard from 20 s ago, the second just now.
        earlier = queries.database_now(session) - dt.timedelta(seconds=20)
        session.query(Study).filter(Study.study_instance_uid == first.study_instance_uid).update(
            {Study.last_received_at: earlier}
        )
    with sqlite_sessions() as session:
        until = queries.seconds_until_quiet(session, stable_seconds=30)
        assert until is not None and 9 < until <= 10
        # Past its stable time, a study is ready, not "next".
        until = queries.seconds_until_quiet(session, stable_seconds=15)
        assert until is not None and 14 < until <= 15
        assert queries.seconds_until_quiet(session, stable_seconds=0) is None
