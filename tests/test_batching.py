"""Micro-batches across instances: the same answers as one image at a time,
and nothing lost or miscounted when the daemon stops (in process, SQLite)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.batching import Prepared, infer
from daemon.config import ModelSettings, Settings
from daemon.decoding import decode_for_model
from daemon.pipeline import TriagePipeline, classify_file, give_back, triage_batcher
from daemon.runtime import CurrentRuntime, Runtime
from daemon.supervisor import Supervisor
from domain.errors import InferenceError
from domain.triage import Classification, TriageModality
from model_runtime.classifier import Classifier
from phantoms.files import write_dicom_studies
from storage import queries
from storage.models import Instance, InstanceState
from tests.records import store_received


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("batching")
    return {
        modality: sorted(write_dicom_studies(modality, root / modality, 3, seed=71).rglob("*.dcm"))
        for modality in ("oct", "cxr")
    }


@pytest.fixture(scope="module")
def classifiers(model_dirs: dict[str, Path]) -> dict[str, Classifier]:
    return {modality: Classifier(path, "cpu") for modality, path in model_dirs.items()}


def _prepared(classifier: Classifier, path: Path, all_frames: bool = False) -> Prepared[Path]:
    rows, frames = decode_for_model(path, all_frames, classifier.manifest.input)
    return Prepared(path, classifier, rows, frames)


def _same(a: list[Classification], b: list[Classification]) -> None:
    assert [(r.label, r.frame_number) for r in a] == [(r.label, r.frame_number) for r in b]
    for x, y in zip(a, b, strict=True):
        for label, probability in x.probabilities.items():
            assert probability == pytest.approx(y.probabilities[label], abs=1e-5)


def test_batched_results_equal_unbatched(
    phantoms: dict[str, list[Path]], classifiers: dict[str, Classifier]
) -> None:
    """Two models interleaved, single B-scans and whole volumes, batches of 5."""
    items = []
    for index, path in enumerate(phantoms["oct"]):
        items.append(_prepared(classifiers["oct"], path, all_frames=index % 2 == 0))
        items.append(_prepared(classifiers["cxr"], phantoms["cxr"][index % len(phantoms["cxr"])]))
    batched = infer(items, max_images=5)
    alone = [infer([item], max_images=1)[0] for item in items]
    assert len(batched) == len(items)
    for together, single in zip(batched, alone, strict=True):
        assert isinstance(together, list) and isinstance(single, list)
        _same(together, single)
    # And the pipeline's own unbatched path, image by image, agrees.
    for item, together in zip(items[1::2], batched[1::2], strict=True):
        assert isinstance(together, list)
        reference = classify_file(item.key, item.classifier)
        assert together[0].label == reference.label


def test_one_call_per_model_and_never_more_rows_than_the_batch(
    phantoms: dict[str, list[Path]], model_dirs: dict[str, Path]
) -> None:
    calls: list[tuple[str, int]] = []

    class Counting(Classifier):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            calls.append((self.manifest.modality.value, len(batch)))
            return super().predict(batch)

    oct_model, cxr_model = Counting(model_dirs["oct"], "cpu"), Counting(model_dirs["cxr"], "cpu")
    volume = _prepared(oct_model, phantoms["oct"][0], all_frames=True)
    assert len(volume.rows) > 1
    items = [
        _prepared(oct_model, phantoms["oct"][1]),
        _prepared(cxr_model, phantoms["cxr"][0]),
        volume,
        _prepared(oct_model, phantoms["oct"][2]),
        _prepared(cxr_model, phantoms["cxr"][1]),
    ]
    infer(items, max_images=2)
    assert sorted(calls) == sorted(
        [("oct", 1), ("oct", len(volume.rows)), ("oct", 1), ("cxr", 2)]
    )  # the volume runs alone, whole; the models never share a call


def test_a_model_that_refuses_a_batch_fails_only_that_batch(
    phantoms: dict[str, list[Path]], model_dirs: dict[str, Path], classifiers: dict[str, Classifier]
) -> None:
    class Refusing(Classifier):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise InferenceError("the model refused the batch")

    refusing = Refusing(model_dirs["oct"], "cpu")
    items = [
        _prepared(refusing, phantoms["oct"][0]),
        _prepared(classifiers["cxr"], phantoms["cxr"][0]),
    ]
    failed, fine = infer(items, max_images=8)
    assert isinstance(failed, InferenceError)
    assert isinstance(fine, list) and fine[0].modality == "cxr"


def _runtime(classifiers: dict[str, Classifier], batch_size: int) -> CurrentRuntime:
    settings = dataclasses.replace(
        Settings(), models=ModelSettings(batch_size=batch_size, batch_wait_ms=50)
    )
    return CurrentRuntime(
        Runtime(
            settings,
            {
                TriageModality.OCT: classifiers["oct"],
                TriageModality.CXR: classifiers["cxr"],
            },
        )
    )


def test_a_flood_through_decode_workers_and_the_batcher_is_triaged_in_batches(
    tmp_path: Path,
    phantoms: dict[str, list[Path]],
    classifiers: dict[str, Classifier],
    sqlite_sessions: sessionmaker[Session],
) -> None:
    from tests.traffic import plan_studies

    pool = phantoms["oct"] + phantoms["cxr"]
    studies = plan_studies(pool, tmp_path / "flood", studies=12, images_per_study=2)
    work: queue.Queue[int] = queue.Queue()
    ids = [store_received(sqlite_sessions, image.path) for s in studies for image in s.images]
    runtime = _runtime(classifiers, batch_size=8)
    supervisor = Supervisor(threading.Event())
    batcher = triage_batcher(sqlite_sessions, runtime, supervisor.stop)
    decoders = [
        TriagePipeline(
            sqlite_sessions, runtime, work, supervisor.stop, batcher=batcher, name=f"d{n}"
        )
        for n in range(2)
    ]
    for decoder in decoders:
        supervisor.close_at_exit(decoder.decoder.close)
    batches_before = (
        metrics.BATCH_IMAGES._sum.get(),
        sum(bucket.get() for bucket in metrics.BATCH_IMAGES._buckets),
    )
    for instance_id in ids:
        work.put(instance_id)
    supervisor.start(batcher, *decoders)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlite_sessions() as session:
                if queries.work_counts(session)["instances_waiting"] == 0:
                    break
            time.sleep(0.1)
    finally:
        assert supervisor.drain(10) == []
    images = metrics.BATCH_IMAGES._sum.get() - batches_before[0]
    calls = sum(bucket.get() for bucket in metrics.BATCH_IMAGES._buckets) - batches_before[1]
    with sqlite_sessions() as session:
        rows = [session.get_one(Instance, i) for i in ids]
        assert [r.state for r in rows] == [InstanceState.TRIAGED] * len(ids)
        for row in rows:  # each result is the one the image gets alone
            model = classifiers["oct" if row.result.modality == "oct" else "cxr"]
            assert row.result.label == classify_file(Path(row.path), model).label
    assert images == len(ids)
    assert calls < len(ids)  # some calls carried more than one image
    print(f"\n{len(ids)} images in {calls:.0f} model calls")


def test_images_still_waiting_at_shutdown_are_given_back_uncounted(
    tmp_path: Path,
    phantoms: dict[str, list[Path]],
    classifiers: dict[str, Classifier],
    sqlite_sessions: sessionmaker[Session],
) -> None:
    from tests.traffic import plan_studies

    studies = plan_studies(phantoms["oct"], tmp_path / "s", studies=3, images_per_study=1)
    ids = [store_received(sqlite_sessions, s.images[0].path) for s in studies]
    runtime = _runtime(classifiers, batch_size=8)
    stop = threading.Event()
    batcher = triage_batcher(sqlite_sessions, runtime, stop)
    pipeline = TriagePipeline(sqlite_sessions, runtime, queue.Queue(), stop, batcher=batcher)
    try:
        for instance_id in ids[:2]:
            pipeline.process(
                instance_id
            )  # leased (attempt 1) and queued; the batcher is not running
        with sqlite_sessions() as session:
            assert [session.get_one(Instance, i).attempts for i in ids[:2]] == [1, 1]
        stop.set()
        batcher.run()  # the stopped loop ends at once and gives back what waits
        pipeline.process(ids[2])  # decoded after the batcher closed: given back too
    finally:
        pipeline.decoder.close()
    with sqlite_sessions() as session:
        for instance_id in ids:
            row = session.get_one(Instance, instance_id)
            assert (row.state, row.attempts, row.lease_until) == (InstanceState.RECEIVED, 0, None)


def test_give_back_never_takes_an_attempt_below_zero(
    tmp_path: Path,
    phantoms: dict[str, list[Path]],
    classifiers: dict[str, Classifier],
    sqlite_sessions: sessionmaker[Session],
) -> None:
    instance_id = store_received(sqlite_sessions, phantoms["oct"][0])
    item = _prepared(classifiers["oct"], phantoms["oct"][0])
    from daemon.pipeline import _Leased

    leased = _Leased(instance_id, str(phantoms["oct"][0]), 0, "", "OPT", "")
    give_back(sqlite_sessions, [dataclasses.replace(item, key=leased)])
    with sqlite_sessions() as session:
        assert session.get_one(Instance, instance_id).attempts == 0


def test_an_image_twice_in_one_batch_is_recorded_once(
    tmp_path: Path,
    phantoms: dict[str, list[Path]],
    classifiers: dict[str, Classifier],
    sqlite_sessions: sessionmaker[Session],
) -> None:
    """A lease can run out while an image waits for its batch (a long queue of
    whole volumes on a CPU); a second worker then takes it too, and both
    copies may meet in one batch. The image is recorded once, and its
    batch-mates with it."""
    from daemon.pipeline import _Leased, record_outcomes
    from tests.traffic import plan_studies

    studies = plan_studies(phantoms["oct"], tmp_path / "s", studies=2, images_per_study=1)
    ids = [store_received(sqlite_sessions, s.images[0].path) for s in studies]
    with sqlite_sessions() as session, session.begin():
        queries.lease_instances(session, ids, 60)
    items = [
        dataclasses.replace(
            _prepared(classifiers["oct"], study.images[0].path),
            key=_Leased(instance_id, str(study.images[0].path), 1, "", "OPT", ""),
        )
        for instance_id, study in zip(ids, studies, strict=True)
    ]
    twice = [items[0], items[1], items[0]]
    record_outcomes(sqlite_sessions, list(zip(twice, infer(twice, 8), strict=True)))
    with sqlite_sessions() as session:
        rows = [session.get_one(Instance, i) for i in ids]
        assert [row.state for row in rows] == [InstanceState.TRIAGED] * 2
