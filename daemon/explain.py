"""Explain: occlusion heat maps of triaged images, after their SR.

A poller finds triaged images whose result the policy covers and whose
study is already reported (so the SR always goes first), and hands their ids
to a bounded queue; worker threads compute the map (``model_runtime.occlusion``),
wrap it as a Secondary Capture (``dicom_io.sc``), store it in SQL and, when
``[occlusion] send`` is on, queue its delivery behind the study's SR. None of
this runs on an association thread or in the report path.

An image whose map fails (its file damaged or gone, say) rests before the
next try and is given up after ``MAP_RETRY``'s last, with its reason, in the
database (``queries.map_failed``); it is left out of the poller's query
meanwhile, so a few such images can never hold the bounded queue and starve
the rest, and a restart neither forgets nor repeats them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__, metrics
from daemon.config import Settings
from daemon.decoding import IsolatedDecoder, decode
from daemon.runtime import CurrentRuntime
from daemon.worker import Worker
from dicom_io.sc import build_heatmap_sc, render_overlay
from domain.retry import RetryPolicy
from domain.triage import TriageModality
from model_runtime.classifier import Classifier
from model_runtime.occlusion import OcclusionMap, occlusion_map, to_source_geometry
from storage import queries
from storage.models import Instance, OcclusionMapRecord

logger = logging.getLogger(__name__)


class _Poller(Worker):
    def __init__(self, explainer: Explainer) -> None:
        super().__init__(
            "occlusion-poller", explainer.stop, explainer.poll_seconds, stuck_seconds=300.0
        )
        self.explainer = explainer

    def tick(self) -> bool:
        return self.explainer.poll()


class _MapWorker(Worker):
    # Longer than one map can take (InceptionV3 fast mode on a CPU: minutes).
    STUCK_SECONDS = 1800.0

    def __init__(self, explainer: Explainer, number: int) -> None:
        super().__init__(
            f"occlusion-{number}",
            explainer.stop,
            idle_seconds=0.05,
            stuck_seconds=self.STUCK_SECONDS,
        )
        self.explainer = explainer

    def tick(self) -> bool:
        return self.explainer.work_one()


# A failed map is tried again after a minute, then ten, then given up.
MAP_RETRY = RetryPolicy(delays=(60.0, 600.0))


def render_sc(
    path: Path,
    classifier: Classifier,
    label: str,
    frame_number: int | None,
    settings: Settings,
    decoder: IsolatedDecoder | None = None,
) -> tuple[bytes, str, OcclusionMap]:
    """Compute the map of one image; return (SC bytes, SOP Instance UID, map).

    With ``decoder`` the pixel data is decoded in its child process.
    """
    decoded = decoder.decode(path)[0] if decoder is not None else decode(path, False)[0]
    if frame_number is not None and frame_number != decoded.frame_number:
        frames = decoder.decode(path, True) if decoder is not None else decode(path, True)
        decoded = frames[frame_number - 1]
    occlusion = settings.occlusion
    result = occlusion_map(
        classifier.predict,
        classifier.prepare(decoded.image),
        box=occlusion.box,
        mode=occlusion.mode,
        stride=occlusion.stride,
        fill=occlusion.fill,
        class_index=list(classifier.manifest.labels).index(label),
    )
    rows, cols = decoded.image.shape
    values = to_source_geometry(result.values, rows, cols)
    overlay = render_overlay(decoded.image, values, "0", f"{float(values.max()):.2f}")
    source = dcmread(path, stop_before_pixels=True)
    image = build_heatmap_sc(
        source,
        overlay,
        frame_number=decoded.frame_number,
        description=(
            f"Occlusion map of {label}: drop in its probability when a {result.box}-pixel box "
            f"hides each region ({result.mode}, {result.forward_passes} passes); model "
            f"{classifier.manifest.name} {classifier.manifest.version}"
        ),
        software_version=f"dicom-triage {__version__}",
    )
    buffer = BytesIO()
    image.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(image.SOPInstanceUID), result


class Explainer:
    """The poller and the map workers, with what they share.

    Both are ``daemon.worker.Worker`` loops (heartbeat, stop, back-off of
    failing rounds); ``workers()`` hands them to the supervisor.
    """

    def __init__(
        self,
        runtime: CurrentRuntime,
        sessions: sessionmaker[Session],
        stop: threading.Event,
        poll_seconds: float = 1.0,
        triage_backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        # The queue and the threads are sized once (restart-only settings).
        settings = runtime.current().settings
        self.runtime = runtime
        # Images waiting for triage: while there are any, no map starts, so
        # that maps use only the capacity triage leaves.
        self.triage_backlog = triage_backlog
        self.sessions = sessions
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.work: queue.Queue[int] = queue.Queue(maxsize=settings.occlusion.queue_size)
        self.in_flight: set[int] = set()
        self._lock = threading.Lock()
        # Its own child: map workers never wait behind the pipeline's decoding.
        self.decoder = IsolatedDecoder()
        self._workers: list[Worker] = [_Poller(self)]
        self._workers += [_MapWorker(self, n) for n in range(settings.occlusion.workers)]

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def poll(self) -> bool:
        """Queue the images that need a map and are not resting."""
        with self.sessions() as session:
            candidates = queries.instances_needing_maps(
                session,
                self.runtime.current().settings.occlusion.referrals,
                self.work.maxsize,
                exclude=self.in_hand(),
            )
        for instance_id in candidates:
            with self._lock:
                if instance_id in self.in_flight:
                    continue
                self.in_flight.add(instance_id)
            try:
                self.work.put(instance_id, timeout=self.poll_seconds)
            except queue.Full:
                with self._lock:
                    self.in_flight.discard(instance_id)
                break
        return False  # the poller waits a round between polls, whatever it found

    def work_one(self) -> bool:
        """Make the map of one queued image; True if there was one.

        Triage goes first: while images wait for it, no map starts.
        """
        if self.triage_backlog() > 0:
            metrics.OCCLUSION_YIELDING.set(1)
            return False
        metrics.OCCLUSION_YIELDING.set(0)
        try:
            instance_id = self.work.get(timeout=self.poll_seconds)
        except queue.Empty:
            return False
        try:
            self.explain(instance_id)
        except Exception as exc:
            metrics.OCCLUSION_MAPS.labels("failed").inc()
            self.record_failure(instance_id, exc)
        finally:
            with self._lock:
                self.in_flight.discard(instance_id)
        return True

    def queued(self) -> int:
        """Maps waiting in the queue, for the status file."""
        return self.work.qsize()

    def in_hand(self) -> set[int]:
        """Images queued or being mapped: the poller does not queue them twice."""
        with self._lock:
            return set(self.in_flight)

    def record_failure(self, instance_id: int, error: Exception) -> None:
        """Count the failure in the database and log it with the next try, if any."""
        with self.sessions() as session, session.begin():
            tries, delay = queries.map_failed(
                session, instance_id, f"{type(error).__name__}: {error}", MAP_RETRY
            )
        if delay is None:
            logger.error(
                "Occlusion map of instance %d failed %d times; given up",
                instance_id,
                tries,
                exc_info=error,
            )
        else:
            logger.error(
                "Occlusion map of instance %d failed (try %d); next try in %.0f s",
                instance_id,
                tries,
                delay,
                exc_info=error,
            )

    def explain(self, instance_id: int) -> None:
        with self.sessions() as session:
            instance = session.get(Instance, instance_id)
            if instance is None or instance.result is None or not instance.path:
                return
            result = instance.result
            path, label, frame = Path(instance.path), result.label, result.frame_number
            study_fk, modality = instance.study_fk, TriageModality(result.modality)
        runtime = self.runtime.current()  # one snapshot for the whole map
        settings, classifier = runtime.settings, runtime.classifiers[modality]
        content, sop_instance_uid, occlusion = render_sc(
            path, classifier, label, frame, settings, self.decoder
        )
        try:
            with self.sessions() as session, session.begin():
                record = OcclusionMapRecord(
                    instance_fk=instance_id,
                    study_fk=study_fk,
                    sop_instance_uid=sop_instance_uid,
                    content=content,
                    model_name=classifier.manifest.name,
                    model_version=classifier.manifest.version,
                    label=label,
                    box_size=occlusion.box,
                    mode=occlusion.mode,
                    stride=occlusion.stride,
                    forward_passes=occlusion.forward_passes,
                    compute_ms=occlusion.seconds * 1000,
                )
                session.add(record)
                session.flush()
                if settings.occlusion.send:
                    queries.add_occlusion_deliveries(
                        session,
                        record,
                        [(d.ae_title, d.host, d.port) for d in settings.destinations],
                    )
        except IntegrityError:
            return  # another node made this map first
        metrics.OCCLUSION_MAPS.labels("made").inc()
        logger.info(
            "Occlusion map of instance %d (%s): %d passes in %.1f s",
            instance_id,
            label,
            occlusion.forward_passes,
            occlusion.seconds,
        )
