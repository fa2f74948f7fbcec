"""SQLAlchemy 2 models: patients, studies, series, instances, results, reports.

Times are naive UTC (``utcnow``) so that SQLite and PostgreSQL agree.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class InstanceState(enum.StrEnum):
    RECEIVED = "received"  # durably stored, waiting for inference
    TRIAGED = "triaged"
    SKIPPED = "skipped"  # stored, but no model applies (e.g. a lateral CXR of a hand)
    FAILED = "failed"  # stored, but decoding or inference failed


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"
    REPORTED = "reported"
    NOT_REPORTABLE = "not_reportable"  # complete, but no instance could be triaged
    REPORT_FAILED = "report_failed"  # its report could not be built; parked with the reason


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt used up


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Store the values (not the member names) as plain strings: readable in SQL.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(32), default="")
    study_description: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RECEIVING, index=True
    )
    # Raised by every instance stored or replaced: a report is committed only
    # if the revision it was built from is still the study's (no lost image).
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    report_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    report_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # As this study's first image carried them: the worklist shows these, so
    # a patient row shared through a Patient ID never lends one person's
    # name to another's study (nor an old name to a corrected study).
    patient_name: Mapped[str] = mapped_column(String(324), default="", server_default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="", server_default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="", server_default="")

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    result: Mapped[StudyResult | None] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[str] = mapped_column(String(12), default="")
    series_description: Mapped[str] = mapped_column(String(324), default="")

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[InstanceState] = mapped_column(
        _enum(InstanceState, "instance_state"), default=InstanceState.RECEIVED, index=True
    )
    error: Mapped[str] = mapped_column(Text, default="")
    # Inference tries so far; a worker holds the instance until lease_until.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Failed occlusion-map tries: resting until map_retry_at, or given up
    # (tries made, no time set) with the last reason.
    map_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    map_retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    map_error: Mapped[str] = mapped_column(Text, default="", server_default="")

    series: Mapped[Series] = relationship()
    study: Mapped[Study] = relationship(back_populates="instances")
    result: Mapped[InstanceResult | None] = relationship(back_populates="instance")


class InstanceResult(Base):
    __tablename__ = "instance_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    modality: Mapped[str] = mapped_column(String(8))  # "oct" or "cxr"
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32))
    referral: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    frame_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    execution_provider: Mapped[str] = mapped_column(String(64))
    inference_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="result")


class StudyResult(Base):
    __tablename__ = "study_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    # The most urgent instance decides the study (PS: an urgent finding in
    # any image of the study makes the study urgent).
    deciding_instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    modality: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(32))
    referral: Mapped[str] = mapped_column(String(32), index=True)
    probability: Mapped[float] = mapped_column(Float)
    instances_triaged: Mapped[int] = mapped_column(Integer)
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="result")
    deciding_instance: Mapped[Instance] = relationship()


class Report(Base):
    """A Structured Report built for a study, kept as the exact bytes sent."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    # More than one when instances arrive after a study was reported.
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # The earlier SR of the same study that this one replaces (late images).
    supersedes_fk: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id", name="fk_reports_supersedes"), nullable=True
    )

    study: Mapped[Study] = relationship()
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="report")


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("report_fk", "ae_title", "host", "port"),
        UniqueConstraint("occlusion_fk", "ae_title", "host", "port"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Exactly one of these: the object delivered is a report or an occlusion map.
    report_fk: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id"), index=True, nullable=True
    )
    occlusion_fk: Mapped[int | None] = mapped_column(
        ForeignKey("occlusion_maps.id"), index=True, nullable=True
    )
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Set while a worker sends it, so that no other worker (or node) does;
    # a crashed worker's lease simply runs out.
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

    report: Mapped[Report | None] = relationship(back_populates="deliveries")
    occlusion: Mapped[OcclusionMapRecord | None] = relationship(back_populates="deliveries")

    @property
    def content(self) -> bytes:
        source = self.report if self.report is not None else self.occlusion
        if source is None:
            raise ValueError(f"Delivery {self.id} has nothing to deliver.")
        return source.content

    @property
    def object_name(self) -> str:
        return (
            f"report {self.report_fk}" if self.report_fk else f"occlusion map {self.occlusion_fk}"
        )


class AuditEvent(Base):
    """One event of the audit trail, in the style of IHE ATNA (PS3.15 A.5):
    an association's start and end (with its counts), instances stored for
    one study, a query, a report exported, a change of configuration or
    model, a security alert. ``daemon.audit`` names the events."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(32))
    # ATNA EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious, 12 major.
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    # Only `triage audit` shows these two; the syslog copies leave them out.
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    instances_refused: Mapped[int] = mapped_column(Integer, default=0)
    queries: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")


class OcclusionMapRecord(Base):
    """An occlusion heat map of one triaged image, kept as its SC bytes."""

    __tablename__ = "occlusion_maps"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32))
    box_size: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    stride: Mapped[int] = mapped_column(Integer)
    forward_passes: Mapped[int] = mapped_column(Integer)
    compute_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="occlusion")
