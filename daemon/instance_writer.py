"""Store: the instances a receiving process has received, recorded in batches.

Each C-STORE handler hands its instance's rows to the process's one
``InstanceWriter`` and waits for its own answer before it acknowledges
(the row committed first: PS3.4 B.2.3). The writer is a group commit
without a thread of its own: whichever waiting handler takes the write
lock first writes every row queued by then in one transaction (a few
statements, SQLAlchemy Core ``executemany``), and the others find their
answer ready when they get the lock. One writer at a time per process
keeps the database's lock queue short; batches grow with the load by
themselves, and a lone image is written at once.

The patient, study and series ids an association's images used are kept
for that association (a study's later images are not looked up again),
and forgotten with it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections import ChainMap
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import queries
from storage.queries.instances import RowKey

logger = logging.getLogger(__name__)

# Rows in one transaction at most: enough for a burst from every
# association at once, small enough that one statement stays short.
MAX_BATCH = 64


@dataclasses.dataclass(frozen=True)
class _Request:
    row: queries.NewInstance
    known: dict[RowKey, int]
    answer: Future[int | None] = dataclasses.field(default_factory=Future)


class InstanceWriter:
    """Records received instances for the handlers of one process, in batches."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f'Argument "max_batch" must be at least 1, got {max_batch}.')
        # Batches are written on a Core connection of the sessions' engine.
        self._engine: Engine = sessions.kw["bind"]
        self.max_batch = max_batch
        self._queued: list[_Request] = []
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._known: weakref.WeakKeyDictionary[Any, dict[RowKey, int]] = weakref.WeakKeyDictionary()

    def record(self, row: queries.NewInstance, association: Any = None) -> int | None:
        """Commit ``row``; its instance id, or None if its SOP Instance UID is
        recorded already (a duplicate). Raises what the database raised
        (``OperationalError`` when it cannot be reached)."""
        with self._queue_lock:
            known = self._known.setdefault(association, {}) if association is not None else {}
            request = _Request(row, known)
            self._queued.append(request)
        while not request.answer.done():
            with self._write_lock:
                if request.answer.done():
                    break
                with self._queue_lock:
                    batch = self._queued[: self.max_batch]
                    del self._queued[: self.max_batch]
                self._write(batch)
        return request.answer.result()

    def _write(self, batch: list[_Request]) -> None:
        """Write ``batch`` and answer each request. A cached id whose row has
        gone meanwhile (retention) fails the batch once; it is then written
        without the caches, and if it still fails, a row at a time, so that
        one bad row never refuses the others."""
        try:
            try:
                self._commit(batch, ChainMap(*(request.known for request in batch)))
            except IntegrityError:
                for request in batch:
                    request.known.clear()
                self._commit(batch, {})
        except IntegrityError:
            if len(batch) == 1:
                batch[0].answer.set_exception(_integrity_error())
                return
            logger.warning(
                "A batch of %d instances could not be recorded; one at a time", len(batch)
            )
            for request in batch:
                self._write([request])
        except BaseException as exc:
            # Every handler waiting on this batch gets the answer, or it
            # would wait for ever.
            for request in batch:
                if not request.answer.done():
                    request.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _commit(self, batch: list[_Request], known: Any) -> None:
        # A Core connection, not a session: nothing here needs the ORM.
        with self._engine.begin() as connection:
            instance_ids, used = queries.record_instances(
                connection, [request.row for request in batch], known
            )
        # Kept only once committed: a rolled-back insert's ids are no one's.
        for request, instance_id in zip(batch, instance_ids, strict=True):
            row = request.row
            for key in (
                ("patient", row.patient_key),
                ("study", row.study_uid),
                ("series", row.series_uid),
            ):
                request.known[key] = used[key]
            request.answer.set_result(instance_id)


def _integrity_error() -> IntegrityError:
    return IntegrityError(
        "INSERT INTO instances", None, ValueError("the instance's rows could not be written")
    )
