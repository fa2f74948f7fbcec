"""Health: a status file the running daemon refreshes, read by `triage status`.

The daemon writes ``status.json`` in its state directory every few seconds
(atomically): listening address, models, execution provider, queue depth,
outbox backlog and dead letters, free disk, the last error logged. It holds
no patient data. A reader judges health from it: the process is alive, the
file is fresh and every worker thread is running.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from storage import queries

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STALE_SECONDS = 15.0


class LastError(logging.Handler):
    """Remembers the most recent ERROR record (messages carry no patient data)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.message = ""
        self.at = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = f"{record.name}: {record.getMessage()}"[:500]
        self.at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_status(state_dir: Path, snapshot: dict[str, Any]) -> None:
    """Replace the status file; a failure is logged, never fatal to the daemon."""
    path = Path(state_dir) / STATUS_FILE
    temporary = path.with_suffix(".tmp")
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(snapshot, indent=1))
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("Cannot write %s: %s", path, exc)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((Path(state_dir) / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return None


def judge(snapshot: dict[str, Any] | None) -> tuple[bool, list[str]]:
    """(healthy, reasons it is not)."""
    if snapshot is None:
        return False, ["no status file: the daemon is not running here"]
    problems = []
    pid = int(snapshot.get("pid", 0))
    try:
        os.kill(pid, 0)
    except OSError:
        problems.append(f"process {pid} is not running")
    updated = dt.datetime.fromisoformat(snapshot["updated_at"])
    age = (dt.datetime.now(dt.UTC) - updated).total_seconds()
    if age > STALE_SECONDS:
        problems.append(f"status is {age:.0f} s old")
    if not snapshot.get("workers_alive", False):
        problems.append("a worker thread has stopped")
    if snapshot.get("database") == "unavailable":
        problems.append("the database cannot be reached (new images are refused with 0xA700)")
    if snapshot.get("stopping"):
        problems.append("the daemon is stopping")
    return not problems, problems


def database_counts(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Outbox and parked work from the database; an outage is reported, not raised."""
    try:
        with sessions() as session:
            pending, failed = queries.delivery_counts(session)
            counts = queries.work_counts(session) | queries.map_counts(session)
    except Exception as exc:
        logger.warning("The status cannot read the database: %s", type(exc).__name__)
        return {"database": "unavailable"}
    return {"database": "ok", "outbox_pending": pending, "dead_letters": failed, **counts}


def status_snapshot(
    running: dict[str, Any],
    sessions: sessionmaker[Session],
    last_error: LastError,
    workers_alive: bool,
    maps_queued: Callable[[], int] | None,
) -> dict[str, Any]:
    """What the status file holds: ``running`` (address, models, queue, disk) and the rest.

    ``maps_queued`` is None when occlusion maps are off.
    """
    counts = database_counts(sessions)
    occlusion = None
    if maps_queued is not None:
        occlusion = {
            "queued": maps_queued(),
            "retrying": counts.pop("maps_retrying", None),
            "given_up": counts.pop("maps_given_up", None),
        }
    return {
        "pid": os.getpid(),
        "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **running,
        "outbox_pending": None,
        "dead_letters": None,
        **counts,
        "occlusion": occlusion,
        "workers_alive": workers_alive,
        "last_error": last_error.message,
        "last_error_at": last_error.at,
        "stopping": False,
    }


def publish_metrics(snapshot: dict[str, Any]) -> None:
    """The gauges the status file also shows."""
    metrics.QUEUE_DEPTH.set(snapshot["queue_depth"])
    if snapshot.get("occlusion"):
        metrics.OCCLUSION_QUEUED.set(snapshot["occlusion"]["queued"])
    if snapshot["database"] == "ok":
        metrics.OUTBOX_PENDING.set(snapshot["outbox_pending"])
        metrics.DEAD_LETTERS.set(snapshot["dead_letters"])
        metrics.STUDIES_PARKED.set(snapshot["studies_report_failed"])
        metrics.INSTANCES_FAILED.set(snapshot["instances_failed"])
