"""The HTTP service as a service the supervisor owns: uvicorn in a thread
of the daemon's process, serving ``daemon.web.app``.

Starlette runs each synchronous route in a worker thread, so that the
database reads of one page never hold up another's answer. uvicorn's own
access log is off: its lines would carry every path and query string.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from daemon.audit import AuditTrail
from daemon.config import HttpSettings, Settings
from daemon.scp import IngestContext
from daemon.web.app import build_app
from daemon.web.auth import Gatekeeper
from daemon.web.context import WebContext
from daemon.web.credentials import Users
from daemon.web.sessions import SessionStore

logger = logging.getLogger(__name__)

_START_SECONDS = 10.0


class WebServer:
    name = "http"

    def __init__(self, settings: HttpSettings, context: WebContext) -> None:
        self.settings = settings
        # Bound here, before the thread starts: a port in use fails the
        # start-up, as a DICOM port in use does.
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP, and without it each answer's second write waits
        # out the client's delayed ACK (40 ms a request, bench/web.py).
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((settings.host, settings.port))
        self._socket.listen(128)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            build_app(context, settings.https()),
            log_config=None,
            access_log=False,
            ssl_certfile=settings.tls_certificate or None,
            ssl_keyfile=settings.tls_private_key or None,
            timeout_graceful_shutdown=5,
            server_header=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise OSError("the HTTP service did not start")
            time.sleep(0.02)
        if not self._thread.is_alive():
            raise OSError("the HTTP service stopped as it started")
        scheme = "https" if settings.https() else "http"
        logger.info("Web pages and API on %s://%s:%d/", scheme, *self.address)

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, seconds: float) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=seconds)
        self._socket.close()


def start_web_server(
    settings: Settings,
    sessions: sessionmaker[Session],
    trail: AuditTrail,
    ingest: IngestContext | None,
) -> WebServer | None:
    """The HTTP service, or None when ``[http] port`` is 0; STOW-RS stores
    through ``ingest``.

    Raises ``ConfigError`` (a bad credentials file) or ``OSError`` (the port,
    the certificate)."""
    http = settings.http
    if not http.port:
        return None
    users = Users.from_file(Path(http.credentials_file))
    gatekeeper = Gatekeeper(users, SessionStore(http.session_hours * 3600), trail, http.https())
    context = WebContext(
        sessions, trail, settings.state_dir, gatekeeper, ingest, settings.dicom.max_dataset_bytes
    )
    return WebServer(http, context)
