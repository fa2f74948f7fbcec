"""Infer: decode each stored instance, route it to a model, record the result.

One worker thread drains a bounded queue of instance ids. The queue is only
a hint: the database is the truth, and the worker sweeps it for instances
still waiting (after a restart, or when the queue was full).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.errors import InferenceError
from daemon.inference import Classifier
from daemon.routing import route
from dicom_io.codes import TriageModality
from dicom_io.pixels import decode_all_frames, decode_instance
from storage import queries
from storage.models import Instance, InstanceState

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100


def classify_file(
    path: Path, classifier: Classifier, all_frames: bool = False
) -> queries.Classification:
    """The pure step: decode the file's image and classify it.

    With ``all_frames`` every frame of a multi-frame image is classified and
    the most urgent one (the most confident among equals) is the result,
    with its frame number.
    """
    if not all_frames:
        decoded = decode_instance(path)
        return classifier.classify(decoded.image, decoded.frame_number)
    frames = decode_all_frames(path)
    results = classifier.classify_many([f.image for f in frames], [f.frame_number for f in frames])
    return min(results, key=lambda r: (r.referral.rank, -r.probability))


class TriagePipeline(threading.Thread):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        classifiers: Mapping[TriageModality, Classifier],
        work: queue.Queue[int],
        stop: threading.Event,
        idle_seconds: float = 0.5,
        oct_all_frames: bool = False,
    ) -> None:
        super().__init__(name="triage-pipeline", daemon=True)
        self.sessions = sessions
        self.classifiers = classifiers
        self.work = work
        self.stop = stop
        self.idle_seconds = idle_seconds
        self.oct_all_frames = oct_all_frames
        # Refreshed every loop; the main loop stops pinging the watchdog if it ages.
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        logger.info("Inference pipeline started")
        while not self.stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                instance_id = self.work.get(timeout=self.idle_seconds)
            except queue.Empty:
                self.sweep()
                continue
            self.process(instance_id)
        logger.info("Inference pipeline stopped")

    def sweep(self) -> None:
        """Process instances the queue missed (restarts, a full queue)."""
        with self.sessions() as session:
            pending = queries.pending_instance_ids(session, SWEEP_BATCH)
        for instance_id in pending:
            if self.stop.is_set():
                return
            self.process(instance_id)

    def process(self, instance_id: int) -> None:
        try:
            with self.sessions() as session, session.begin():
                instance = queries.claim_instance(session, instance_id)
                if instance is None:
                    return  # done already, or another node is on it
                self._triage(session, instance)
        except Exception:
            # A bug or a database outage must not kill the worker; the
            # instance stays RECEIVED and the next sweep retries it.
            logger.exception("Unexpected error while triaging instance %d", instance_id)
            self.stop.wait(1.0)

    def _triage(self, session: Session, instance: Instance) -> None:
        series = instance.series
        target = route(instance.sop_class_uid, series.modality, series.body_part_examined)
        if target is None:
            queries.mark_instance(
                session,
                instance,
                InstanceState.SKIPPED,
                f"No model for SOP class {instance.sop_class_uid}, modality "
                f"{series.modality}, body part {series.body_part_examined or 'absent'}.",
            )
            logger.info("Instance %d skipped: no model applies", instance.id)
            return
        classifier = self.classifiers.get(target)
        if classifier is None:
            queries.mark_instance(
                session, instance, InstanceState.SKIPPED, f"No {target.value} model is loaded."
            )
            logger.warning("Instance %d skipped: no %s model loaded", instance.id, target.value)
            return
        try:
            all_frames = self.oct_all_frames and target == TriageModality.OCT
            with metrics.INFERENCE_SECONDS.time():
                result = classify_file(Path(instance.path), classifier, all_frames)
        except InferenceError as exc:
            queries.mark_instance(session, instance, InstanceState.FAILED, str(exc))
            logger.warning("Instance %d could not be triaged: %s", instance.id, exc)
            return
        queries.record_result(session, instance, result)
        metrics.INSTANCES_TRIAGED.labels(result.modality).inc()
        logger.info(
            "Instance %d triaged: %s (%s, p=%.3f) by %s %s on %s in %.1f ms",
            instance.id,
            result.label,
            result.referral.value,
            result.probability,
            result.model_name,
            result.model_version,
            result.execution_provider,
            result.inference_ms,
        )
