"""The triage worker in process: a real ONNX model, a real SQLite database, no network."""

from __future__ import annotations

import dataclasses
import queue
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Settings
from daemon.pipeline import TriagePipeline
from daemon.runtime import CurrentRuntime, Runtime
from domain.triage import TriageModality
from model_runtime.classifier import Classifier
from model_runtime.package import Manifest, write_manifest
from storage.models import Instance, InstanceState
from tests.records import store_received
from tests.tiny_models import write_tiny_package
from tests.traffic import plan_studies


@pytest.fixture
def runtime(tmp_path: Path) -> CurrentRuntime:
    package = write_tiny_package(tmp_path / "oct-1", TriageModality.OCT)
    return CurrentRuntime(Runtime(Settings(), {TriageModality.OCT: Classifier(package, "cpu")}))


def _state(sessions: sessionmaker[Session], instance_id: int) -> tuple[InstanceState, str, str]:
    with sessions() as session:
        instance = session.get_one(Instance, instance_id)
        version = instance.result.model_version if instance.result else ""
        return instance.state, instance.error, version


def test_each_image_is_triaged_with_the_snapshot_in_force(
    tmp_path: Path,
    oct_phantoms: list[Path],
    sqlite_sessions: sessionmaker[Session],
    runtime: CurrentRuntime,
) -> None:
    first, second = plan_studies(oct_phantoms, tmp_path / "s", studies=2, images_per_study=1)
    work: queue.Queue[int] = queue.Queue()
    pipeline = TriagePipeline(sqlite_sessions, runtime, work, threading.Event())
    try:
        work.put(store_received(sqlite_sessions, first.images[0].path))
        assert pipeline.tick() is True
        # A reload: a new package version swapped in between two images.
        newer = write_tiny_package(tmp_path / "oct-2", TriageModality.OCT)
        manifest = Manifest.from_json((newer / "manifest.json").read_text())
        write_manifest(newer, dataclasses.replace(manifest, version="2"))
        running = runtime.current()
        runtime.replace(
            dataclasses.replace(running, classifiers={TriageModality.OCT: Classifier(newer, "cpu")})
        )
        later = store_received(sqlite_sessions, second.images[0].path)
        assert pipeline.tick() is True  # the queue is empty: the sweep finds it
    finally:
        pipeline.decoder.close()
    with sqlite_sessions() as session:
        versions = sorted(
            (i.id, i.result.model_version) for i in session.query(Instance) if i.result
        )
    assert [version for _id, version in versions] == ["1", "2"]
    assert _state(sqlite_sessions, later) == (InstanceState.TRIAGED, "", "2")


def test_an_image_no_model_applies_to_is_skipped_with_its_reason(
    tmp_path: Path,
    oct_phantoms: list[Path],
    sqlite_sessions: sessionmaker[Session],
    runtime: CurrentRuntime,
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    path = study.images[0].path
    dataset = dcmread(path)
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.save_as(path, enforce_file_format=True)
    instance_id = store_received(sqlite_sessions, path)
    pipeline = TriagePipeline(sqlite_sessions, runtime, queue.Queue(), threading.Event())
    try:
        pipeline.process(instance_id)
    finally:
        pipeline.decoder.close()
    state, error, _version = _state(sqlite_sessions, instance_id)
    assert state == InstanceState.SKIPPED
    assert "No model for SOP class 1.2.840.10008.5.1.4.1.1.2" in error


def test_an_image_whose_model_is_not_loaded_is_skipped(
    tmp_path: Path, oct_phantoms: list[Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    (study,) = plan_studies(oct_phantoms, tmp_path / "s", studies=1, images_per_study=1)
    instance_id = store_received(sqlite_sessions, study.images[0].path)
    without_oct = CurrentRuntime(Runtime(Settings(), {}))
    pipeline = TriagePipeline(sqlite_sessions, without_oct, queue.Queue(), threading.Event())
    try:
        pipeline.process(instance_id)
    finally:
        pipeline.decoder.close()
    assert _state(sqlite_sessions, instance_id) == (
        InstanceState.SKIPPED,
        "No oct model is loaded.",
        "",
    )
