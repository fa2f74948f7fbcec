"""Run the daemon: start the stages, tell systemd, drain on SIGTERM.

Signals only set an event; the main loop reacts. The first SIGTERM or
SIGINT drains (stops accepting, lets the workers finish their item) within
``DRAIN_SECONDS``; a second one exits at once. Readiness is logged and sent
to systemd exactly once; watchdog pings are sent only while every stage is
alive.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.audit import AssociationAudit
from daemon.config import Settings, load_settings
from daemon.delivery import Deliverer
from daemon.errors import DatabaseUnavailable, StorageError, TriageError
from daemon.explain import Explainer
from daemon.health import LastError, write_status
from daemon.pipeline import TriagePipeline
from daemon.reporting import ReportBuilder
from daemon.scp import IngestContext, event_handlers, make_acceptor, receive_to_files
from daemon.spool import Spool
from daemon.worker import Worker
from daemon.worklist import handle_find
from dicom_io.codes import TriageModality
from model_runtime.classifier import Classifier
from storage import queries
from storage.database import create_database_engine, make_session_factory, require_current

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0
# How long start-up waits for a database that cannot be reached (restarting,
# failing over) before it exits with a status systemd restarts.
DATABASE_WAIT_SECONDS = 60.0
WORK_QUEUE_SIZE = 1000


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    CONFIG = 78  # EX_CONFIG from sysexits.h: systemd shows it by name
    INTERRUPTED = 130


def notify(message: str) -> bool:
    """Send ``message`` to systemd's notification socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval() -> float | None:
    """Half the systemd watchdog period, or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


def wait_for_database(engine: Engine, seconds: float) -> bool:
    """Wait until the database answers; False if it did not within ``seconds``.

    Raises ``StorageError`` at once for a database at the wrong schema.
    """
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            require_current(engine)
            return True
        except DatabaseUnavailable as exc:
            if time.monotonic() + delay > deadline:
                logger.error("%s; giving up after %.0f s", exc, seconds)
                return False
            if delay == 0.5:
                logger.warning("%s; waiting for it", exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def load_classifiers(settings: Settings) -> dict[TriageModality, Classifier]:
    classifiers = {
        TriageModality.OCT: Classifier(Path(settings.models.oct), settings.models.device),
        TriageModality.CXR: Classifier(Path(settings.models.cxr), settings.models.device),
    }
    providers = sorted({c.provider for c in classifiers.values()})
    logger.info("Inference runs on %s", ", ".join(providers))
    for modality, classifier in classifiers.items():
        manifest = classifier.manifest
        logger.info(
            "Model %s: %s %s, labels %s, sha256 %s",
            modality.value,
            manifest.name,
            manifest.version,
            ",".join(manifest.labels),
            manifest.onnx_sha256[:12],
        )
    return classifiers


def _work_snapshot(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Outbox and parked work from the database; an outage is reported, not raised."""
    try:
        with sessions() as session:
            pending, failed = queries.delivery_counts(session)
            counts = queries.work_counts(session)
    except Exception as exc:
        logger.warning("The status cannot read the database: %s", type(exc).__name__)
        return {"database": "unavailable"}
    return {
        "database": "ok",
        "outbox_pending": pending,
        "dead_letters": failed,
        **counts,
    }


def _snapshot(
    settings: Settings,
    classifiers: dict[TriageModality, Classifier],
    work: queue.Queue[int],
    spool: Spool,
    sessions: sessionmaker[Session],
    last_error: LastError,
    workers_alive: bool,
    explainer: Explainer | None,
) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ae_title": settings.dicom.ae_title,
        "listen": f"{settings.dicom.host}:{settings.dicom.port}",
        "models": {
            modality.value: {
                "name": c.manifest.name,
                "version": c.manifest.version,
                "sha256": c.manifest.onnx_sha256,
                "provider": c.provider,
            }
            for modality, c in classifiers.items()
        },
        "queue_depth": work.qsize(),
        "outbox_pending": None,
        "dead_letters": None,
        **_work_snapshot(sessions),
        "spool_free_bytes": spool.free_bytes(),
        "occlusion": explainer.counts(time.monotonic()) if explainer is not None else None,
        "workers_alive": workers_alive,
        "last_error": last_error.message,
        "last_error_at": last_error.at,
        "stopping": False,
    }


def workers_healthy(workers: list[Worker]) -> bool:
    """Every worker thread runs and has finished a round recently."""
    now = time.monotonic()
    for worker in workers:
        if not worker.is_alive():
            logger.error("The %s thread has stopped", worker.name)
            return False
        if worker.stuck(now):
            logger.error("The %s thread is stuck", worker.name)
            return False
    return True


def reload(
    config_path: Path | None,
    current: Settings,
    classifiers: dict[TriageModality, Classifier],
) -> tuple[Settings, dict[TriageModality, Classifier]]:
    """Re-read the configuration and the model packages (SIGHUP).

    Anything that fails to load is rejected and what is running is kept, so
    a broken package never replaces a working one.
    """
    try:
        settings = load_settings(config_path)
        fresh = load_classifiers(settings)
    except TriageError as exc:
        logger.error("Reload rejected, keeping the running configuration and models: %s", exc)
        return current, classifiers
    if settings.dicom != current.dicom or settings.storage != current.storage:
        logger.warning("Changes to [dicom] and [storage] take effect at the next restart")
    logger.info(
        "Reloaded: %s",
        ", ".join(f"{m.value} {c.manifest.name} {c.manifest.version}" for m, c in fresh.items()),
    )
    return settings, fresh


def serve(settings: Settings, config_path: Path | None = None) -> ExitCode:
    """Run until signalled; return the process exit code."""
    logger.info("Starting dicom-triage: %s", settings.describe())
    try:
        engine = create_database_engine(settings.storage.database_url)
        if not wait_for_database(engine, DATABASE_WAIT_SECONDS):
            # Restartable: systemd tries again (Restart=on-failure); a wrong
            # schema below is a configuration error it must not retry.
            return ExitCode.FAILURE
        classifiers = load_classifiers(settings)
        spool = Spool(settings.spool_dir)
        if removed := spool.remove_partial_writes():
            logger.warning("Removed %d partial file(s) left by an earlier crash", removed)
        receive_to_files(spool.incoming)
    except StorageError as exc:
        logger.error("%s", exc)
        return ExitCode.CONFIG
    except TriageError as exc:
        logger.error("Cannot start: %s", exc)
        return ExitCode.CONFIG

    sessions = make_session_factory(engine)
    last_error = LastError()
    logging.getLogger().addHandler(last_error)
    stop = threading.Event()
    work: queue.Queue[int] = queue.Queue(maxsize=WORK_QUEUE_SIZE)
    pipeline = TriagePipeline(
        sessions, classifiers, work, stop, oct_all_frames=settings.study.oct_frames == "all"
    )
    reporter = ReportBuilder(settings, sessions, stop)
    deliverer = Deliverer(sessions, settings.delivery, settings.dicom.ae_title, stop)
    explainer = (
        Explainer(settings, sessions, classifiers, stop) if settings.occlusion.enabled else None
    )

    shutdown_requested = threading.Event()
    reload_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if shutdown_requested.is_set():
            os._exit(ExitCode.INTERRUPTED)
        shutdown_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_requested.set())

    ae = make_acceptor(settings.dicom)
    audit = AssociationAudit(sessions)
    handlers = event_handlers(
        IngestContext(
            spool=spool,
            sessions=sessions,
            work=work,
            duplicate_policy=settings.storage.duplicate_policy,
            min_free_bytes=settings.storage.min_free_bytes,
            audit=audit,
        ),
        handle_find,
        [sessions, settings.dicom.ae_title, audit],
    )
    try:
        server = ae.start_server(
            (settings.dicom.host, settings.dicom.port), block=False, evt_handlers=handlers
        )
    except OSError as exc:
        logger.error("Cannot listen on %s:%d: %s", settings.dicom.host, settings.dicom.port, exc)
        return ExitCode.FAILURE
    if server is None:
        logger.error("The DICOM server did not start")
        return ExitCode.FAILURE
    try:
        metrics.serve_metrics(settings.metrics.port)
    except OSError as exc:
        logger.error("Cannot serve metrics on port %d: %s", settings.metrics.port, exc)
        return ExitCode.FAILURE
    if engine.dialect.name == "sqlite":
        # One node by construction: leases left by its previous process are stale.
        with sessions() as session, session.begin():
            if freed := queries.release_all_leases(session):
                logger.warning("Released %d image(s) held when the daemon last stopped", freed)
    pipeline.start()
    reporter.start()
    deliverer.start()
    if explainer is not None:
        explainer.start()
    host, port = server.server_address[:2]
    logger.info("Ready: listening as %s on %s:%d", settings.dicom.ae_title, host, port)
    notify(f"READY=1\nSTATUS=Listening as {settings.dicom.ae_title} on {host}:{port}")

    interval = watchdog_interval()
    tick = min(interval, 1.0) if interval else 1.0
    exit_code = ExitCode.OK
    snapshot = _snapshot(settings, classifiers, work, spool, sessions, last_error, True, explainer)
    write_status(settings.state_dir, snapshot)
    while not shutdown_requested.wait(tick):
        if reload_requested.is_set():
            reload_requested.clear()
            notify("RELOADING=1")
            settings, classifiers = reload(config_path, settings, classifiers)
            pipeline.classifiers = classifiers
            reporter.settings = settings
            deliverer.reconfigure(settings.delivery)
            if explainer is not None:
                explainer.classifiers, explainer.settings = classifiers, settings
            notify("READY=1")
        if stale := spool.remove_stale_receives():
            logger.warning("Removed %d file(s) of transfers that were aborted", stale)
        workers: list[Worker] = [pipeline, reporter, *deliverer.all_workers()]
        if explainer is not None:
            workers += explainer.workers()
        alive = workers_healthy(workers)
        snapshot = _snapshot(
            settings, classifiers, work, spool, sessions, last_error, alive, explainer
        )
        write_status(settings.state_dir, snapshot)
        metrics.QUEUE_DEPTH.set(snapshot["queue_depth"])
        if snapshot["database"] == "ok":
            metrics.OUTBOX_PENDING.set(snapshot["outbox_pending"])
            metrics.DEAD_LETTERS.set(snapshot["dead_letters"])
            metrics.STUDIES_PARKED.set(snapshot["studies_report_failed"])
            metrics.INSTANCES_FAILED.set(snapshot["instances_failed"])
        if not alive:
            logger.error("A worker thread died; stopping so that systemd restarts the service")
            exit_code = ExitCode.FAILURE
            break
        notify(
            f"STATUS=queue {snapshot['queue_depth']}, outbox {snapshot['outbox_pending']}, "
            f"dead letters {snapshot['dead_letters']}, "
            f"reports parked {snapshot.get('studies_report_failed')}, "
            f"database {snapshot['database']}"
        )
        if interval:
            notify("WATCHDOG=1")
    write_status(settings.state_dir, {**snapshot, "stopping": True})

    logger.info("Stopping: draining for up to %.0f s", DRAIN_SECONDS)
    notify("STOPPING=1")
    # Stop accepting; let open associations finish, within the drain time.
    server.shutdown()
    deadline = time.monotonic() + DRAIN_SECONDS / 2
    while ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    for association in ae.active_associations:
        logger.warning("Aborting an association still open after the drain time")
        association.abort()
    stop.set()
    for thread in (pipeline, reporter, *deliverer.all_workers()):
        thread.join(timeout=DRAIN_SECONDS / 4)
    pipeline.decoder.close()
    if explainer is not None:
        # An unfinished map is simply computed again after the restart.
        explainer.join(timeout=DRAIN_SECONDS / 4)
    engine.dispose()
    logger.info("Stopped")
    return exit_code
