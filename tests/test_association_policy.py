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
