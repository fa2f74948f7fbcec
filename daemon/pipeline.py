"""Infer: decode each stored instance, route it to a model, record the result.

Decode workers (``[models] decode_workers`` threads, each with its own
decoder child process) drain a bounded queue of instance ids. The queue is
only a hint: the database is the truth, and the workers sweep it for
instances still waiting (after a restart, when the queue was full, or when
a lease ran out). Each leased image is routed to a model, decoded and
prepared in the child, and handed to the batcher (``daemon.batching``),
which runs the model on many images at once and gives the results back
here to be recorded, a batch per transaction. Without a batcher (tests,
tools) each image is inferred at once, as a batch of one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.batching import MicroBatcher, Outcome, Prepared, infer
from daemon.decoding import DecoderCrashed, IsolatedDecoder, decode
from daemon.ingest_priority import IngestPriority
from daemon.routing import route
from daemon.runtime import CurrentRuntime
from daemon.work_queue import WorkQueue
from daemon.worker import Worker
from domain.errors import InferenceError
from domain.retry import RetryPolicy
from domain.triage import Classification, TriageModality
from model_runtime.classifier import Classifier
from storage import queries
from storage.models import Instance, InstanceState

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100
# Images a decode worker leases in one transaction and decodes in one call to
# its child: a lease commit and a round trip to the child cost milliseconds
# each, which a flood of small images would otherwise pay one by one.
LEASE_BATCH = 8
# Three tries per image, each at once after the last (its lease is freed, or
# runs out if the worker died), then it is marked FAILED. An attempt is
# counted when the image is leased, so one that crashes or hangs the worker
# counts too.
TRIAGE_RETRY = RetryPolicy(delays=(0.0, 0.0))
# Longer than inference of any one image takes; an expired lease (its
# worker died) lets another worker or node take the image.
LEASE_SECONDS = 60.0


def classify_file(
    path: Path,
    classifier: Classifier,
    all_frames: bool = False,
    decoder: IsolatedDecoder | None = None,
) -> Classification:
    """Decode the file's image and classify it.

    With ``all_frames`` every frame of a multi-frame image is classified and
    the most urgent one (the most confident among equals) is the result,
    with its frame number. With ``decoder`` the pixel data is decoded in its
    child process (the daemon's way); without, in this process.
    """
    frames = decoder.decode(path, all_frames) if decoder is not None else decode(path, all_frames)
    if len(frames) == 1:
        return classifier.classify(frames[0].image, frames[0].frame_number)
    return most_urgent(
        classifier.classify_many([f.image for f in frames], [f.frame_number for f in frames])
    )


def most_urgent(results: Sequence[Classification]) -> Classification:
    """A volume's result: its most urgent frame, the most confident among equals."""
    return min(results, key=lambda r: (r.referral.rank, -r.probability))


@dataclasses.dataclass(frozen=True)
class _Leased:
    """What the worker needs of a leased instance, read in the claim's transaction."""

    id: int
    path: str
    attempts: int
    sop_class_uid: str
    modality: str
    body_part_examined: str


class TriagePipeline(Worker):
    """Decode instances for triage: from the queue, and from the database's sweep.

    Each instance is leased (an attempt counted) in a short transaction;
    decoding, preparation and inference run with no transaction open; the
    results are recorded in another short one. An image still failing after
    ``TRIAGE_RETRY.max_attempts`` (or one that crashed or hung its worker that
    many times) is marked FAILED with its reason and never tried again.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        runtime: CurrentRuntime,
        work: WorkQueue,
        stop: threading.Event,
        idle_seconds: float = 0.5,
        decoder: IsolatedDecoder | None = None,
        batcher: MicroBatcher[_Leased] | None = None,
        name: str = "triage-pipeline",
        priority: IngestPriority | None = None,
    ) -> None:
        super().__init__(name, stop, idle_seconds=0.05, stuck_seconds=300.0)
        self.decoder = decoder if decoder is not None else IsolatedDecoder()
        self.sessions = sessions
        self.runtime = runtime
        self.work = work
        self.queue_wait = idle_seconds
        self.batcher = batcher
        # Ingest first: while images arrive, this worker waits for the
        # receivers to fall quiet before it leases more.
        self.priority = priority

    def tick(self) -> bool:
        try:
            first = self.work.get(timeout=self.queue_wait)
        except queue.Empty:
            self._yield_to_ingest()
            return self.sweep()
        self._yield_to_ingest()
        instance_ids = [first]
        while len(instance_ids) < LEASE_BATCH:
            try:
                instance_ids.append(self.work.get_nowait())
            except queue.Empty:
                break
        self.process_many(instance_ids)
        return True

    def _yield_to_ingest(self) -> None:
        if self.priority is not None:
            self.priority.wait_for_quiet(self.stop, self.name)
            self.beat()

    def sweep(self) -> bool:
        """Process instances the queue missed (restarts, a full queue, expired leases)."""
        with self.sessions() as session:
            pending = queries.pending_instance_ids(session, SWEEP_BATCH)
        for start in range(0, len(pending), LEASE_BATCH):
            if self.stop.is_set():
                break
            self.beat()
            self.process_many(pending[start : start + LEASE_BATCH])
        return bool(pending)

    def process(self, instance_id: int) -> None:
        self.process_many([instance_id])

    def process_many(self, instance_ids: list[int]) -> None:
        """Lease these images in one transaction, decode them in one call to the
        child, and hand each to the batcher (or infer it at once without one)."""
        routed = [
            routing
            for lease in self._lease(instance_ids)
            if (routing := self._route(lease)) is not None
        ]
        if not routed:
            return
        started = time.perf_counter()
        requests = [
            (Path(lease.path), frames, model.manifest.input) for lease, model, frames in routed
        ]
        try:
            decoded = self.decoder.decode_many_for_model(requests)
        except Exception as exc:
            # Not one image's fault (each image's own error comes back in its
            # place): all go back for another try, their attempts counted.
            logger.exception("Decoding %d image(s) failed", len(routed))
            reason = f"{type(exc).__name__}: {exc}"
            release(self.sessions, [lease for lease, _model, _frames in routed], reason)
            return
        per_image = (time.perf_counter() - started) / len(routed)
        for _ in routed:
            metrics.DECODE_SECONDS.observe(per_image)
        for (lease, classifier, _all_frames), result in zip(routed, decoded, strict=True):
            if isinstance(result, Exception):
                self._failed(lease, result)
                continue
            rows, frame_numbers = result
            prepared = Prepared(lease, classifier, rows, frame_numbers)
            if self.batcher is None:
                batch_size = self.runtime.current().settings.models.batch_size
                record_outcomes(self.sessions, [(prepared, infer([prepared], batch_size)[0])])
            elif not self.batcher.submit(prepared):
                give_back(self.sessions, [prepared])  # stopping: never tried, so not counted

    def _failed(self, leased: _Leased, error: Exception) -> None:
        if isinstance(error, InferenceError):
            # The image itself cannot be triaged: no other try would do better.
            self._finish(leased, InstanceState.FAILED, str(error))
            logger.warning("Instance %d could not be triaged: %s", leased.id, error)
        elif isinstance(error, DecoderCrashed):
            # The image may be to blame, or the host: tried again, up to its last try.
            logger.error(
                "Instance %d: %s (attempt %d of %d)",
                leased.id,
                error,
                leased.attempts,
                TRIAGE_RETRY.max_attempts,
            )
            release(self.sessions, [leased], str(error))
        else:
            # A bug: the instance goes back for another try (its attempt is
            # counted); the worker carries on.
            logger.error(
                "Unexpected error while triaging instance %d",
                leased.id,
                exc_info=(type(error), error, error.__traceback__),
            )
            release(self.sessions, [leased], f"{type(error).__name__}: {error}")

    def _lease(self, instance_ids: list[int]) -> list[_Leased]:
        """Lease what nobody holds (an attempt counted); give up on what used its last."""
        leased = []
        with self.sessions() as session, session.begin():
            for instance in queries.lease_instances(session, instance_ids, LEASE_SECONDS):
                if instance.attempts > TRIAGE_RETRY.max_attempts:
                    queries.mark_instance(
                        session,
                        instance,
                        InstanceState.FAILED,
                        f"Given up after {TRIAGE_RETRY.max_attempts} attempts that did not "
                        f"finish. Last error: "
                        f"{instance.error or 'none recorded (the worker stopped)'}",
                    )
                    logger.error(
                        "Instance %d given up after %d attempts that did not finish",
                        instance.id,
                        TRIAGE_RETRY.max_attempts,
                    )
                    continue
                series = instance.series
                leased.append(
                    _Leased(
                        id=instance.id,
                        path=instance.path,
                        attempts=instance.attempts,
                        sop_class_uid=instance.sop_class_uid,
                        modality=series.modality,
                        body_part_examined=series.body_part_examined,
                    )
                )
        return leased

    def _finish(self, leased: _Leased, state: InstanceState, reason: str) -> None:
        with self.sessions() as session, session.begin():
            instance = queries.leased_instance(session, leased.id, leased.path)
            if instance is not None:
                queries.mark_instance(session, instance, state, reason)

    def _route(self, leased: _Leased) -> tuple[_Leased, Classifier, bool] | None:
        """The model for one image, from one runtime snapshot; None when it is skipped."""
        target = route(leased.sop_class_uid, leased.modality, leased.body_part_examined)
        if target is None:
            self._finish(
                leased,
                InstanceState.SKIPPED,
                f"No model for SOP class {leased.sop_class_uid}, modality "
                f"{leased.modality}, body part {leased.body_part_examined or 'absent'}.",
            )
            logger.info("Instance %d skipped: no model applies", leased.id)
            return None
        runtime = self.runtime.current()  # one snapshot for the whole image
        classifier = runtime.classifiers.get(target)
        if classifier is None:
            self._finish(leased, InstanceState.SKIPPED, f"No {target.value} model is loaded.")
            logger.warning("Instance %d skipped: no %s model loaded", leased.id, target.value)
            return None
        all_frames = runtime.settings.study.oct_frames == "all" and target == TriageModality.OCT
        return leased, classifier, all_frames


def record_outcomes(
    sessions: sessionmaker[Session], outcomes: list[tuple[Prepared[_Leased], Outcome]]
) -> None:
    """Record a batch's results (a volume's most urgent frame) in one transaction."""
    results: list[tuple[Instance, Classification]] = []
    failed: list[tuple[int, InferenceError]] = []
    with sessions() as session, session.begin():
        waiting = queries.leased_instances(
            session, [(prepared.key.id, prepared.key.path) for prepared, _outcome in outcomes]
        )
        for prepared, outcome in outcomes:
            leased = prepared.key
            # pop: an image whose lease ran out while it waited can be taken by
            # a second worker and meet its first copy in this batch; once is enough.
            instance = waiting.pop(leased.id, None)
            if instance is None:
                continue  # replaced by a new copy meanwhile (or recorded just above)
            if isinstance(outcome, InferenceError):
                queries.mark_instance(session, instance, InstanceState.FAILED, str(outcome))
                failed.append((leased.id, outcome))
                continue
            results.append((instance, most_urgent(outcome)))
        queries.record_results(session, results)
        triaged = [(instance.id, result) for instance, result in results]
    for instance_id, error in failed:
        logger.warning("Instance %d could not be triaged: %s", instance_id, error)
    for instance_id, result in triaged:
        metrics.INSTANCES_TRIAGED.labels(result.modality).inc()
        logger.info(
            "Instance %d triaged: %s (%s, p=%.3f) by %s %s on %s in %.1f ms",
            instance_id,
            result.label,
            result.referral.value,
            result.probability,
            result.model_name,
            result.model_version,
            result.execution_provider,
            result.inference_ms,
        )


def release(sessions: sessionmaker[Session], leased: Sequence[_Leased], reason: str) -> None:
    """Give images back for another try, their attempt counted, with the reason."""
    with sessions() as session, session.begin():
        for item in leased:
            queries.release_instance(session, item.id, reason)


def give_back(sessions: sessionmaker[Session], prepared: Sequence[Prepared[_Leased]]) -> None:
    """Give back images the daemon stopped before trying: their attempt is not counted."""
    with sessions() as session, session.begin():
        for item in prepared:
            queries.return_instance(session, item.key.id)
    logger.info("Gave back %d image(s) not yet triaged at shutdown", len(prepared))


def fail_batch(
    sessions: sessionmaker[Session], prepared: Sequence[Prepared[_Leased]], error: Exception
) -> None:
    """A batch that could not be run or recorded: each image goes back for another try."""
    release(sessions, [item.key for item in prepared], f"{type(error).__name__}: {error}")


def triage_batcher(
    sessions: sessionmaker[Session],
    runtime: CurrentRuntime,
    stop: threading.Event,
    triaged: Callable[[], None] = lambda: None,
) -> MicroBatcher[_Leased]:
    """The batcher the decode workers hand their images to, recording here;
    ``triaged`` is told after each batch is recorded (the report builder's wake)."""

    def record(outcomes: list[tuple[Prepared[_Leased], Outcome]]) -> None:
        record_outcomes(sessions, outcomes)
        triaged()

    return MicroBatcher(
        runtime,
        record=record,
        give_back=functools.partial(give_back, sessions),
        fail=functools.partial(fail_batch, sessions),
        stop=stop,
        # Room for two full batches, so that the next fills while one runs.
        capacity=max(64, 2 * runtime.current().settings.models.batch_size),
    )
