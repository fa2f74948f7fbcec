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
import threading
import time
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from daemon.config import DicomSettings
from daemon.scp import make_acceptor

logger = logging.getLogger(__name__)


class _SharedPortServer(ThreadedAssociationServer):
    """An association server whose port other processes may bind too
    (``SO_REUSEPORT``): the kernel spreads new connections among them."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class DicomListener:
    """The application entity's accept loop and the associations it opens."""

    name = "dicom-listener"

    def __init__(self, ae: AE, server: ThreadedAssociationServer) -> None:
        self.ae = ae
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls, settings: DicomSettings, handlers: list[Any], shared_port: bool = False
    ) -> DicomListener | None:
        """Listen on the configured address; None (logged) if it cannot be bound.

        With ``shared_port``, receiver processes listen on the same port
        (``daemon.receivers``).
        """
        ae = make_acceptor(settings)
        try:
            server = ae.make_server(
                (settings.host, settings.port),
                evt_handlers=handlers,
                server_class=_SharedPortServer if shared_port else ThreadedAssociationServer,
            )
        except OSError as exc:
            logger.error("Cannot listen on %s:%d: %s", settings.host, settings.port, exc)
            return None
        return cls(ae, server)

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
