"""Receive, the door: the DICOM listener as a service the supervisor owns.

pynetdicom runs the accept loop in a thread and each association in a
thread of its own. Here the accept loop runs in a thread this module starts
and names, so that the supervisor can judge it (a listener whose loop has
died must stop the service, as a dead worker does) and stop it: stop
accepting, let open associations finish within the time given, then abort
the rest.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from daemon.config import DicomSettings
from daemon.ingest_priority import ReceivingSignal, watch_data
from daemon.receive_limits import ReceiveLimits
from daemon.scp import make_acceptor
from dicom_io import event_reactors
from dicom_io.tls import server_context

logger = logging.getLogger(__name__)


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved out of the
    accept loop: pynetdicom shakes hands there, so one peer that connects
    and says nothing would stop every other from being accepted. Here it
    runs in the connection's own thread, within the network timeout, and a
    failed one (wrong CA, no client certificate, expired) is logged and the
    connection closed."""

    reuse_port = False
    limits: ReceiveLimits | None = None
    # Told of every P-DATA received: ingest's priority over triage.
    receiving: ReceivingSignal | None = None
    # Whether a source address may connect (``[dicom] allowed_networks``).
    network_allowed: Callable[[str], bool] = staticmethod(lambda _address: True)
    # Whether pynetdicom's reactors could be made to wait for events.
    event_reactors = False

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Close a connection from outside the allowed networks before any
        of it is read (socketserver's hook, called in the accept loop)."""
        if self.network_allowed(str(client_address[0])):
            return True
        logger.warning(
            "Refused a connection from %s: not in dicom.allowed_networks", client_address[0]
        )
        if self.limits is not None:
            self.limits.alert(str(client_address[0]), "not in dicom.allowed_networks")
        return False

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.ae.network_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                logger.warning("Refused a TLS connection from %s: %s", client_address[0], exc)
                if self.limits is not None:
                    self.limits.alert(str(client_address[0]), f"TLS handshake refused: {exc}")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class _BoundedRequestHandler(RequestHandler):
    """pynetdicom's request handler, with each association bounded
    (``receive_limits``) before its first byte is read, and its reactors
    woken by events rather than polling (``dicom_io.event_reactors``)."""

    def _create_association(self) -> Association:
        association = super()._create_association()
        server = self.server
        assert isinstance(server, _Server) and server.limits is not None
        server.limits.apply(association, str(self.client_address[0]))
        if server.event_reactors:
            event_reactors.wake_on_events(association)
        if server.receiving is not None:
            watch_data(association, server.receiving)
        return association


class _SharedPortServer(_Server):
    """A server whose port other processes may bind too (``SO_REUSEPORT``):
    the kernel spreads new connections among them."""

    reuse_port = True


def tls_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """The TLS port's context from the configured files; None without a TLS port.

    Raises ``TriageError`` for a file that is missing or wrong: a
    configuration error, found at start-up.
    """
    if not settings.tls_port:
        return None
    return server_context(
        Path(settings.tls_certificate),
        Path(settings.tls_private_key),
        Path(settings.tls_ca_certificates) if settings.tls_ca_certificates else None,
        settings.tls_require_client_certificate,
    )


class DicomListener:
    """The application entity's accept loop and the associations it opens."""

    def __init__(self, ae: AE, server: ThreadedAssociationServer, name: str) -> None:
        self.ae = ae
        self.server = server
        self.name = name
        self._thread = threading.Thread(target=server.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls,
        settings: DicomSettings,
        handlers: list[Any],
        limits: ReceiveLimits,
        shared_port: bool = False,
        tls: ssl.SSLContext | None = None,
        receiving: ReceivingSignal | None = None,
    ) -> DicomListener | None:
        """Listen on the configured port, or with ``tls`` on the TLS port;
        None (logged) if it cannot be bound.

        With ``shared_port``, receiver processes listen on the same port
        (``daemon.receivers``). ``receiving`` is told of the data arriving
        (``daemon.ingest_priority``).
        """
        ae = make_acceptor(settings)
        port = settings.tls_port if tls is not None else settings.port
        try:
            server = ae.make_server(
                (settings.host, port),
                evt_handlers=handlers,
                ssl_context=tls,
                server_class=_SharedPortServer if shared_port else _Server,
                request_handler=_BoundedRequestHandler,
            )
        except OSError as exc:
            logger.error("Cannot listen on %s:%d: %s", settings.host, port, exc)
            return None
        assert isinstance(server, _Server)
        server.network_allowed = settings.network_allowed
        server.limits = limits
        server.receiving = receiving
        server.event_reactors = event_reactors.install()
        return cls(ae, server, "dicom-tls-listener" if tls is not None else "dicom-listener")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def open_associations(self) -> int:
        return len(self.ae.active_associations)

    def stop(self, seconds: float) -> None:
        """Stop accepting; let open associations finish within ``seconds``, then abort them."""
        deadline = time.monotonic() + seconds
        # The stdlib's shutdown ends serve_forever; pynetdicom's own would also
        # unregister the server from an AE list it was never added to (this
        # module starts the loop itself, to own its thread).
        socketserver.BaseServer.shutdown(self.server)
        self.server.server_close()
        self._thread.join(timeout=seconds)
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for association in self.ae.active_associations:
            logger.warning("Aborting an association still open after the drain time")
            association.abort()
