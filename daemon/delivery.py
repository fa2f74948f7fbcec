"""Send stored objects to destinations by C-STORE, with retries.

Each delivery row is one object for one destination: an outbox. A failed
attempt is retried after the next delay of the retry schedule
(``[delivery] retry_schedule``, dcm4chee style, e.g. ``5x1m,12x5m,24x1h``);
after the last one the row is dead-lettered (state ``failed``) until
``triage outbox retry`` puts it back.
"""

from __future__ import annotations

import datetime as dt
import logging
from io import BytesIO

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy.orm import Session

from daemon import metrics
from daemon.config import DeliverySettings
from daemon.errors import DeliveryError
from daemon.scp import set_nodelay
from daemon.status import Status
from storage.models import Delivery, DeliveryState, utcnow

logger = logging.getLogger(__name__)


def c_store(content: bytes, ae_title: str, host: str, port: int, calling_ae_title: str) -> None:
    """Send one DICOM file's bytes; raise ``DeliveryError`` unless it succeeds."""
    dataset = dcmread(BytesIO(content))
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = 15
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=ae_title, max_pdu=0)
    if not assoc.is_established:
        raise DeliveryError(f"Association with {ae_title}@{host}:{port} was not established.")
    try:
        # pynetdicom never sets TCP_NODELAY; towards dcmtk-based PACS the
        # reply would otherwise wait for a delayed ACK.
        set_nodelay(assoc)
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != Status.SUCCESS and not 0xB000 <= code <= 0xBFFF:
        raise DeliveryError(f"{ae_title}@{host}:{port} answered status 0x{code:04X}.")


def _kind(delivery: Delivery) -> str:
    return "report" if delivery.report_fk else "occlusion_map"


def attempt(
    session: Session, delivery: Delivery, settings: DeliverySettings, calling_ae_title: str
) -> bool:
    """Try one delivery once and record the outcome; True when delivered."""
    delivery.attempts += 1
    try:
        c_store(
            delivery.content,
            delivery.ae_title,
            delivery.host,
            delivery.port,
            calling_ae_title,
        )
    except Exception as exc:
        metrics.OBJECTS_FAILED.labels(_kind(delivery)).inc()
        delivery.last_error = str(exc)[:2000]
        delays = settings.delays
        if delivery.attempts > len(delays):
            delivery.state = DeliveryState.FAILED
            logger.error(
                "%s could not be delivered to %s after %d attempts: %s",
                delivery.object_name,
                delivery.ae_title,
                delivery.attempts,
                exc,
            )
        else:
            delay = delays[delivery.attempts - 1]
            delivery.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
            logger.warning(
                "%s to %s failed (attempt %d), retrying in %.0f s: %s",
                delivery.object_name,
                delivery.ae_title,
                delivery.attempts,
                delay,
                exc,
            )
        return False
    metrics.OBJECTS_SENT.labels(_kind(delivery)).inc()
    delivery.state = DeliveryState.DELIVERED
    delivery.delivered_at = utcnow()
    delivery.last_error = ""
    logger.info("%s delivered to %s", delivery.object_name, delivery.ae_title)
    return True
