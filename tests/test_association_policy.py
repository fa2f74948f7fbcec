"""Association policy with real dcmtk clients: AE titles and rejection reasons."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.peers import TriageDaemon, run_tool

pytestmark = pytest.mark.network


def _echo(port: int, calling: str, called: str = "TRIAGE") -> str:
    result = run_tool(["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)])
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def test_called_and_calling_ae_titles(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_ALLOWED_CALLING_AETS="OCT1,CR2",
        TRIAGE_DICOM_MAX_PDU_SIZE="65536",
    )
    daemon.start()
    try:
        accepted = _echo(daemon.port, "OCT1")
        assert accepted.startswith("rc=0")
        # Our maximum PDU of 65536 bytes leaves 65524 for each PDV.
        assert "Max Send PDV: 65524" in accepted
        wrong_called = _echo(daemon.port, "OCT1", called="NOTTRIAGE")
        assert "Called AE Title Not Recognized" in wrong_called
        unknown_calling = _echo(daemon.port, "STRANGER")
        assert "Calling AE Title Not Recognized" in unknown_calling
        assert _echo(daemon.port, "CR2").startswith("rc=0")
        deadline = time.monotonic() + 10
        audit: list = []
        while time.monotonic() < deadline and ("released", "CR2") not in audit:
            time.sleep(0.1)  # the row is written when the daemon sees the release
            audit = daemon.database().execute(
                "select event, calling_ae_title from audit_events order by id"
            )
        assert ("released", "OCT1") in audit
        assert ("rejected", "STRANGER") in audit
    finally:
        assert daemon.stop() == 0, daemon.log


def test_an_open_listener_must_be_asked_for_and_says_so_at_every_start(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """Every interface (inside the test's loopback-only namespace), no allow-list,
    no TLS: served only with allow_open_network, and logged as a SECURITY warning."""
    daemon = TriageDaemon(
        tmp_path / "state",
        tiny_model_dirs,
        TRIAGE_DICOM_HOST="0.0.0.0",
        TRIAGE_DICOM_ALLOW_OPEN_NETWORK="true",
    )
    daemon.start()
    try:
        assert "WARNING daemon.lifecycle: SECURITY: listening on 0.0.0.0" in daemon.log
        echoed = run_tool(["echoscu", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)])
        assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    finally:
        assert daemon.stop() == 0, daemon.log


def test_a_peer_declaring_a_huge_pdu_is_cut_off_before_it_is_read(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """An A-ASSOCIATE-RQ that declares 2 GiB, followed by zeros: the daemon
    closes the connection after the 6-byte header instead of reading it into
    memory, and serves the next sender as usual."""
    import socket
    import struct

    from phantoms.files import write_dicom_studies

    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=161).rglob("*.dcm"))
    daemon = TriageDaemon(tmp_path / "state", tiny_model_dirs)
    daemon.start()
    try:
        before = daemon.peak_memory_mib()
        sent, limit = 0, 400 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", daemon.port)) as peer:
            peer.sendall(struct.pack(">BBL", 0x01, 0, 2**31))
            chunk = bytes(1024 * 1024)
            try:
                while sent < limit:
                    peer.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the daemon closed the connection
        daemon.wait_for_log("declared a PDU of 2147483648 bytes")
        sent_files = daemon.storescu(files)
        assert sent_files.returncode == 0, sent_files.stdout + sent_files.stderr
        grown = daemon.peak_memory_mib() - before
        print(
            f"\nsent {sent / 2**20:.0f} MiB before the daemon closed; peak memory +{grown:.0f} MiB"
        )
        assert sent < limit
        assert grown < 64
    finally:
        assert daemon.stop() == 0, daemon.log


def test_who_may_connect_and_read_the_worklist(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    """Listening on every interface with a source-network allow-list: a peer
    from 127.0.0.2 is closed before it is read, 127.0.0.1 is served. The
    worklist answers only its AE titles, and only the attributes asked for."""
    from pydicom import dcmread
    from pynetdicom import AE

    from phantoms.files import write_dicom_studies

    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=162).rglob("*.dcm"))
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_HOST="0.0.0.0",
        TRIAGE_DICOM_ALLOWED_NETWORKS="127.0.0.1/32",
        TRIAGE_WORKLIST_ALLOWED_CALLING_AETS="CLINIC",
    )
    daemon.start()
    try:
        assert "SECURITY" not in daemon.log
        ae = AE(ae_title="ELSEWHERE")
        ae.add_requested_context("1.2.840.10008.1.1")
        outsider = ae.associate(
            "127.0.0.1", daemon.port, ae_title="TRIAGE", bind_address=("127.0.0.2", 0)
        )
        assert not outsider.is_established
        daemon.wait_for_log("Refused a connection from 127.0.0.2: not in dicom.allowed_networks")
        alerts = daemon.triage("audit", "--peer", "127.0.0.2", "--json").stdout
        assert '"detail": "not in dicom.allowed_networks"' in alerts, alerts
        assert daemon.storescu(files).returncode == 0
        daemon.wait_for_reported_studies(len(files))

        answers = tmp_path / "clinic"
        found = daemon.findscu_worklist(
            answers, "PatientID=", "ScheduledProcedureStepSequence[0].Modality="
        )
        assert found.returncode == 0, found.stdout + found.stderr
        responses = [dcmread(p) for p in sorted(answers.glob("rsp*.dcm"))]
        assert responses, daemon.log
        for response in responses:
            asked = {"SpecificCharacterSet", "PatientID", "ScheduledProcedureStepSequence"}
            assert set(response.dir()) <= asked, response
            assert "PatientName" not in response and "PatientBirthDate" not in response
            assert response.ScheduledProcedureStepSequence[0].dir() == ["Modality"]

        refused = daemon.findscu_worklist(
            tmp_path / "snoop", "PatientID=", calling="SNOOP", options=["-v"]
        )
        assert not list((tmp_path / "snoop").glob("rsp*.dcm"))
        # 0x0124, Refused: not authorized (PS3.7 C.5); dcmtk knows no name for it.
        assert "Final Find Response (Unknown Status: 0x124)" in refused.stderr, refused.stderr
        daemon.wait_for_log("Refused a worklist query from SNOOP")
        refusals = daemon.triage("audit", "--event", "query-refused", "--peer", "SNOOP").stdout
        assert "1 event(s)" in refusals, refusals
    finally:
        assert daemon.stop() == 0, daemon.log
