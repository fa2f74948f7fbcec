"""Where audit messages go besides the database: syslog, local and remote.

- **Local**: a datagram to the host's syslog socket (``/dev/log``, which is
  journald's under systemd), as ``<PRI>dicom-triage-audit[PID]: MSG``, so
  that ``journalctl -t dicom-triage-audit`` shows them.
- **Remote**: RFC 5424 messages over TLS (RFC 5425: octet-counting framing,
  port 6514 by convention) to an audit record repository or a log
  collector. The server's certificate is verified (BCP 195, as for DICOM
  TLS); this node presents its DICOM certificate when it has one.

Neither ever blocks or fails the work that is audited: the remote sender
keeps a bounded queue in a thread of its own, reconnects with backoff
while the collector is away, and counts what it had to drop when the queue
was full. The database row, written first, is the record of reference.

Facility 10 (authpriv), as IHE ATNA asks (RFC 3881 over syslog): severity
notice for events, warning for failures and security alerts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import ssl
import threading
from pathlib import Path
from typing import Protocol

from daemon.config import Settings
from dicom_io.tls import client_context
from domain.retry import Backoff

logger = logging.getLogger(__name__)

APP_NAME = "dicom-triage-audit"
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
REMOTE_QUEUE_SIZE = 10_000
CONNECT_TIMEOUT_SECONDS = 10.0


def priority(failed: bool) -> int:
    return FACILITY_AUTHPRIV * 8 + (SEVERITY_WARNING if failed else SEVERITY_NOTICE)


class AuditSink(Protocol):
    def send(self, message_id: str, text: str, failed: bool) -> None: ...

    def close(self) -> None: ...


class LocalSyslog:
    """The host's syslog socket (a Unix datagram socket)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._warned = False

    def send(self, message_id: str, text: str, failed: bool) -> None:
        line = f"<{priority(failed)}>{APP_NAME}[{os.getpid()}]: {message_id} {text}"
        try:
            self._socket.sendto(line.encode("utf-8"), str(self.path))
            self._warned = False
        except OSError as exc:
            if not self._warned:  # once per outage, not once per event
                logger.warning("Cannot write audit messages to %s: %s", self.path, exc)
                self._warned = True

    def close(self) -> None:
        self._socket.close()


def rfc5424(message_id: str, text: str, failed: bool, at: dt.datetime | None = None) -> bytes:
    """One RFC 5424 message: header, no structured data, the text as UTF-8."""
    stamp = (at or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")
    stamp = stamp.replace("+00:00", "Z")
    host = socket.gethostname() or "-"
    header = f"<{priority(failed)}>1 {stamp} {host} {APP_NAME} {os.getpid()} {message_id} -"
    return header.encode("ascii", "replace") + b" \xef\xbb\xbf" + text.encode("utf-8")


class RemoteSyslog:
    """RFC 5424 over TLS (RFC 5425) to ``host:port``, from a thread of its own."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(REMOTE_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, message_id: str, text: str, failed: bool) -> None:
        try:
            self._queue.put_nowait(rfc5424(message_id, text, failed))
        except queue.Full:
            self.dropped += 1

    def close(self, seconds: float = 5.0) -> None:
        """Send what is queued (within ``seconds``), then stop."""
        try:
            self._queue.put(None, timeout=seconds)
        except queue.Full:
            return
        self._thread.join(timeout=seconds)

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _run(self) -> None:
        backoff = Backoff(first=1.0, ceiling=60.0)
        failures = 0
        connection: ssl.SSLSocket | None = None
        pending: bytes | None = None
        while True:
            if pending is None:
                pending = self._queue.get()
                if pending is None:
                    break
            try:
                if connection is None:
                    connection = self._connect()
                    if failures:
                        logger.info("Audit messages reach %s:%d again", self.host, self.port)
                    failures = 0
                # RFC 5425 4.3: octet counting, "MSG-LEN SP SYSLOG-MSG".
                connection.sendall(str(len(pending)).encode() + b" " + pending)
                pending = None
            except (OSError, ssl.SSLError) as exc:
                if connection is not None:
                    connection.close()
                    connection = None
                failures += 1
                if failures == 1:
                    logger.warning(
                        "Cannot send audit messages to %s:%d (%s); keeping them queued",
                        self.host,
                        self.port,
                        exc,
                    )
                threading.Event().wait(backoff.delay(failures))
        if connection is not None:
            connection.close()


def audit_sinks(settings: Settings) -> list[AuditSink]:
    """The sinks ``[audit]`` configures; ``TriageError`` for a wrong CA file."""
    sinks: list[AuditSink] = []
    audit = settings.audit
    if audit.syslog_socket and Path(audit.syslog_socket).exists():
        sinks.append(LocalSyslog(Path(audit.syslog_socket)))
    elif audit.syslog_socket:
        logger.info(
            "No syslog socket at %s: the audit trail is kept in the database only",
            audit.syslog_socket,
        )
    if remote := audit.remote():
        ca = audit.remote_syslog_ca_certificates
        context = client_context(
            Path(ca) if ca else None, settings.dicom.client_identity(), check_hostname=True
        )
        sinks.append(RemoteSyslog(*remote, context))
    return sinks
