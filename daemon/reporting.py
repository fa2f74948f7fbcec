"""Report: when a study is complete, build its SR and deliver it.

A study is complete when no instance has arrived for ``stable_seconds`` and
none is waiting for inference. Its SR is stored in SQL with one delivery per
destination in the same transaction, so that a crash can neither lose nor
duplicate it; deliveries are then attempted until they succeed or run out.
"""

from __future__ import annotations

import logging
import threading
import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__
from daemon.config import Settings
from daemon.delivery import attempt
from dicom_io.codes import Referral, TriageModality
from dicom_io.sr import AlgorithmInfo, ImageTriage, build_triage_report
from storage import queries
from storage.models import Study, StudyState

logger = logging.getLogger(__name__)


def build_study_report(session: Session, study: Study) -> bytes | None:
    """The SR bytes for a complete study, or None when nothing was triaged."""
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
    )
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Reporter(threading.Thread):
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        stop: threading.Event,
        poll_seconds: float = 0.5,
    ) -> None:
        super().__init__(name="triage-reporter", daemon=True)
        self.settings = settings
        self.sessions = sessions
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.heartbeat = time.monotonic()

    def run(self) -> None:
        logger.info("Reporter started")
        while not self.stop.wait(self.poll_seconds):
            self.heartbeat = time.monotonic()
            try:
                self.report_complete_studies()
                self.deliver_due()
            except Exception:
                logger.exception("Unexpected error in the reporter; retrying")
        logger.info("Reporter stopped")

    def report_complete_studies(self) -> None:
        with self.sessions() as session:
            ready = [
                s.id
                for s in queries.studies_ready_to_report(
                    session, self.settings.study.stable_seconds
                )
            ]
        for study_id in ready:
            if self.stop.is_set():
                return
            with self.sessions() as session, session.begin():
                study = queries.claim_study_to_report(session, study_id)
                if study is None:
                    continue
                content = build_study_report(session, study)
                if content is None:
                    study.state = StudyState.NOT_REPORTABLE
                    logger.warning("Study %d is complete but no image could be triaged", study_id)
                    continue
                header = dcmread(BytesIO(content), stop_before_pixels=True)
                queries.add_report(
                    session,
                    study,
                    sop_instance_uid=str(header.SOPInstanceUID),
                    series_instance_uid=str(header.SeriesInstanceUID),
                    sop_class_uid=str(header.SOPClassUID),
                    content=content,
                    destinations=[(d.ae_title, d.host, d.port) for d in self.settings.destinations],
                )
                logger.info(
                    "Study %d complete: %s (%s); report queued for %d destination(s)",
                    study_id,
                    study.result.label if study.result else "?",
                    study.result.referral if study.result else "?",
                    len(self.settings.destinations),
                )

    def deliver_due(self) -> None:
        with self.sessions() as session:
            due = [d.id for d in queries.due_deliveries(session)]
        for delivery_id in due:
            if self.stop.is_set():
                return
            with self.sessions() as session, session.begin():
                delivery = queries.claim_delivery(session, delivery_id)
                if delivery is not None:
                    attempt(session, delivery, self.settings.delivery, self.settings.dicom.ae_title)
