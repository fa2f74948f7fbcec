"""The systemd drop-in that fences the service's network to its configuration.

``IPAddressDeny=any`` with an ``IPAddressAllow=`` for each network the
configuration names (systemd.resource-control(5)): the kernel then drops,
in both directions, every packet to or from anywhere else, whatever the
daemon itself does. Allowed are loopback, the sources of ``[dicom]
allowed_networks`` and ``[worklist] allowed_networks``, and the peers the
daemon calls: each destination PACS and the database server. A peer named
by host name is resolved when the drop-in is made (systemd takes addresses
only), and the drop-in says so: make it again when the address changes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from sqlalchemy.engine import make_url

from daemon.config import Settings
from domain.errors import ConfigError

Resolve = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address ``host`` has now (an address stands for itself)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"Cannot resolve {host!r} for IPAddressAllow=: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def _database_host(url: str) -> str | None:
    if not url.startswith("postgresql"):
        return None
    return make_url(url).host or None  # none: a Unix socket, outside IP fencing


def network_dropin(settings: Settings, resolve: Resolve = resolve) -> str:
    """The drop-in's text; ``ConfigError`` when nothing limits the sources."""
    if not settings.dicom.allowed_networks:
        raise ConfigError(
            'No "dicom.allowed_networks": the service takes associations from any source, so '
            "IPAddressDeny= would cut off every scanner. Name the scanners' networks first."
        )
    allowed: list[tuple[str, str]] = [("localhost", "loopback: local tools and metrics")]
    allowed += [(net, "[dicom] allowed_networks") for net in settings.dicom.allowed_networks]
    allowed += [(net, "[worklist] allowed_networks") for net in settings.worklist.allowed_networks]
    peers = [(d.host, f"destination {d.ae_title}") for d in settings.destinations]
    if database := _database_host(settings.storage.database_url):
        peers.append((database, "the database"))
    for host, what in peers:
        for address in resolve(host):
            resolved = "" if address == host else f" ({host}, resolved now)"
            allowed.append((address, f"{what}{resolved}"))
    lines = [
        "# Made by `triage systemd-dropin` from the configuration: the kernel drops",
        "# traffic to or from any address not allowed here (systemd.resource-control(5)).",
        "# Install as /etc/systemd/system/dicom-triage.service.d/network.conf, then",
        "# systemctl daemon-reload && systemctl restart dicom-triage. Make it again",
        "# whenever the networks, destinations or database change.",
        "[Service]",
        "IPAddressDeny=any",
    ]
    seen: set[str] = set()
    for address, why in allowed:
        if address in seen:
            continue
        seen.add(address)
        lines += [f"# {why}", f"IPAddressAllow={address}"]
    return "\n".join(lines) + "\n"
