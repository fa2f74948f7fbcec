"""Receive, past one GIL: receiver processes that share the DICOM port.

With ``[dicom] receivers = N`` above 1, the daemon's own listener binds its
port with ``SO_REUSEPORT`` and N - 1 receiver processes bind the same port:
the kernel spreads new associations among them. Each receiver is a full
acceptor (C-ECHO, C-STORE, worklist C-FIND) with its own database pool and
its own GIL, and keeps the durability order of the daemon's own listener:
the file is written and fsynced, its row committed, then the answer sent.
A receiver puts the ids it stored on the shared work queue; should one be
lost, the pipeline's sweep finds the instance in the database.

``ReceiverProcesses`` is a service the supervisor owns: it starts the
receivers, starts another when one dies (a crash loses nothing that was
acknowledged), and at a drain asks each to stop accepting and finish its
open associations, killing any still running at the deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from daemon.audit import AssociationAudit, AuditTrail
from daemon.audit_syslog import audit_sinks
from daemon.cli.process import configure_logging
from daemon.config import Settings
from daemon.ingest_priority import IngestPriority, ReceivingSignal
from daemon.instance_writer import InstanceWriter
from daemon.listener import DicomListener, tls_context
from daemon.receive_limits import ReceiveLimits
from daemon.scp import IngestContext, event_handlers, receive_to_files
from daemon.spool import Spool
from daemon.work_queue import WorkQueue
from daemon.worklist import handle_find
from storage.database import create_database_engine, make_session_factory

logger = logging.getLogger(__name__)

# A receiver that keeps dying is not restarted for ever: after this many
# deaths within the window the service counts as dead, and the daemon stops
# so that systemd restarts it (and the operator sees why in the journal).
MAX_DEATHS = 5
DEATH_WINDOW_SECONDS = 60.0
WATCH_SECONDS = 0.5
# How long a receiver lets its open associations finish when asked to stop:
# under the half of the daemon's drain that its services get
# (``lifecycle.DRAIN_SECONDS``), so that it ends before the daemon kills it.
RECEIVER_DRAIN_SECONDS = 8.0


class ReceiverProcesses:
    """Receiver processes on the daemon's port, started again when one dies."""

    name = "dicom-receivers"

    def __init__(
        self,
        settings: Settings,
        port: int,
        work: WorkQueue,
        count: int,
        priority: IngestPriority | None = None,
    ) -> None:
        # The port the daemon's own listener got (it may have asked for 0).
        self._settings = dataclasses.replace(
            settings, dicom=dataclasses.replace(settings.dicom, port=port)
        )
        self._work = work
        self._priority = priority
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._deaths: list[float] = []
        self._stopping = threading.Event()
        for number in range(1, count + 1):
            self._processes.append(self._spawn(number))
        self._watcher = threading.Thread(target=self._watch, name=self.name, daemon=True)
        self._watcher.start()

    def _spawn(self, number: int) -> BaseProcess:
        process = self._context.Process(
            target=run_receiver,
            args=(self._settings, self._work, os.getpid(), number, self._priority),
            name=f"receiver-{number}",
        )
        process.start()
        logger.info("Receiver process %d started (pid %s)", number, process.pid)
        return process

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            for index, process in enumerate(self._processes):
                if process.is_alive() or self._stopping.is_set():
                    continue
                now = time.monotonic()
                self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW_SECONDS]
                self._deaths.append(now)
                logger.error(
                    "Receiver process %d (pid %s) died with exit code %s",
                    index + 1,
                    process.pid,
                    process.exitcode,
                )
                if len(self._deaths) >= MAX_DEATHS:
                    logger.error(
                        "Receiver processes died %d times within %.0f s; not starting another",
                        len(self._deaths),
                        DEATH_WINDOW_SECONDS,
                    )
                    return
                if self._priority is not None:
                    # Killed inside a C-STORE, it never ended the store it counted.
                    self._priority.forget(index + 1)
                self._processes[index] = self._spawn(index + 1)

    def alive(self) -> bool:
        return self._watcher.is_alive()

    def stop(self, seconds: float) -> None:
        """Each receiver stops accepting and finishes its associations within
        ``seconds``; any still running then is killed."""
        deadline = time.monotonic() + seconds
        self._stopping.set()
        self._watcher.join()
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("Receiver process %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()


def ingest_context(
    settings: Settings,
    sessions: sessionmaker[Session],
    spool: Spool,
    work: WorkQueue,
    trail: AuditTrail,
    receiving: ReceivingSignal | None = None,
) -> IngestContext:
    """How a process that receives stores: into ``spool`` and onto ``work``
    (each store told to ``receiving``), through its one ``InstanceWriter``,
    associations audited on ``trail``. C-STORE and STOW-RS share it."""
    return IngestContext(
        spool=spool,
        sessions=sessions,
        work=work,
        writer=InstanceWriter(sessions),
        duplicate_policy=settings.storage.duplicate_policy,
        min_free_bytes=settings.storage.min_free_bytes,
        audit=AssociationAudit(trail),
        receiving=receiving,
    )


def receiving_handlers(
    settings: Settings, sessions: sessionmaker[Session], ingest: IngestContext
) -> list[Any]:
    """The event handlers of a process that receives (the daemon's own, or a
    receiver): C-STORE by ``ingest``, C-ECHO, the worklist C-FIND, and the
    audit of every association."""
    audit = ingest.audit
    return event_handlers(
        ingest, handle_find, [sessions, settings.dicom.ae_title, settings.worklist, audit]
    )


def run_receiver(
    settings: Settings,
    work: WorkQueue,
    parent_pid: int,
    number: int,
    priority: IngestPriority | None = None,
) -> None:
    """A receiver process's entry point: accept associations until told to stop.

    Process-wide switches are set here, as ``triage serve`` sets its own.
    """
    configure_logging(
        settings.logging.level, settings.logging.format, sys.stdout, f"receiver-{number}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    # Ctrl-C at a terminal reaches the whole process group: the daemon's own
    # drain then stops the receivers in order. A reload is the daemon's too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cancel_join_thread = getattr(work, "cancel_join_thread", None)
    if cancel_join_thread is not None:
        cancel_join_thread()

    engine = create_database_engine(settings.storage.database_url)
    sessions = make_session_factory(engine)
    spool = Spool(settings.spool_dir)
    receive_to_files(spool.incoming)
    trail = AuditTrail(sessions, audit_sinks(settings))
    receiving = priority.receiving(number) if priority is not None else None
    ingest = ingest_context(settings, sessions, spool, work, trail, receiving)
    handlers = receiving_handlers(settings, sessions, ingest)
    tls = tls_context(settings.dicom)
    limits = ReceiveLimits.from_settings(settings, spool.free_bytes, trail.security_alert)
    listeners = [
        DicomListener.start(settings.dicom, handlers, limits, True, None, receiving),
        *(
            [DicomListener.start(settings.dicom, handlers, limits, True, tls, receiving)]
            if tls
            else []
        ),
    ]
    if None in listeners:
        sys.exit(1)
    running = [listener for listener in listeners if listener is not None]
    # Stop when asked, or when the daemon is gone (killed without a drain):
    # a receiver must never go on accepting what nothing would triage.
    while not stop.wait(WATCH_SECONDS):
        if os.getppid() != parent_pid or not all(listener.alive() for listener in running):
            break
    for listener in running:
        listener.stop(RECEIVER_DRAIN_SECONDS / len(running))
    trail.close()
    engine.dispose()
