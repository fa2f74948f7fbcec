"""Images recorded and triaged in a real database, as the daemon would, without the network."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from domain.triage import Classification, Referral
from storage import queries
from storage.models import Instance, Study, StudyState


def classification() -> Classification:
    return Classification(
        modality="oct",
        label="CNV",
        referral=Referral.URGENT,
        probability=0.9,
        probabilities={"CNV": 0.9, "DME": 0.05, "DRUSEN": 0.03, "NORMAL": 0.02},
        model_name="test-model",
        model_version="1",
        model_sha256="ab" * 32,
        execution_provider="CPUExecutionProvider",
        inference_ms=1.0,
    )


def store_received(sessions: sessionmaker[Session], path: Path) -> int:
    """Record one image as the C-STORE handler does; its instance id."""
    header = dcmread(path, stop_before_pixels=True)
    with sessions() as session, session.begin():
        return queries.record_instance(
            session,
            header,
            transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
            path=str(path),
            size_bytes=path.stat().st_size,
            sha256="0" * 64,
            calling_ae_title="SCANNER",
        ).id


def store_reported(sessions: sessionmaker[Session], path: Path) -> int:
    """Record one triaged image whose study is reported, as the report builder
    leaves it; the image's instance id."""
    study_id = store_triaged(sessions, path)
    with sessions() as session, session.begin():
        study = session.get_one(Study, study_id)
        if not queries.commit_report_state(session, study_id, study.revision, StudyState.REPORTED):
            raise AssertionError(f"study {study_id} could not be reported")
        (instance,) = study.instances
        return instance.id


def store_triaged(sessions: sessionmaker[Session], path: Path) -> int:
    """Record one image and its result, as the C-STORE handler and the pipeline do; its study id."""
    instance_id = store_received(sessions, path)
    with sessions() as session, session.begin():
        instance = session.get_one(Instance, instance_id)
        queries.record_result(session, instance, classification())
        return instance.study_fk
