"""Report: when a study is complete, build its SR and queue its deliveries.

A study is complete when no instance has arrived for ``stable_seconds`` and
none is waiting for inference. Its SR is built with no transaction open,
then stored in SQL with one delivery per destination in one short
transaction, and only if no image arrived meanwhile (the study's revision
is unchanged): a report can never leave out an acknowledged image. Sending
is the delivery workers' job (``daemon.delivery``), never this one's.

A late image reopens its study; the new SR supersedes the earlier one:
same report series, the next instance number, and the earlier SR in its
Predecessor Documents Sequence (PS3.3 C.17.2.1).

A study whose report cannot be built (say an image file is gone) is tried
again after a back-off and, after ``REPORT_RETRY.max_attempts``, parked as
``report_failed`` with its reason: counted, in ``triage status`` and the
metrics, and never in the way of other studies.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__, metrics
from daemon.ingest_priority import IngestPriority
from daemon.runtime import CurrentRuntime
from daemon.worker import Worker
from dicom_io.sr import AlgorithmInfo, ImageTriage, build_triage_report
from domain.retry import Backoff, RetryPolicy
from domain.triage import Referral, TriageModality
from storage import queries
from storage.models import Study, StudyState

logger = logging.getLogger(__name__)

# Three tries, 5 s and 10 s apart, then the study is parked.
REPORT_RETRY = RetryPolicy.exponential(3, Backoff(first=5.0, ceiling=300.0))


@dataclasses.dataclass(frozen=True)
class BuiltReport:
    content: bytes
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    supersedes: int | None


def build_study_report(session: Session, study: Study) -> BuiltReport | None:
    """The SR of a complete study, or None when none of its images was triaged."""
    instances = queries.triaged_instances(session, study)
    result = study.result
    if not instances or result is None:
        return None
    images = []
    for instance in instances:
        if instance.result is None:
            continue
        header = dcmread(Path(instance.path), stop_before_pixels=True)
        images.append(
            ImageTriage(
                source=header,
                label=instance.result.label,
                referral=Referral(instance.result.referral),
                probabilities=dict(instance.result.probabilities),
                frame_number=instance.result.frame_number,
            )
        )
    deciding = result.deciding_instance.result
    if deciding is None:
        return None
    earlier = queries.latest_report(session, study.id)
    previous: Dataset | None = None
    if earlier is not None:
        previous = dcmread(BytesIO(earlier.content), stop_before_pixels=True)
    report = build_triage_report(
        modality=TriageModality(result.modality),
        study_label=result.label,
        study_referral=Referral(result.referral),
        images=images,
        algorithm=AlgorithmInfo(
            name=deciding.model_name,
            version=deciding.model_version,
            sha256=deciding.model_sha256,
            software_version=f"dicom-triage {__version__}",
        ),
        previous=previous,
    )
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return BuiltReport(
        content=buffer.getvalue(),
        sop_instance_uid=str(report.SOPInstanceUID),
        series_instance_uid=str(report.SeriesInstanceUID),
        sop_class_uid=str(report.SOPClassUID),
        supersedes=earlier.id if earlier is not None else None,
    )


class ReportBuilder(Worker):
    """Builds the SR of every complete study, one study at a time."""

    def __init__(
        self,
        runtime: CurrentRuntime,
        sessions: sessionmaker[Session],
        stop: threading.Event,
        idle_seconds: float = 0.5,
        reported: Callable[[], None] | None = None,
        priority: IngestPriority | None = None,
    ) -> None:
        super().__init__("report-builder", stop, idle_seconds=idle_seconds, stuck_seconds=300.0)
        self.runtime = runtime
        self.sessions = sessions
        # Told of each report committed: the delivery workers' wake.
        self.reported = reported
        self._until_quiet: float | None = None
        # Ingest first: each report waits for the receivers to fall quiet.
        self.priority = priority

    def idle_wait(self) -> float:
        """Until the next study has been quiet for ``stable_seconds``, if that is
        sooner than the idle wait: a report goes out when it is due, not at the
        next poll. (The pipeline wakes this worker when it triages an image,
        for a quiet study that waited on inference.)"""
        if self._until_quiet is None:
            return self.idle_seconds
        # A little after the moment, so that the study is quiet by the
        # database's clock too.
        return min(self.idle_seconds, self._until_quiet + 0.01)

    def tick(self) -> bool:
        stable = self.runtime.current().settings.study.stable_seconds
        with self.sessions() as session:
            ready = queries.studies_ready_to_report(session, stable)
            # Only an idle round waits (a busy one starts the next at once).
            self._until_quiet = None if ready else queries.seconds_until_quiet(session, stable)
        for study_id in ready:
            if self.stop.is_set():
                break
            if self.priority is not None:
                self.priority.wait_for_quiet(self.stop, self.name)
            self.beat()
            try:
                self.report(study_id)
            except Exception as exc:
                self.failed(study_id, exc)
        return bool(ready)

    def report(self, study_id: int) -> None:
        settings = self.runtime.current().settings
        stable = settings.study.stable_seconds
        with self.sessions() as session:
            # The revision is read before the instances: an image stored after
            # this read changes it, and the commit below then refuses.
            study = queries.study_if_ready(session, study_id, stable)
            if study is None:
                return
            revision = study.revision
            built = build_study_report(session, study)
        with self.sessions() as session, session.begin():
            state = StudyState.REPORTED if built is not None else StudyState.NOT_REPORTABLE
            if not queries.commit_report_state(session, study_id, revision, state):
                logger.info("Study %d received an image while its report was built", study_id)
                return
            if built is None:
                logger.warning("Study %d is complete but no image could be triaged", study_id)
                return
            study = session.get_one(Study, study_id)
            queries.add_report(
                session,
                study,
                sop_instance_uid=built.sop_instance_uid,
                series_instance_uid=built.series_instance_uid,
                sop_class_uid=built.sop_class_uid,
                content=built.content,
                destinations=[(d.ae_title, d.host, d.port) for d in settings.destinations],
                supersedes=built.supersedes,
            )
            label = study.result.label if study.result else "?"
            referral = study.result.referral if study.result else "?"
        if self.reported is not None:
            self.reported()
        metrics.REPORTS.labels("superseding" if built.supersedes else "first").inc()
        logger.info(
            "Study %d complete: %s (%s); %s queued for %d destination(s)",
            study_id,
            label,
            referral,
            "a new report superseding the earlier one" if built.supersedes else "report",
            len(settings.destinations),
        )

    def failed(self, study_id: int, error: Exception) -> None:
        """Count the failure; park the study after its last try."""
        reason = f"{type(error).__name__}: {error}"
        with self.sessions() as session, session.begin():
            delay = queries.report_failed(session, study_id, reason, REPORT_RETRY)
        if delay is None:
            metrics.REPORTS.labels("failed").inc()
            logger.error(
                "The report of study %d failed %d times and is parked: %s",
                study_id,
                REPORT_RETRY.max_attempts,
                reason,
                exc_info=error,
            )
        else:
            logger.warning(
                "The report of study %d failed; trying again in %.0f s: %s",
                study_id,
                delay,
                reason,
            )
