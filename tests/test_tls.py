"""DICOM TLS on its own port beside the plain one, with dcmtk as the peer:
good certificates pass; a wrong CA, no client certificate and an expired
one are refused; a peer that connects and says nothing stops no one.
Delivery to Orthanc with ``DicomTlsEnabled``: sent when its certificate is
signed by the CA trusted, never when it is not or when TLS is not used."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import Orthanc, TriageDaemon, free_port, run_tool
from tests.pki import make_ca, signed

# Transport and receive bounds: the same on any database (not rerun on PostgreSQL).
pytestmark = [pytest.mark.network, pytest.mark.before_database]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    trusted, stranger = make_ca(folder, "hospital-ca"), make_ca(folder, "other-ca")
    return {
        "ca": trusted,
        "server": signed(folder, "triage", trusted, server=True),
        "pacs": signed(folder, "pacs", trusted, server=True),
        "scanner": signed(folder, "scanner", trusted),
        "stranger": signed(folder, "stranger", stranger),
        "expired": signed(
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
    # The key as systemd passes it (LoadCredential=dicom-tls-private-key:...),
    # named nowhere in the configuration.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dicom-tls-private-key").write_bytes(pki["server"][0].read_bytes())
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_TLS_PORT=str(tls_port),
        TRIAGE_DICOM_TLS_CERTIFICATE=str(pki["server"][1]),
        TRIAGE_DICOM_TLS_CA_CERTIFICATES=ca,
        CREDENTIALS_DIRECTORY=str(credentials),
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
            sent = daemon.storescu(files[:2], *tls("scanner"), port=tls_port)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        # The plain port beside it.
        assert _echo(daemon, daemon.port).returncode == 0
        assert daemon.storescu(files[2:]).returncode == 0
        daemon.wait_for_reported_studies(len(files), timeout=90)
        # The worklist over TLS.
        found = daemon.findscu_worklist(
            tmp_path / "found", "PatientID", options=tls("scanner"), port=tls_port
        )
        assert found.returncode == 0, found.stdout + found.stderr
        assert len(list((tmp_path / "found").glob("rsp*.dcm"))) >= 1

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
        alerts = daemon.triage("audit", "--event", "connection-refused", "--json").stdout
        # Each kind of refusal once (a burst of one kind is one alert with a count).
        for reason in ("unable to get local issuer", "expired", "did not return a certificate"):
            assert reason in alerts, alerts
        # Still serving.
        assert _echo(daemon, tls_port, *tls("scanner")).returncode == 0
    finally:
        assert daemon.stop() == 0, daemon.log


def _outbox(daemon: TriageDaemon) -> dict[str, list[tuple[str, int, str]]]:
    rows = daemon.database().execute(
        "SELECT host, state, attempts, last_error FROM deliveries ORDER BY id"
    )
    by_host: dict[str, list[tuple[str, int, str]]] = {}
    for host, state, attempts, error in rows.fetchall():
        by_host.setdefault(host, []).append((state, attempts, error or ""))
    return by_host


def test_delivery_to_orthanc_over_tls(
    tmp_path: Path, model_dirs: dict[str, Path], pki: dict[str, tuple[Path, Path]]
) -> None:
    """Orthanc listens with DICOM TLS only and requires the daemon's client
    certificate. Three destinations reach that one port: by 127.0.0.1 trusting
    the hospital CA (delivered); by localhost trusting another CA (refused:
    the PACS is not who it claims); by 127.0.0.2 without TLS (refused by Orthanc)."""
    ca, stranger_ca = str(pki["ca"][1]), str(pki["stranger"][1])
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start(
        DicomTlsEnabled=True,
        DicomTlsCertificate=str(pki["pacs"][1]),
        DicomTlsPrivateKey=str(pki["pacs"][0]),
        DicomTlsTrustedCertificates=ca,
        DicomTlsRemoteCertificateRequired=True,
    )
    destination = {"ae_title": "ORTHANC", "port": pacs.dicom_port}
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_TLS_CERTIFICATE=str(pki["server"][1]),
        TRIAGE_DICOM_TLS_PRIVATE_KEY=str(pki["server"][0]),
        TRIAGE_DICOM_TLS_CA_CERTIFICATES=ca,
        TRIAGE_DESTINATIONS=json.dumps(
            [
                {**destination, "host": "127.0.0.1", "tls": True},
                {
                    **destination,
                    "host": "localhost",
                    "tls": True,
                    "tls_ca_certificates": stranger_ca,
                },
                {**destination, "host": "127.0.0.2"},
            ]
        ),
    )
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=152).rglob("*.dcm"))
    try:
        daemon.start()
        try:
            assert daemon.storescu(files).returncode == 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                outbox = _outbox(daemon)
                settled = [state == "delivered" for state, _, _ in outbox.get("127.0.0.1", [])] == [
                    True
                ] * len(files) and all(
                    attempts >= 2
                    for host in ("localhost", "127.0.0.2")
                    for _, attempts, _ in outbox.get(host, [(None, 0, "")])
                )
                if settled:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"outbox did not settle: {_outbox(daemon)}\n{daemon.log}")
        finally:
            assert daemon.stop() == 0, daemon.log
        assert len(pacs.structured_reports()) == len(files)
        for host in ("localhost", "127.0.0.2"):
            assert {state for state, _, _ in outbox[host]} == {"pending"}, outbox
            assert all("not established" in error for _, _, error in outbox[host]), outbox
        assert "certificate verify failed" in daemon.log
    finally:
        pacs.stop()
