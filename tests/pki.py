"""A certificate authority made with openssl for each test run: a CA, and
certificates it signs (for servers, with the loopback names), valid or not."""

from __future__ import annotations

import subprocess
from pathlib import Path

CA_CONFIG = """
[ca]
default_ca = ca
[ca]
dir = {folder}
database = {folder}/index.txt
new_certs_dir = {folder}
serial = {folder}/serial
default_md = sha256
policy = anything
copy_extensions = copy
[anything]
commonName = supplied
"""


def _openssl(*arguments: str) -> None:
    result = subprocess.run(["openssl", *arguments], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _key_and_request(key: Path, out: Path, name: str, *options: str) -> None:
    """A new RSA key and, with ``options``, a self-signed certificate or a request."""
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(out),
        "-subj", f"/CN={name}", *options,
    )  # fmt: skip


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, certificate = folder / f"{name}.key", folder / f"{name}.pem"
    _key_and_request(key, certificate, name, "-x509", "-days", "2")
    return key, certificate


def signed(
    folder: Path, name: str, ca: tuple[Path, Path], *validity: str, server: bool = False
) -> tuple[Path, Path]:
    """A key and a certificate for ``name`` signed by ``ca`` (``openssl ca``, so
    that the validity can lie in the past)."""
    key, request, certificate = (folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    extension = ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"] if server else []
    _key_and_request(key, request, name, *extension)
    ca_folder = folder / f"ca-{name}"
    ca_folder.mkdir()
    (ca_folder / "index.txt").write_text("")
    (ca_folder / "serial").write_text("1000\n")
    config = ca_folder / "ca.cnf"
    config.write_text(CA_CONFIG.format(folder=ca_folder))
    _openssl(
        "ca", "-batch", "-config", str(config), "-keyfile", str(ca[0]), "-cert", str(ca[1]),
        "-in", str(request), "-out", str(certificate), *(validity or ("-days", "2")),
    )  # fmt: skip
    return key, certificate
