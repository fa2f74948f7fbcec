"""DICOM TLS (PS3.15 Annex B): the server and client contexts, after BCP 195.

TLS 1.2 or later only, no compression, the ciphers of Python's default
context (forward-secret AEAD suites first), the server's certificate and
key from files. With a CA file, peers must present a certificate that it
signed (``require_client_certificate``), or may (then it is checked if
sent). dcmtk's ``+tls`` with its default profile (``+py``, non-downgrading
BCP 195) negotiates with it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from domain.errors import TriageError


def _bcp195(purpose: ssl.Purpose, ca_certificates: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later, no compression; trusting ``ca_certificates`` alone when
    given (a client without one trusts the system's store)."""
    try:
        context = ssl.create_default_context(purpose, cafile=ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise TriageError(f"Cannot load the TLS CA file {ca_certificates}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _load_identity(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TriageError(
            f"Cannot load the TLS certificate {certificate} with its key {private_key}: {exc}"
        ) from exc


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None,
    require_client_certificate: bool,
) -> ssl.SSLContext:
    """The listener's TLS context; ``TriageError`` naming the file that is wrong."""
    context = _bcp195(ssl.Purpose.CLIENT_AUTH, ca_certificates)
    _load_identity(context, certificate, private_key)
    if ca_certificates is not None:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise TriageError("Client certificates are required, but no CA file says whose to trust.")
    return context


def client_context(
    ca_certificates: Path | None,
    identity: tuple[Path, Path] | None,
    check_hostname: bool,
) -> ssl.SSLContext:
    """A context for associations this node opens (delivery to a PACS).

    The peer's certificate is always verified: against ``ca_certificates``,
    or the system's trust store without one; with ``check_hostname`` it must
    also name the host connected to. ``identity``, a certificate and its
    private key, is this node's for peers that require one (as Orthanc does
    by default).
    """
    context = _bcp195(ssl.Purpose.SERVER_AUTH, ca_certificates)
    context.check_hostname = check_hostname
    if identity is not None:
        _load_identity(context, *identity)
    return context
