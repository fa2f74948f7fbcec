"""Receive, bounded before trust: what one peer may cost before it has proved anything.

pynetdicom reads whatever a peer declares: a PDU of any length into
memory, a dataset of any size onto disk, at any pace. Each association
the listener opens gets these bounds before its first byte is read:

- **PDU size** (``[dicom] max_pdu_size``): a longer declared PDU closes the
  connection before any of it is read.
- **Pace** (``[dicom] network_timeout_seconds``): each PDU must arrive whole
  within that time, so a peer trickling a byte a second is cut off
  (pynetdicom's own idle timer never fires while a read is under way).
- **Dataset size** (``[dicom] max_dataset_bytes``): a C-STORE dataset
  growing past it aborts the association (A-ABORT) and its partial file is
  removed; any other message (held in memory: a C-FIND identifier) may not
  grow past 1 MiB beyond its first PDU.
- **Associations** (``[dicom] max_associations`` in all,
  ``max_associations_per_peer`` from one address), counting live ones only
  (pynetdicom's own count keeps a peer that left before saying anything for
  its whole ACSE wait, so that a port scan would fill it): A-ASSOCIATE-RJ,
  transient, local limit exceeded, which a modality retries later.
- **Disk** (``[storage] reserve_bytes_per_association``): an association
  proposing storage is accepted only while the spool's disk keeps
  ``min_free_bytes`` plus that much for each open association and the new
  one; otherwise the same transient rejection. Echoes and worklist queries
  need no disk and go on.

Each refusal is logged with the peer's address and why, never a patient.
The hooks replace methods on one association's own objects (its socket's
``recv``, its DIMSE provider's ``receive_primitive``, its ACSE's acceptor
negotiation); pynetdicom is pinned, and tests drive each bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import select
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage

from daemon.config import Settings

logger = logging.getLogger(__name__)

# PDUs of the association phase (A-ASSOCIATE-RQ with many contexts) may
# exceed a small max_pdu_size; none needs more than this.
ASSOCIATION_PDU_FLOOR = 1024 * 1024
# A-ASSOCIATE-RJ: rejected-transient (2), service-provider presentation (3),
# local-limit-exceeded (2): PS3.8 9.3.4.
REJECT_TRANSIENT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
# A message held in memory (a C-FIND identifier; C-STORE datasets go to
# disk as they arrive) needs far less: a worklist query is a few kilobytes.
IN_MEMORY_DATASET_BYTES = 1024 * 1024
# Services that write nothing to the spool: Verification, Modality Worklist.
WITHOUT_STORAGE = frozenset({"1.2.840.10008.1.1", "1.2.840.10008.5.1.4.31"})


def _no_alert(_peer: str, _why: str) -> None:
    """Refusals are logged only (tests that build limits without a trail)."""


class PeerTooSlow(OSError):
    """A PDU did not arrive whole in time; pynetdicom closes the transport."""


@dataclasses.dataclass(frozen=True)
class ReceiveLimits:
    max_associations: int
    max_pdu_size: int  # 0: no bound
    pdu_seconds: float
    max_dataset_bytes: int
    max_associations_per_peer: int
    reserve_bytes_per_association: int
    min_free_bytes: int
    free_bytes: Callable[[], int]
    # Told of each refusal (peer, why): the audit trail's security alerts.
    alert: Callable[[str, str], None] = _no_alert

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        free_bytes: Callable[[], int],
        alert: Callable[[str, str], None] | None = None,
    ) -> ReceiveLimits:
        return cls(
            max_associations=settings.dicom.max_associations,
            max_pdu_size=settings.dicom.max_pdu_size,
            pdu_seconds=settings.dicom.network_timeout_seconds,
            max_dataset_bytes=settings.dicom.max_dataset_bytes,
            max_associations_per_peer=settings.dicom.max_associations_per_peer,
            reserve_bytes_per_association=settings.storage.reserve_bytes_per_association,
            min_free_bytes=settings.storage.min_free_bytes,
            free_bytes=free_bytes,
            alert=alert or _no_alert,
        )

    def apply(self, association: Association, peer: str) -> None:
        """Bound ``association`` (made, not yet started) from ``peer``."""
        _bound_reads(association, self, peer)
        _bound_datasets(association, self, peer)
        _admit_within_limits(association, self, peer)

    def refusal(self, association: Association, peer: str, stores: bool = True) -> str | None:
        """Why a new association from ``peer`` must wait, or None. The disk
        is asked only of one that proposes storage (``stores``): echoes and
        worklist queries go on while the spool is full."""
        open_here = [
            a for a in association.ae.active_associations if a.is_acceptor and _connected(a)
        ]
        if len(open_here) > self.max_associations:
            return f"{len(open_here) - 1} associations are open, the most allowed"
        from_peer = sum(1 for a in open_here if a.requestor.address == peer)
        if from_peer > self.max_associations_per_peer:
            return f"{from_peer - 1} associations from it are open, the most one peer may have"
        if not stores:
            return None
        needed = self.min_free_bytes + len(open_here) * self.reserve_bytes_per_association
        free = self.free_bytes()
        if free < needed:
            return (
                f"the spool's disk has {free} bytes free, under the {needed} that "
                f"{len(open_here)} open associations need"
            )
        return None


# PS3.8 9.2: the states from a connection's start to an established
# association. Released, releasing, aborting (Sta7-Sta13) and idle (Sta1)
# ones do not count: pynetdicom keeps an association whose peer has gone in
# its list until its ACSE wait ends (up to 30 s), and a sender that has just
# released one may open the next before the last packets are through.
_OPENING_OR_OPEN = frozenset({"Sta2", "Sta3", "Sta4", "Sta5", "Sta6"})


def _connected(association: Association) -> bool:
    """Whether it is being negotiated or is established."""
    return str(association.dul.state_machine.current_state) in _OPENING_OR_OPEN


def _bound_reads(association: Association, limits: ReceiveLimits, peer: str) -> None:
    """Each PDU read is bounded in size and in time."""
    transport = association.dul.socket
    assert transport is not None
    size_limit = max(limits.max_pdu_size, ASSOCIATION_PDU_FLOOR) if limits.max_pdu_size else 0

    def recv_bounded(nr_bytes: int) -> bytearray:
        if size_limit and nr_bytes > size_limit:
            logger.warning(
                "Closed a connection from %s: it declared a PDU of %d bytes, over the %d allowed",
                peer,
                nr_bytes,
                size_limit,
            )
            limits.alert(peer, f"declared a PDU of {nr_bytes} bytes, over {size_limit}")
            raise OSError("PDU over the size limit")  # pynetdicom: the transport closed (Evt17)
        try:
            return _read_by(transport.socket, nr_bytes, time.monotonic() + limits.pdu_seconds, peer)
        except PeerTooSlow:
            limits.alert(peer, f"a PDU did not arrive whole within {limits.pdu_seconds:.0f} s")
            raise

    # An instance attribute: this association's socket alone.
    setattr(transport, "recv", recv_bounded)  # noqa: B010


def _read_by(sock: Any, nr_bytes: int, deadline: float, peer: str) -> bytearray:
    """``nr_bytes`` from ``sock`` before ``deadline``, or ``PeerTooSlow``.

    ``select`` waits, not a socket timeout: the association's own thread
    sends on the same socket meanwhile, and a timeout would bound its sends.
    """
    data = bytearray()
    while len(data) < nr_bytes:
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        remaining = deadline - time.monotonic()
        if not buffered and (remaining <= 0 or not select.select([sock], [], [], remaining)[0]):
            logger.warning(
                "Closed a connection from %s: a PDU did not arrive whole in time (%d of %d bytes)",
                peer,
                len(data),
                nr_bytes,
            )
            raise PeerTooSlow("PDU not received in time")
        chunk = sock.recv(min(nr_bytes - len(data), 65536))
        if not chunk:
            return data  # closed by the peer: pynetdicom sees a short read
        data.extend(chunk)
    return data


def _bound_datasets(association: Association, limits: ReceiveLimits, peer: str) -> None:
    """A message's dataset growing past its bound aborts the association and
    its partial file is removed: ``max_dataset_bytes`` for a C-STORE written
    to disk as it arrives, ``IN_MEMORY_DATASET_BYTES`` for any other. Each
    P-DATA is measured before it is taken, once the message's command says
    which it is; before that (the command and data in one PDU), after."""
    dimse = association.dimse
    receive = dimse.receive_primitive

    def measured(message: Any) -> tuple[int, int, Any] | None:
        """(bytes so far, bound, file) of a message whose kind is known."""
        if message is None or type(message) is DIMSEMessage:
            return None
        file = message._data_set_file
        if file is not None:
            return file.tell(), limits.max_dataset_bytes, file
        held = message.data_set.tell() if message.data_set is not None else 0
        return held, min(limits.max_dataset_bytes, IN_MEMORY_DATASET_BYTES), None

    def receive_bounded(primitive: Any) -> None:
        before = measured(dimse.message)
        if before is not None:
            incoming = sum(
                len(data) - 1
                for _context, data in primitive.presentation_data_value_list
                if not data[0] & 1  # dataset fragments, not command ones
            )
            if before[0] + incoming > before[1]:
                _abort(before[1], before[2])
                return
        receive(primitive)
        after = measured(dimse.message)
        if after is not None and after[0] > after[1]:
            _abort(after[1], after[2])

    def _abort(bound: int, file: Any) -> None:
        logger.warning(
            "Aborted an association from %s: a dataset passed the %d bytes allowed%s",
            peer,
            bound,
            " (dicom.max_dataset_bytes)" if file is not None else " in memory",
        )
        limits.alert(peer, f"a dataset passed the {bound} bytes allowed; association aborted")
        if file is not None:
            file.close()
            with contextlib.suppress(OSError):
                Path(file.name).unlink()
        dimse.message = None
        # What pynetdicom itself does with an undecodable message: A-ABORT
        # to the peer, then the association ends (PS3.8 Table 9-10, AA-8).
        association.dul.event_queue.put("Evt19")

    setattr(dimse, "receive_primitive", receive_bounded)  # noqa: B010


def _admit_within_limits(association: Association, limits: ReceiveLimits, peer: str) -> None:
    acse = association.acse
    negotiate = acse._negotiate_as_acceptor

    def negotiate_within_limits() -> None:
        request = acse.requestor.primitive
        proposed = request.presentation_context_definition_list if request is not None else []
        stores = any(str(c.abstract_syntax) not in WITHOUT_STORAGE for c in proposed)
        reason = limits.refusal(association, peer, stores)
        if reason is None:
            negotiate()
            return
        acse.requestor.ae_title = request.calling_ae_title if request is not None else ""
        logger.warning("Rejected an association from %s for now: %s", peer, reason)
        # The rejection itself is audited by the EVT_REJECTED handler.
        acse.send_reject(*REJECT_TRANSIENT_LOCAL_LIMIT)
        evt.trigger(association, evt.EVT_REJECTED, {})
        association.kill()

    setattr(acse, "_negotiate_as_acceptor", negotiate_within_limits)  # noqa: B010
