"""Deliver: send stored reports and maps to their destinations by C-STORE.

Each delivery row is one object for one destination: an outbox. Every
destination has its own worker, so a dead or silent PACS holds back only
its own deliveries, never another destination's nor new reports. A worker
leases a due row in a short transaction (counting the attempt), sends with
no transaction open, then records the outcome. A failed attempt is retried
after the next delay of the retry schedule (``[delivery] retry_schedule``,
dcm4chee style, e.g. ``5x1m,12x5m,24x1h``); after the last one the row is
dead-lettered (state ``failed``) until ``triage outbox retry`` puts it back.

After ``BREAKER_FAILURES`` failures in a row a destination's circuit opens:
its worker stops trying for a while (doubling up to ``BREAKER_MAX_SECONDS``)
and the waiting rows keep their attempts, so an outage does not use up
their retry schedule at full speed.

Delivery is at least once: the C-STORE precedes the commit of its outcome,
so a crash between the two sends the object again, with the same SOP
Instance UID (a PACS keeps one copy).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.audit import SERIOUS_FAILURE, SUCCESS, AuditTrail
from daemon.config import DeliverySettings, Settings
from daemon.runtime import CurrentRuntime
from daemon.worker import Worker
from dicom_io.network import set_nodelay
from dicom_io.status import Status
from dicom_io.tls import client_context
from domain.errors import DeliveryError
from domain.retry import Backoff
from storage import queries
from storage.models import Delivery, DeliveryState

# pynetdicom waits forever by default; a silent peer must not.
CONNECT_TIMEOUT_SECONDS = 10.0
ACSE_TIMEOUT_SECONDS = 15.0
DIMSE_TIMEOUT_SECONDS = 30.0
# Longer than one C-STORE can take with those timeouts.
LEASE_SECONDS = 2 * (CONNECT_TIMEOUT_SECONDS + ACSE_TIMEOUT_SECONDS + DIMSE_TIMEOUT_SECONDS)
BREAKER_FAILURES = 3
BREAKER_MAX_SECONDS = 60.0

logger = logging.getLogger(__name__)


TlsArgs = tuple[ssl.SSLContext, str]


def destination_tls(settings: Settings, destination: queries.Destination) -> TlsArgs | None:
    """The TLS context and server name for ``destination``, if it is
    configured with ``tls``; None for a plain one or one no longer
    configured. ``TriageError`` names a certificate file that is wrong."""
    host = destination[1]
    for configured in settings.destinations:
        if (configured.ae_title, configured.host, configured.port) != destination:
            continue
        if not configured.tls:
            return None
        ca = configured.tls_ca_certificates or settings.dicom.tls_ca_certificates
        context = client_context(
            Path(ca) if ca else None,
            settings.dicom.client_identity(),
            configured.tls_check_hostname,
        )
        return context, host
    return None


def c_store(
    content: bytes,
    ae_title: str,
    host: str,
    port: int,
    calling_ae_title: str,
    tls: TlsArgs | None = None,
) -> None:
    """Send one DICOM file's bytes; raise ``DeliveryError`` unless it succeeds.

    Every wait is bounded: the TCP connection (with the TLS handshake), the
    association and each DIMSE message, so a peer that accepts connections
    and never answers costs at most about a minute.
    """
    dataset = dcmread(BytesIO(content))
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = CONNECT_TIMEOUT_SECONDS
    ae.acse_timeout = ACSE_TIMEOUT_SECONDS
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    ae.network_timeout = DIMSE_TIMEOUT_SECONDS
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=ae_title, max_pdu=0, tls_args=tls)
    if not assoc.is_established:
        over = " over TLS (see pynetdicom's log for the handshake)" if tls else ""
        raise DeliveryError(f"Association with {ae_title}@{host}:{port}{over} was not established.")
    try:
        # pynetdicom never sets TCP_NODELAY; towards dcmtk-based PACS the
        # reply would otherwise wait for a delayed ACK.
        set_nodelay(assoc)
        status = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != Status.SUCCESS and not 0xB000 <= code <= 0xBFFF:
        raise DeliveryError(f"{ae_title}@{host}:{port} answered status 0x{code:04X}.")


def _kind(delivery: Delivery) -> str:
    return "report" if delivery.report_fk else "occlusion_map"


def record_outcome(
    session: Session, delivery: Delivery, error: Exception | None, settings: DeliverySettings
) -> None:
    """Record one attempt's outcome in the outbox, and log and count it."""
    retry_in = queries.record_delivery_outcome(
        session, delivery, None if error is None else str(error), settings.retry_policy
    )
    if error is None:
        metrics.OBJECTS_SENT.labels(_kind(delivery)).inc()
        logger.info("%s delivered to %s", delivery.object_name, delivery.ae_title)
        return
    metrics.OBJECTS_FAILED.labels(_kind(delivery)).inc()
    if retry_in is None:
        logger.error(
            "%s could not be delivered to %s after %d attempts: %s",
            delivery.object_name,
            delivery.ae_title,
            delivery.attempts,
            error,
        )
        return
    logger.warning(
        "%s to %s failed (attempt %d), retrying in %.0f s: %s",
        delivery.object_name,
        delivery.ae_title,
        delivery.attempts,
        retry_in,
        error,
    )


class CircuitBreaker:
    """Stops trying a destination for a while after failures in a row."""

    def __init__(self, failures: int = BREAKER_FAILURES, backoff: Backoff | None = None) -> None:
        self.threshold = failures
        self.backoff = backoff or Backoff(first=15.0, ceiling=BREAKER_MAX_SECONDS)
        self.failures = 0
        self.opened = 0
        self.open_until = 0.0

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def succeeded(self) -> None:
        self.failures = 0
        self.opened = 0
        self.open_until = 0.0

    def failed(self, now: float) -> float | None:
        """Count a failure; the seconds it opens for, or None while it stays closed."""
        self.failures += 1
        if self.failures < self.threshold:
            return None
        self.opened += 1
        self.failures = 0
        seconds = self.backoff.delay(self.opened)
        self.open_until = now + seconds
        return seconds


# c_store's shape: content, AE title, host, port, calling AE title, TLS.
Send = Callable[[bytes, str, str, int, str, TlsArgs | None], None]


class DeliveryWorker(Worker):
    """Sends the due deliveries of one destination, one at a time."""

    def __init__(
        self,
        destination: queries.Destination,
        sessions: sessionmaker[Session],
        runtime: CurrentRuntime,
        stop: threading.Event,
        send: Send = c_store,
        trail: AuditTrail | None = None,
    ) -> None:
        ae_title, host, port = destination
        super().__init__(
            f"delivery-{ae_title}@{host}:{port}", stop, idle_seconds=0.5, stuck_seconds=900.0
        )
        self.destination = destination
        self.sessions = sessions
        self.runtime = runtime
        self.send = send
        self.trail = trail
        self.breaker = CircuitBreaker()

    def tick(self) -> bool:
        if self.breaker.is_open(time.monotonic()):
            return False
        with self.sessions() as session:
            due = queries.due_deliveries(session, self.destination)
        for delivery_id in due:
            if self.stop.is_set() or self.breaker.is_open(time.monotonic()):
                break
            self.beat()
            self.deliver(delivery_id)
        return bool(due)

    def deliver(self, delivery_id: int) -> None:
        settings = self.runtime.current().settings
        with self.sessions() as session, session.begin():
            delivery = queries.lease_delivery(session, delivery_id, LEASE_SECONDS)
            if delivery is None:
                return
            content = delivery.content
        ae_title, host, port = self.destination
        error: Exception | None = None
        try:
            # Built for each attempt (about a millisecond): a renewed
            # certificate is used without a restart.
            tls = destination_tls(settings, self.destination)
            self.send(content, ae_title, host, port, settings.dicom.ae_title, tls)
        except Exception as exc:
            error = exc
        with self.sessions() as session, session.begin():
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:  # purged meanwhile
                return
            record_outcome(session, delivery, error, settings.delivery)
            final = error is None or delivery.state == DeliveryState.FAILED
            name = delivery.object_name
            subject = queries.delivery_subject(session, delivery_id) if final else ("", "")
        if final and self.trail is not None:
            # The export (ATNA 110106), once: when sent, or when given up.
            self.trail.record(
                "report-exported",
                SUCCESS if error is None else SERIOUS_FAILURE,
                patient_id=subject[0],
                study_instance_uid=subject[1],
                calling_ae_title=settings.dicom.ae_title,
                called_ae_title=ae_title,
                peer_address=f"{host}:{port}",
                detail=name if error is None else f"{name}: {error}",
            )
        if error is None:
            self.breaker.succeeded()
            return
        opened_for = self.breaker.failed(time.monotonic())
        if opened_for is not None:
            logger.error(
                "%s@%s:%d failed %d times in a row; not trying it for %.0f s",
                ae_title,
                host,
                port,
                BREAKER_FAILURES,
                opened_for,
            )


class Deliverer(Worker):
    """Starts a ``DeliveryWorker`` for each destination that has work waiting.

    ``spawn`` starts a new worker: the supervisor's ``start``, so that it
    owns and watches delivery workers like every other thread.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        runtime: CurrentRuntime,
        stop: threading.Event,
        spawn: Callable[[Worker], None],
        send: Send = c_store,
        trail: AuditTrail | None = None,
    ) -> None:
        super().__init__("delivery-dispatcher", stop, idle_seconds=1.0, stuck_seconds=300.0)
        self.sessions = sessions
        self.runtime = runtime
        self.spawn = spawn
        self.send = send
        self.trail = trail
        self.workers: dict[queries.Destination, DeliveryWorker] = {}

    def wake(self) -> None:
        """A report or map was queued: its destination's worker sends it now
        (and this one starts a worker for a destination it has not seen)."""
        super().wake()
        for worker in list(self.workers.values()):
            worker.wake()

    def tick(self) -> bool:
        with self.sessions() as session:
            destinations = queries.pending_destinations(session)
        for destination in destinations:
            if destination not in self.workers:
                worker = DeliveryWorker(
                    destination, self.sessions, self.runtime, self.stop, self.send, self.trail
                )
                self.workers[destination] = worker
                self.spawn(worker)
        return False
