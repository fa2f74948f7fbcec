"""Receive: the DICOM application entity and its C-STORE handler.

The handler is thin (STYLE rule 1): it checks the header (hashing the file
in the same read), keeps the file pynetdicom wrote durably (a hard link,
no copy), has the process's ``InstanceWriter`` commit its row with those
of the other associations, queues the instance for inference and answers.
Pixel decoding and inference never run on an association thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    Verification,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.audit import AssociationAudit
from daemon.config import DicomSettings
from daemon.ingest_priority import ReceivingSignal
from daemon.instance_writer import InstanceWriter
from daemon.routing import ACCEPTED_STORAGE_SOP_CLASSES
from daemon.spool import Received, Spool, StoredFile
from daemon.store_timing import store_stage
from daemon.validate import coercion_warnings, parse_and_hash
from daemon.work_queue import WorkQueue
from dicom_io.network import set_nodelay
from dicom_io.status import Status
from domain.errors import IngestError
from storage import queries

logger = logging.getLogger(__name__)

# pynetdicom's SCP picks the first of its own syntaxes that the caller
# offers. Compressed syntaxes come first so that a scanner offering its
# native compression alongside uncompressed ones is never asked to
# transcode (dcmtk's storescu cannot).
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
_COMPRESSED = [
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (process 2 and 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
# Deflate only when nothing else is offered: it costs CPU on both ends.
STORAGE_TRANSFER_SYNTAXES = [*_COMPRESSED, *_UNCOMPRESSED, DeflatedExplicitVRLittleEndian]


@dataclasses.dataclass(frozen=True)
class IngestContext:
    """What the C-STORE handler needs, bound to it instead of globals."""

    spool: Spool
    sessions: sessionmaker[Session]
    work: WorkQueue
    writer: InstanceWriter
    # "keep_first" (as Orthanc does) or "replace_if_different"
    duplicate_policy: str = "keep_first"
    min_free_bytes: int = 0
    audit: AssociationAudit | None = None
    # Told when each C-STORE begins and ends: ingest's priority over triage.
    receiving: ReceivingSignal | None = None


def receive_to_files(incoming: Path) -> None:
    """Process-wide: pynetdicom writes each received dataset to a file as it arrives.

    An OCT volume can be hundreds of megabytes and several scanners send at
    once, so nothing is held in memory. pynetdicom makes the file with
    ``tempfile`` and deletes it after the handler returns, so the process's
    temporary folder is the spool's own (the same file system: a move, not
    a copy). Called once by each process that receives (the daemon's entry
    into ``lifecycle.serve``, and each receiver process), and nowhere else.
    """
    incoming.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(incoming)
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True


@dataclasses.dataclass(frozen=True)
class StoreRequest:
    """One instance to store: a C-STORE's, or one part of a STOW-RS request."""

    sop_instance_uid: str  # as the request names it; the dataset must agree
    sop_class_uid: str
    transfer_syntax_uid: str
    calling: str  # the calling AE title, or what the HTTP service names the sender
    # Ids cached for it (InstanceWriter) and its audit: the association, or
    # the STOW-RS request.
    association: Any = None


@dataclasses.dataclass(frozen=True)
class StoreOutcome:
    status: int
    # The patient and study it belongs to, once stored (for an audit).
    patient_id: str = ""
    study_instance_uid: str = ""


def handle_store(event: Any, context: IngestContext) -> int:
    """Store one instance durably, then answer (PS3.4 B.2.3)."""
    request = StoreRequest(
        str(event.request.AffectedSOPInstanceUID),
        str(event.context.abstract_syntax),
        str(event.context.transfer_syntax),
        event.assoc.requestor.ae_title,
        event.assoc,
    )
    outcome = store_received(context, request, lambda: received(event))
    if context.audit is not None:
        context.audit.store_answered(event.assoc, outcome.status)
        if outcome.study_instance_uid:
            context.audit.instance_stored(
                event.assoc, outcome.patient_id, outcome.study_instance_uid
            )
    return outcome.status


def store_received(
    context: IngestContext, request: StoreRequest, content: Callable[[], Received]
) -> StoreOutcome:
    """Check, keep and record one received dataset (``content`` reads it),
    in that order; its DICOM status. C-STORE and STOW-RS both come here."""
    if context.receiving is not None:
        context.receiving.store_began()
    try:
        outcome = _store(context, request, content)
    finally:
        if context.receiving is not None:
            context.receiving.store_ended()
    stored = outcome.status in (Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS)
    metrics.INSTANCES_RECEIVED.labels("success" if stored else "refused").inc()
    return outcome


def _store(
    context: IngestContext, request: StoreRequest, read: Callable[[], Received]
) -> StoreOutcome:
    calling = request.calling
    with store_stage("check"):
        if context.spool.free_bytes() < context.min_free_bytes:
            logger.error("Refusing an instance from %s: the spool's disk is nearly full", calling)
            return StoreOutcome(Status.OUT_OF_RESOURCES)
        try:
            content = read()
        except Exception:
            logger.exception("Cannot read the received dataset from %s", calling)
            return StoreOutcome(Status.CANNOT_UNDERSTAND)
    return _store_content(context, request, content)


def received(event: Any) -> Received:
    """The received dataset with its file meta: with ``receive_to_files`` on,
    the file pynetdicom wrote as it arrived (a large one read in chunks, never whole);
    otherwise pynetdicom's copy in memory."""
    if pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
        return Path(event.dataset_path)
    return bytes(event.encoded_dataset(include_meta=True))


def _store_content(
    context: IngestContext, request: StoreRequest, content: Received
) -> StoreOutcome:
    calling = request.calling
    with store_stage("parse"):
        try:
            header, sha256 = parse_and_hash(
                content,
                request.sop_instance_uid,
                request.sop_class_uid,
                request.transfer_syntax_uid,
            )
        except IngestError as exc:
            kept = _quarantine(context, content, exc.reason, calling)
            logger.warning("Rejected an instance from %s: %s (kept as %s)", calling, exc, kept)
            return StoreOutcome(exc.status)

    uid = str(header.SOPInstanceUID)
    replaced_path: str | None = None
    if context.duplicate_policy == "replace_if_different":
        # Only this policy looks first: under "keep_first" a second copy is
        # found by the instance's own insert, and its link removed.
        with store_stage("duplicate"):
            try:
                with context.sessions() as session:
                    existing = queries.find_instance(session, uid)
                    if existing is not None and existing.sha256 == sha256:
                        logger.info("Duplicate instance from %s: the first copy is kept", calling)
                        return StoreOutcome(Status.SUCCESS)
                    replaced_path = existing.path if existing is not None else None
            except OperationalError as exc:
                return StoreOutcome(_database_away(calling, exc))
    with store_stage("spool"):
        try:
            stored = context.spool.keep(content, uid, sha256)
        except OSError as exc:
            # The disk filled up past the watermark's margin, or failed: refuse,
            # and the sender keeps the instance and tries again.
            logger.error(
                "Refusing an instance from %s: cannot write it to the spool: %s", calling, exc
            )
            return StoreOutcome(Status.OUT_OF_RESOURCES)
    with store_stage("record"):
        try:
            if replaced_path is None:
                instance_id = context.writer.record(
                    queries.new_instance(
                        header,
                        transfer_syntax_uid=request.transfer_syntax_uid,
                        path=str(stored.path),
                        size_bytes=stored.size_bytes,
                        sha256=stored.sha256,
                        calling_ae_title=calling,
                    ),
                    request.association,
                )
            else:
                instance_id = _replace(context, uid, stored, request)
        except OperationalError as exc:
            context.spool.discard(stored)
            return StoreOutcome(_database_away(calling, exc))
        except Exception:
            # Never SUCCESS for an instance that is not recorded: the sender
            # keeps it and sends it again.
            context.spool.discard(stored)
            logger.exception("Cannot record an instance from %s", calling)
            return StoreOutcome(Status.PROCESSING_FAILURE)
    if instance_id is None:
        # Another association (or an earlier C-STORE) recorded the same SOP
        # Instance UID first: this copy is a duplicate.
        context.spool.discard(stored)
        logger.info("Duplicate instance from %s: the first copy is kept", calling)
        return StoreOutcome(Status.SUCCESS)
    if replaced_path is not None:
        Path(replaced_path).unlink(missing_ok=True)
    with store_stage("queue"):
        logger.info("Stored instance %d from %s", instance_id, calling)
        logger.debug("Instance %d is SOP Instance UID %s", instance_id, uid)
        # When the queue is full the instance is still RECEIVED in the database,
        # and the pipeline's sweep finds it.
        with contextlib.suppress(queue.Full):
            context.work.put_nowait(instance_id)
    status = Status.SUCCESS
    if warnings := coercion_warnings(header):
        _quarantine(context, content, "; ".join(warnings), calling)
        logger.warning("Instance %d stored with a warning: %s", instance_id, "; ".join(warnings))
        status = Status.COERCION_OF_DATA_ELEMENTS
    return StoreOutcome(
        status, str(header.get("PatientID", "") or ""), str(header.StudyInstanceUID)
    )


def _quarantine(context: IngestContext, content: Received, reason: str, calling: str) -> str:
    """Keep a copy with its reason; the file's name, or why it could not be kept."""
    metrics.INSTANCES_QUARANTINED.inc()
    try:
        return context.spool.quarantine(content, reason, calling).name
    except OSError as exc:
        logger.error("Cannot keep a quarantined copy of an instance from %s: %s", calling, exc)
        return "nothing: the copy could not be written"


def _database_away(calling: str, error: OperationalError) -> int:
    """The database cannot be reached (a restart, a failover): refuse for now.

    0xA700 tells the sender to keep the instance and try again later, as
    for a full disk; nothing is acknowledged that is not recorded.
    """
    logger.error(
        "Refusing an instance from %s: the database is unavailable (%s)",
        calling,
        type(error.orig).__name__ if error.orig is not None else type(error).__name__,
    )
    return Status.OUT_OF_RESOURCES


def _replace(context: IngestContext, uid: str, stored: StoredFile, request: StoreRequest) -> int:
    """Point the recorded instance ``uid`` at a different copy (the
    ``replace_if_different`` policy); its id."""
    with context.sessions() as session, session.begin():
        instance = queries.replace_instance(
            session,
            uid,
            transfer_syntax_uid=request.transfer_syntax_uid,
            path=str(stored.path),
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            calling_ae_title=request.calling,
        )
        logger.info(
            "Instance %d replaced by a different copy from %s", instance.id, request.calling
        )
        return instance.id


def handle_echo(_event: Any) -> int:
    return Status.SUCCESS


def handle_connection_open(event: Any) -> None:
    # dcmtk peers leave Nagle on; without TCP_NODELAY each response stalls
    # about 40 ms waiting for a delayed ACK.
    set_nodelay(event.assoc)


ASSOCIATION_THREADS_PER_PLACE = 4


def make_acceptor(
    settings: DicomSettings,
) -> AE:
    """The application entity with exactly the contexts dicom-triage accepts."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    # Association policy: the called AE title must be ours (A-ASSOCIATE-RJ
    # reason 7 otherwise); an allow-list of calling AE titles, when set,
    # rejects everyone else with reason 3 (PS3.8 9.3.4).
    ae.require_called_aet = True
    # The limit itself (max_associations) is daemon.receive_limits': it
    # counts live associations only, where pynetdicom also counts peers that
    # left before saying anything (for up to its ACSE wait). pynetdicom's
    # own bound stays as a ceiling on threads.
    ae.maximum_associations = settings.max_associations * ASSOCIATION_THREADS_PER_PLACE
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    for sop_class in ACCEPTED_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, _UNCOMPRESSED)
    ae.add_supported_context(ModalityWorklistInformationFind, _UNCOMPRESSED)
    if settings.allowed_calling_aets:
        ae.require_calling_aet = list(settings.allowed_calling_aets)
    return ae


def event_handlers(
    ingest: IngestContext, find_handler: Callable[..., Any], find_args: list[Any]
) -> list[Any]:
    handlers = [
        (evt.EVT_C_STORE, handle_store, [ingest]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_FIND, find_handler, find_args),
        (evt.EVT_CONN_OPEN, handle_connection_open),
    ]
    if ingest.audit is not None:
        handlers += [
            (evt.EVT_ESTABLISHED, ingest.audit.on_established),
            (evt.EVT_RELEASED, ingest.audit.on_released),
            (evt.EVT_ABORTED, ingest.audit.on_aborted),
            (evt.EVT_REJECTED, ingest.audit.on_rejected),
        ]
    return handlers
