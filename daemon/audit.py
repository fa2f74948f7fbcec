"""Audit trail: one row per association, with the calling AE title and counts.

Counts are kept in memory while an association is open and written when it
is released, aborted or rejected. Nothing about any patient is recorded.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from daemon.status import Status
from storage.models import AuditEvent

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Counts:
    stored: int = 0
    refused: int = 0
    queries: int = 0


class AssociationAudit:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._lock = threading.Lock()
        self._open: dict[int, _Counts] = {}

    def _counts(self, assoc: Any) -> _Counts:
        with self._lock:
            return self._open.setdefault(id(assoc), _Counts())

    def store_answered(self, assoc: Any, status: int) -> None:
        counts = self._counts(assoc)
        if status in (Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS):
            counts.stored += 1
        else:
            counts.refused += 1

    def query_answered(self, assoc: Any) -> None:
        self._counts(assoc).queries += 1

    def _write(self, event: Any, name: str, detail: str = "") -> None:
        assoc = event.assoc
        with self._lock:
            counts = self._open.pop(id(assoc), _Counts())
        requestor = assoc.requestor
        try:
            with self.sessions() as session, session.begin():
                session.add(
                    AuditEvent(
                        event=name,
                        calling_ae_title=str(requestor.ae_title or "")[:16],
                        called_ae_title=str(assoc.acceptor.ae_title or "")[:16],
                        peer_address=f"{requestor.address}:{requestor.port}"[:64],
                        instances_stored=counts.stored,
                        instances_refused=counts.refused,
                        queries=counts.queries,
                        detail=detail[:2000],
                    )
                )
        except Exception:
            # The audit must never take an association (or the daemon) down.
            logger.exception("Cannot write the audit record of an association")

    def on_released(self, event: Any) -> None:
        self._write(event, "released")

    def on_aborted(self, event: Any) -> None:
        self._write(event, "aborted")

    def on_rejected(self, event: Any) -> None:
        self._write(event, "rejected", "association rejected at negotiation")
