"""DICOM TLS on its own port beside the plain one, with dcmtk as the peer:
good certificates pass; a wrong CA, no client certificate and an expired
one are refused; a peer that connects and says nothing stops no one."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, free_port, run_tool

pytestmark = pytest.mark.network

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


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, certificate = folder / f"{name}.key", folder / f"{name}.pem"
    _key_and_request(key, certificate, name, "-x509", "-days", "2")
    return key, certificate


def _signed(
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


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    trusted, stranger = _ca(folder, "hospital-ca"), _ca(folder, "other-ca")
    return {
        "ca": trusted,
        "server": _signed(folder, "triage", trusted, server=True),
        "scanner": _signed(folder, "scanner", trusted),
        "stranger": _signed(folder, "stranger", stranger),
        "expired": _signed(
            folder,
            "expired",
            trusted,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
        ),
    }


def _echo(daemon: TriageDaemon, port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return run_tool(["echoscu", "-aet", "SCANNER", "-aec", "TRIAGE", *tls, "127.0.0.1", str(port)])


def test_tls_port_beside_the_plain_one(
    tmp_path: Path, model_dirs: dict[str, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    tls_port = free_port()
    ca = str(pki["ca"][1])
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_TLS_PORT=str(tls_port),
        TRIAGE_DICOM_TLS_CERTIFICATE=str(pki["server"][1]),
        TRIAGE_DICOM_TLS_PRIVATE_KEY=str(pki["server"][0]),
        TRIAGE_DICOM_TLS_CA_CERTIFICATES=ca,
    )

    def tls(name: str) -> list[str]:
        key, certificate = pki[name]
        return ["+tls", str(key), str(certificate), "+cf", ca]

    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=151).rglob("*.dcm"))
    daemon.start()
    try:
        daemon.wait_for_log(f"DICOM TLS on 127.0.0.1:{tls_port}")
        # A peer that connects to the TLS port and says nothing: the accept
        # loop goes on (the handshake waits in that connection's own thread).
        with socket.create_connection(("127.0.0.1", tls_port)):
            echoed = _echo(daemon, tls_port, *tls("scanner"))
            assert echoed.returncode == 0, echoed.stdout + echoed.stderr
            command = daemon.storescu_command(files[:2], *tls("scanner"))
            command[command.index(str(daemon.port))] = str(tls_port)
            sent = run_tool(command)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        # The plain port beside it.
        assert _echo(daemon, daemon.port).returncode == 0
        assert daemon.storescu(files[2:]).returncode == 0
        daemon.wait_for_reported_studies(len(files), timeout=90)

        refused = {
            "wrong CA": _echo(daemon, tls_port, *tls("stranger")),
            "expired": _echo(daemon, tls_port, *tls("expired")),
            "no client certificate": _echo(daemon, tls_port, "+tla", "+cf", ca),
            "plain TCP on the TLS port": _echo(daemon, tls_port),
        }
        for case, result in refused.items():
            assert result.returncode != 0, f"{case}: {result.stdout}{result.stderr}"
        # Each refused for its own reason, in the log (a peer's address, no patient data).
        for reason in (
            "unable to get local issuer certificate",
            "certificate has expired",
            "peer did not return a certificate",
            "wrong version number",
        ):
            daemon.wait_for_log(reason)
        # Still serving.
        assert _echo(daemon, tls_port, *tls("scanner")).returncode == 0
    finally:
        assert daemon.stop() == 0, daemon.log
