"""Run the daemon: wire the stages, tell systemd, drain on SIGTERM.

The flow an image takes is receive (``scp``) → store (``spool``,
``storage.queries``) → infer (``pipeline``) → report (``reporting``) →
deliver (``delivery``), with occlusion maps (``explain``) beside it. This
module only wires them: the settings and models in force are one
``runtime.Runtime`` snapshot, and every background thread belongs to the
``supervisor.Supervisor``.

Signals only set an event; the main loop reacts. SIGHUP swaps in a new
runtime snapshot. The first SIGTERM or SIGINT drains (stops accepting,
lets the workers finish their item) within ``DRAIN_SECONDS``; a second one
exits at once. Readiness is logged and sent to systemd exactly once;
watchdog pings are sent only while every worker is alive.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from daemon import metrics
from daemon.audit import MINOR_FAILURE, SUCCESS, AuditTrail
from daemon.audit_syslog import audit_sinks
from daemon.config import Settings
from daemon.delivery import Deliverer, destination_tls
from daemon.exit_codes import ExitCode
from daemon.explain import Explainer
from daemon.health import LastError, publish_metrics, status_snapshot, write_status
from daemon.ingest_priority import IngestPriority
from daemon.listener import DicomListener, tls_context
from daemon.pipeline import TriagePipeline, triage_batcher
from daemon.receive_limits import ReceiveLimits
from daemon.receivers import ReceiverProcesses, ingest_context, receiving_handlers
from daemon.reporting import ReportBuilder
from daemon.runtime import CurrentRuntime, Runtime, load_runtime, reload_runtime
from daemon.scp import receive_to_files
from daemon.sd_notify import notify, watchdog_interval
from daemon.spool import Spool
from daemon.supervisor import Supervisor
from daemon.web.server import start_web_server
from daemon.work_queue import WorkQueue, make_work_queue
from domain.errors import ConfigError, DatabaseUnavailable, StorageError, TriageError
from storage import queries
from storage.database import create_database_engine, make_session_factory, require_current

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0
# After the drain, closing the decoders, the database pool and the
# interpreter itself must not take longer than this. Past it the process
# writes every thread's stack and exits with status 1: before systemd's
# TimeoutStopSec (45 s) would kill it without saying where it was stuck.
EXIT_GRACE_SECONDS = 10.0
# How long start-up waits for a database that cannot be reached (restarting,
# failing over) before it exits with a status systemd restarts.
DATABASE_WAIT_SECONDS = 60.0


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


class _Signals:
    """SIGTERM/SIGINT ask for a drain (a second one exits at once); SIGHUP for a reload."""

    def __init__(self) -> None:
        self.shutdown = threading.Event()
        self.reload = threading.Event()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.reload.set())

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        if self.shutdown.is_set():
            os._exit(ExitCode.INTERRUPTED)
        self.shutdown.set()


def _describe_running(
    runtime: Runtime,
    work: WorkQueue,
    spool: Spool,
    listener: DicomListener,
    receivers: ReceiverProcesses | None,
) -> dict[str, Any]:
    settings = runtime.settings
    host, port = listener.address
    return {
        "ae_title": settings.dicom.ae_title,
        "listen": f"{host}:{port}",
        # The daemon's own process listens too; these share its port.
        "receiver_pids": receivers.pids() if receivers is not None else [],
        "models": {
            modality.value: {
                "name": c.manifest.name,
                "version": c.manifest.version,
                "sha256": c.manifest.onnx_sha256,
                "provider": c.provider,
            }
            for modality, c in runtime.classifiers.items()
        },
        "queue_depth": work.qsize(),
        "spool_free_bytes": spool.free_bytes(),
    }


def serve(settings: Settings, config_path: Path | None = None) -> ExitCode:
    """Run until signalled; return the process exit code."""
    logger.info("Starting dicom-triage: %s", settings.describe())
    _warn_if_exposed(settings)
    try:
        engine = create_database_engine(settings.storage.database_url)
        if not wait_for_database(engine, DATABASE_WAIT_SECONDS):
            # Restartable: systemd tries again (Restart=on-failure); a wrong
            # schema below is a configuration error it must not retry.
            return ExitCode.FAILURE
        runtime = CurrentRuntime(load_runtime(settings))
        spool = Spool(settings.spool_dir)
        if removed := spool.remove_partial_writes():
            logger.warning("Removed %d partial file(s) left by an earlier crash", removed)
        receive_to_files(spool.incoming)
        tls = tls_context(settings.dicom)
        for destination in settings.destinations:  # a wrong certificate file stops the start
            destination_tls(settings, (destination.ae_title, destination.host, destination.port))
    except StorageError as exc:
        logger.error("%s", exc)
        return ExitCode.CONFIG
    except TriageError as exc:
        logger.error("Cannot start: %s", exc)
        return ExitCode.CONFIG

    last_error = LastError()
    logging.getLogger().addHandler(last_error)
    try:
        return _run(settings, config_path, engine, runtime, spool, last_error, tls)
    finally:
        logging.getLogger().removeHandler(last_error)
        engine.dispose()


def _warn_if_exposed(settings: Settings) -> None:
    """Say loudly, at every start, what the configuration leaves open."""
    dicom = settings.dicom
    if dicom.unprotected():
        logger.warning(
            "SECURITY: listening on %s:%d with no calling AE allow-list and no TLS "
            "(dicom.allow_open_network = true): any host that reaches the port can store "
            "images and read the urgent worklist",
            dicom.host,
            dicom.port,
        )
    elif dicom.beyond_loopback() and not (dicom.allowed_calling_aets or dicom.allowed_networks):
        logger.warning(
            "SECURITY: the plain port %d takes any calling AE title from other hosts; only "
            "the TLS port %d checks who calls",
            dicom.port,
            dicom.tls_port,
        )


def _open_doors(
    settings: Settings,
    handlers: list[Any],
    limits: ReceiveLimits,
    supervisor: Supervisor,
    work: WorkQueue,
    tls: ssl.SSLContext | None,
    priority: IngestPriority,
) -> tuple[DicomListener, ReceiverProcesses | None] | None:
    """The DICOM listener, the TLS listener (``[dicom] tls_port``), each
    association bounded by ``limits``, the
    receiver processes beside them (``[dicom] receivers`` above 1) and the
    metrics endpoint, owned by ``supervisor``; None (logged) if a listener
    or the endpoint cannot start."""
    count = settings.dicom.receivers
    receiving = priority.receiving(0)
    listener = DicomListener.start(settings.dicom, handlers, limits, count > 1, None, receiving)
    if listener is None:
        return None
    supervisor.own(listener)
    if tls is not None:
        tls_listener = DicomListener.start(
            settings.dicom, handlers, limits, count > 1, tls, receiving
        )
        if tls_listener is None:
            listener.stop(0)
            return None
        supervisor.own(tls_listener)
        host, port = tls_listener.address
        logger.info("DICOM TLS on %s:%d", host, port)
        settings = dataclasses.replace(
            settings, dicom=dataclasses.replace(settings.dicom, tls_port=port)
        )
    try:
        endpoint = metrics.serve_metrics(settings.metrics.port)
    except OSError as exc:
        logger.error("Cannot serve metrics on port %d: %s", settings.metrics.port, exc)
        listener.stop(0)
        return None
    if endpoint is not None:
        supervisor.own(endpoint)
    receivers = None
    if count > 1:
        receivers = ReceiverProcesses(settings, listener.address[1], work, count - 1, priority)
        supervisor.own(receivers)
    return listener, receivers


@dataclasses.dataclass
class _Watch:
    """What the main loop reports on: the status file, the gauges, systemd."""

    state_dir: Path
    runtime: CurrentRuntime
    work: WorkQueue
    spool: Spool
    listener: DicomListener
    receivers: ReceiverProcesses | None
    sessions: sessionmaker[Session]
    last_error: LastError
    maps_queued: Callable[[], int] | None

    def publish(self, alive: bool) -> dict[str, Any]:
        snapshot = status_snapshot(
            _describe_running(
                self.runtime.current(), self.work, self.spool, self.listener, self.receivers
            ),
            self.sessions,
            self.last_error,
            alive,
            self.maps_queued,
        )
        write_status(self.state_dir, snapshot)
        publish_metrics(snapshot)
        notify(
            f"STATUS=queue {snapshot['queue_depth']}, outbox {snapshot['outbox_pending']}, "
            f"dead letters {snapshot['dead_letters']}, "
            f"reports parked {snapshot.get('studies_report_failed')}, "
            f"database {snapshot['database']}"
        )
        return snapshot


def _run(
    settings: Settings,
    config_path: Path | None,
    engine: Engine,
    runtime: CurrentRuntime,
    spool: Spool,
    last_error: LastError,
    tls: ssl.SSLContext | None,
) -> ExitCode:
    sessions = make_session_factory(engine)
    supervisor = Supervisor(threading.Event())
    work = make_work_queue(shared=settings.dicom.receivers > 1)
    signals = _Signals()
    trail = AuditTrail(sessions, audit_sinks(settings))
    # Slot 0: this process's own listener; 1..: the receiver processes.
    priority = IngestPriority(settings.dicom.receivers, settings.dicom.ingest_priority_hold_seconds)
    # The daemon's own listener and the STOW-RS route store through one
    # context: one writer, one group commit, one slot of the ingest priority.
    ingest = ingest_context(settings, sessions, spool, work, trail, priority.receiving(0))
    doors = _open_doors(
        settings,
        receiving_handlers(settings, sessions, ingest),
        ReceiveLimits.from_settings(settings, spool.free_bytes, trail.security_alert),
        supervisor,
        work,
        tls,
        priority,
    )
    if doors is None:
        trail.close()
        return ExitCode.FAILURE
    listener, receivers = doors
    try:
        web = start_web_server(settings, sessions, trail, ingest)
    except (TriageError, OSError) as exc:
        logger.error("Cannot serve HTTP on %s:%d: %s", settings.http.host, settings.http.port, exc)
        supervisor.drain(0)
        trail.close()
        return ExitCode.CONFIG if isinstance(exc, ConfigError) else ExitCode.FAILURE
    if web is not None:
        supervisor.own(web)
    if engine.dialect.name == "sqlite":
        # One node by construction: leases left by its previous process are stale.
        with sessions() as session, session.begin():
            if freed := queries.release_all_leases(session):
                logger.warning("Released %d image(s) held when the daemon last stopped", freed)

    # Each stage wakes the next as it hands work on, instead of leaving it to
    # the next poll: push-to-SR latency is stable_seconds plus the work.
    deliverer = Deliverer(sessions, runtime, supervisor.stop, spawn=supervisor.start, trail=trail)
    reporter = ReportBuilder(
        runtime, sessions, supervisor.stop, reported=deliverer.wake, priority=priority
    )
    batcher = triage_batcher(sessions, runtime, supervisor.stop, triaged=reporter.wake)
    decoders = [
        TriagePipeline(
            sessions,
            runtime,
            work,
            supervisor.stop,
            batcher=batcher,
            name=f"triage-decode-{n}",
            priority=priority,
        )
        for n in range(settings.models.decode_workers)
    ]
    supervisor.start(
        batcher,
        *decoders,
        reporter,
        deliverer,
    )
    for decoder in decoders:
        supervisor.close_at_exit(decoder.decoder.close)
    explainer = None
    if settings.occlusion.enabled:
        explainer = Explainer(
            runtime,
            sessions,
            supervisor.stop,
            # Images waiting for triage, or arriving: maps wait for both.
            triage_backlog=lambda: (
                work.qsize() + batcher.pending() + (priority.busy_for() is not None)
            ),
        )
        supervisor.start(*explainer.workers())
        supervisor.close_at_exit(explainer.decoder.close)
    host, port = listener.address
    logger.info("Ready: listening as %s on %s:%d", settings.dicom.ae_title, host, port)
    trail.record(
        "application-start", called_ae_title=settings.dicom.ae_title, detail=_models(runtime)
    )
    notify(f"READY=1\nSTATUS=Listening as {settings.dicom.ae_title} on {host}:{port}")

    watch = _Watch(
        settings.state_dir,
        runtime,
        work,
        spool,
        listener,
        receivers,
        sessions,
        last_error,
        explainer.queued if explainer is not None else None,
    )
    interval = watchdog_interval()
    tick = min(interval, 1.0) if interval else 1.0
    exit_code = ExitCode.OK
    while True:
        alive = supervisor.healthy()
        snapshot = watch.publish(alive)
        if not alive:
            logger.error("A worker thread died; stopping so that systemd restarts the service")
            exit_code = ExitCode.FAILURE
            break
        if interval:
            notify("WATCHDOG=1")
        if signals.shutdown.wait(tick):
            break
        if signals.reload.is_set():
            signals.reload.clear()
            notify("RELOADING=1")
            running = runtime.current()
            runtime.replace(reload_runtime(config_path, running))
            rejected = runtime.current() is running
            trail.record(
                "configuration-change",
                MINOR_FAILURE if rejected else SUCCESS,
                detail=("reload rejected: " if rejected else "reloaded: ") + _models(runtime),
            )
            notify("READY=1")
        if stale := spool.remove_stale_receives():
            logger.warning("Removed %d file(s) of transfers that were aborted", stale)
    write_status(settings.state_dir, {**snapshot, "stopping": True})

    logger.info("Stopping: draining for up to %.0f s", DRAIN_SECONDS)
    faulthandler.dump_traceback_later(DRAIN_SECONDS + EXIT_GRACE_SECONDS, exit=True)
    notify("STOPPING=1")
    # The listener first (no new associations; open ones finish), then the
    # workers. An unfinished image or map is leased in the database: it is
    # simply taken again after the restart.
    supervisor.drain(DRAIN_SECONDS)
    trail.record("application-stop", SUCCESS if exit_code == ExitCode.OK else MINOR_FAILURE)
    trail.close()  # after the last event: the remote sink sends what it holds
    logger.info("Stopped")
    return exit_code


def _models(runtime: CurrentRuntime) -> str:
    """The models in use, for the audit trail: name, version, digest."""
    return ", ".join(
        f"{modality.value} {c.manifest.name} {c.manifest.version} sha256 {c.manifest.onnx_sha256}"
        for modality, c in runtime.current().classifiers.items()
    )
