"""The audit trail against real peers: dcmtk as scanner and worklist client,
Orthanc as the PACS, a syslog socket and a TLS syslog collector (openssl
s_server). Every kind of event is recorded, read back by ``triage audit``
with its filters, and copied to both syslogs without any patient's ID."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import Orthanc, TriageDaemon, free_port, run_tool
from tests.pki import make_ca, signed

pytestmark = pytest.mark.network


class SyslogSocket:
    """A Unix datagram socket standing in for /dev/log: keeps what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self._socket.recv(65536).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


def _frames(data: bytes) -> list[bytes]:
    """RFC 5425 octet-counted frames: "LEN SP MSG" one after another."""
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    return frames


def test_the_audit_trail_is_kept_read_back_and_sent_to_syslog(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    ca = make_ca(tmp_path, "hospital-ca")
    collector_key, collector_cert = signed(tmp_path, "collector", ca, server=True)
    collector_port = free_port()
    received = tmp_path / "collector.out"
    collector = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(collector_port), "-cert", str(collector_cert),
         "-key", str(collector_key), "-quiet"],
        stdin=subprocess.PIPE, stdout=received.open("wb"), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    local = SyslogSocket(tmp_path / "log")
    pacs = Orthanc(tmp_path / "orthanc")
    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=181).rglob("*.dcm"))
    from pydicom import dcmread

    patients = {str(dcmread(f, stop_before_pixels=True).PatientID) for f in files}
    studies = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    daemon = TriageDaemon(
        tmp_path / "state",
        tiny_model_dirs,
        TRIAGE_DICOM_ALLOWED_CALLING_AETS="SCANNER,CLINIC",
        TRIAGE_AUDIT_SYSLOG_SOCKET=str(local.path),
        TRIAGE_AUDIT_REMOTE_SYSLOG=f"127.0.0.1:{collector_port}",
        TRIAGE_AUDIT_REMOTE_SYSLOG_CA_CERTIFICATES=str(ca[1]),
        TRIAGE_DESTINATIONS=json.dumps(
            [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}]
        ),
    )
    try:
        pacs.start(triage_port=daemon.port)
        daemon.start()
        try:
            assert daemon.storescu(files).returncode == 0
            daemon.wait_for_reported_studies(len(files))
            found = daemon.findscu_worklist(tmp_path / "found", "PatientID=")
            assert found.returncode == 0, found.stderr
            stranger = run_tool(
                ["echoscu", "-aet", "STRANGER", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)]
            )
            assert stranger.returncode != 0
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for_log("Reloaded")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                exported = json.loads(
                    daemon.triage("audit", "--event", "report-exported", "--json").stdout
                )
                if len(exported) == len(files):
                    break
                time.sleep(0.5)
        finally:
            assert daemon.stop() == 0, daemon.log

        events = json.loads(daemon.triage("audit", "--json").stdout)
        kinds = {e["event"] for e in events}
        assert kinds >= {
            "application-start", "association-start", "released", "instances-stored", "query",
            "rejected", "report-exported", "configuration-change", "application-stop",
        }, kinds  # fmt: skip
        stored = [e for e in events if e["event"] == "instances-stored"]
        assert {e["patient_id"] for e in stored} == patients
        assert {e["study_instance_uid"] for e in stored} == studies
        assert sum(e["instances_stored"] for e in stored) == len(files)
        assert all(e["calling_ae_title"] == "SCANNER" for e in stored)
        exported = [e for e in events if e["event"] == "report-exported"]
        assert {e["patient_id"] for e in exported} == patients
        assert all(e["outcome"] == 0 and e["called_ae_title"] == "ORTHANC" for e in exported)

        # Filters: patient, peer, event, time.
        one = sorted(patients)[0]
        about_one = json.loads(daemon.triage("audit", "--patient-id", one, "--json").stdout)
        assert about_one and {e["patient_id"] for e in about_one} == {one}
        assert {e["event"] for e in about_one} <= {"instances-stored", "report-exported"}
        rejected = json.loads(daemon.triage("audit", "--peer", "STRANGER", "--json").stdout)
        assert [e["event"] for e in rejected] == ["rejected"]
        assert rejected[0]["outcome"] == 4
        assert json.loads(daemon.triage("audit", "--since", "1h", "--json").stdout) == events
        assert json.loads(daemon.triage("audit", "--until", "2000-01-01", "--json").stdout) == []
        table = daemon.triage("audit", "--event", "query").stdout
        assert "CLINIC" in table and f"{len([e for e in events if e['event'] == 'query'])} event"

        # Syslog: every event, each with its DICOM code, no patient in any.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"application-stop" not in received.read_bytes():
            time.sleep(0.2)
        remote = [frame.decode() for frame in _frames(received.read_bytes())]
        for copies in (local.messages, remote):
            assert len(copies) == len(events), (len(copies), len(events))
            for message in copies:
                assert not any(p in message for p in patients | studies), message
        assert all(
            re.match(r"<8[45]>dicom-triage-audit\[\d+\]: [a-z-]+ \{", m) for m in local.messages
        ), local.messages[:3]
        assert all(
            re.match(r"<8[45]>1 \S+Z \S+ dicom-triage-audit \d+ [a-z-]+ - ", m) for m in remote
        )
        start = json.loads(local.messages[0].split(" ", 2)[2])
        assert start["event"] == "application-start"
        assert start["event_id"] == {
            "code": "110100", "scheme": "DCM", "meaning": "Application Activity"
        }  # fmt: skip
        assert start["record"] == events[0]["id"]
    finally:
        pacs.stop()
        local.close()
        collector.kill()
        collector.wait()
