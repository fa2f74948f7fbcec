"""The occlusion-map workers in process: a real ONNX model and SQLite, no network."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Settings
from daemon.explain import Explainer
from daemon.runtime import CurrentRuntime, Runtime
from domain.triage import TriageModality
from model_runtime.classifier import Classifier
from storage import queries
from storage.models import Instance, OcclusionMapRecord
from tests.records import store_reported
from tests.traffic import plan_studies


def test_a_map_is_made_and_a_damaged_image_rests_without_holding_up_the_next(
    tmp_path: Path,
    oct_phantoms: list[Path],
    sqlite_sessions: sessionmaker[Session],
    tiny_model_dirs: dict[str, Path],
) -> None:
    damaged, healthy = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    damaged_id = store_reported(sqlite_sessions, damaged.images[0].path)
    healthy_id = store_reported(sqlite_sessions, healthy.images[0].path)
    path = damaged.images[0].path
    path.write_bytes(path.read_bytes()[:300])

    classifier = Classifier(tiny_model_dirs["oct"], "cpu")
    runtime = CurrentRuntime(Runtime(Settings(), {TriageModality.OCT: classifier}))
    explainer = Explainer(runtime, sqlite_sessions, threading.Event(), poll_seconds=0.1)
    try:
        explainer.poll()
        assert explainer.queued() == 2
        assert explainer.work_one() and explainer.work_one()
        explainer.poll()  # the damaged one rests; nothing is queued again
        assert explainer.queued() == 0
    finally:
        explainer.decoder.close()

    with sqlite_sessions() as session:
        (record,) = session.scalars(select(OcclusionMapRecord))
        assert record.instance_fk == healthy_id and record.model_name == "tiny-oct"
        sc = dcmread(BytesIO(record.content))
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
        bad = session.get_one(Instance, damaged_id)
        assert bad.map_attempts == 1 and bad.map_retry_at is not None and bad.map_error
        assert queries.map_counts(session) == {"maps_retrying": 1, "maps_given_up": 0}


def test_maps_wait_while_images_wait_for_triage(
    tmp_path: Path,
    oct_phantoms: list[Path],
    sqlite_sessions: sessionmaker[Session],
    tiny_model_dirs: dict[str, Path],
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    instance_id = store_reported(sqlite_sessions, study.images[0].path)
    waiting_for_triage = [3]
    classifier = Classifier(tiny_model_dirs["oct"], "cpu")
    runtime = CurrentRuntime(Runtime(Settings(), {TriageModality.OCT: classifier}))
    explainer = Explainer(
        runtime,
        sqlite_sessions,
        threading.Event(),
        poll_seconds=0.1,
        triage_backlog=lambda: waiting_for_triage[0],
    )
    try:
        explainer.poll()
        assert explainer.queued() == 1
        assert explainer.work_one() is False  # triage first: the map waits, queued
        assert explainer.queued() == 1
        waiting_for_triage[0] = 0
        assert explainer.work_one() is True
    finally:
        explainer.decoder.close()
    with sqlite_sessions() as session:
        (record,) = session.scalars(select(OcclusionMapRecord))
        assert record.instance_fk == instance_id
