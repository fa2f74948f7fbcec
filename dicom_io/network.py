"""What both ends of a DICOM association need from the socket under it."""

from __future__ import annotations

import logging
import socket
from typing import Any

logger = logging.getLogger(__name__)


def set_nodelay(assoc: Any) -> None:
    """Turn Nagle's algorithm off on a pynetdicom association's socket.

    dcmtk peers leave Nagle on, and pynetdicom never sets TCP_NODELAY; each
    response would otherwise wait about 40 ms for a delayed ACK.
    """
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        logger.debug("Could not set TCP_NODELAY", exc_info=True)
