"""DICOM TLS (PS3.15 Annex B): the server context, after the BCP 195 profile.

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


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None,
    require_client_certificate: bool,
) -> ssl.SSLContext:
    """The listener's TLS context; ``TriageError`` naming the file that is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TriageError(
            f"Cannot load the TLS certificate {certificate} with its key {private_key}: {exc}"
        ) from exc
    if ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise TriageError(f"Cannot load the TLS CA file {ca_certificates}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise TriageError("Client certificates are required, but no CA file says whose to trust.")
    return context
