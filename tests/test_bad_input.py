"""Bad input gets a clear DICOM status, is quarantined, and never stops the daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, run_tool

pytestmark = pytest.mark.network


def test_bad_input_is_refused_and_the_daemon_keeps_serving(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    root = write_dicom_studies("cxr", tmp_path / "scanner", 1, seed=41)
    good = sorted(root.rglob("*.dcm"))[0]

    no_pixels = dcmread(good)
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = no_pixels.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    no_pixels_path = tmp_path / "no-pixels.dcm"
    no_pixels.save_as(no_pixels_path, enforce_file_format=True)

    ct = dcmread(good)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ct_path = tmp_path / "ct.dcm"
    ct.save_as(ct_path, enforce_file_format=True)

    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    try:
        refused = daemon.storescu([no_pixels_path], "-d")
        assert refused.returncode != 0
        assert "0xc001" in (refused.stdout + refused.stderr).lower()
        notes = list((tmp_path / "state" / "spool" / "quarantine").glob("*.json"))
        assert len(notes) == 1
        assert "no pixel data" in json.loads(notes[0].read_text())["reason"]
        assert notes[0].with_suffix(".dcm").stat().st_size > 0

        unknown = daemon.storescu([ct_path], "-v")
        assert unknown.returncode != 0
        assert "no presentation context" in (unknown.stdout + unknown.stderr).lower()

        echo = run_tool(
            ["echoscu", "-aet", "SCANNER", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)]
        )
        assert echo.returncode == 0, echo.stderr
        accepted = daemon.storescu([good])
        assert accepted.returncode == 0, accepted.stderr
        duplicate = daemon.storescu([good])
        assert duplicate.returncode == 0, duplicate.stderr
        stored = list((tmp_path / "state" / "spool" / "instances").rglob("*.dcm"))
        assert len(stored) == 1
        # The audit row is written when the daemon sees the release: poll for it.
        deadline = time.monotonic() + 10
        counts = None
        while time.monotonic() < deadline and counts != (2, 1):
            time.sleep(0.1)
            counts = (
                daemon.database()
                .execute(
                    "select sum(instances_stored), sum(instances_refused) from audit_events "
                    "where calling_ae_title = 'SCANNER' and event in ('released', 'aborted')"
                )
                .fetchone()
            )
        assert counts == (2, 1)  # the good copy and its duplicate; the one without pixels
    finally:
        assert daemon.stop() == 0, daemon.log


def test_refuses_to_start_on_an_unmigrated_database(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    result = daemon.triage("serve", check=False)
    assert result.returncode == 78
    assert "triage db upgrade" in result.stdout


def test_refuses_to_start_with_a_tampered_model(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    import shutil

    tampered = tmp_path / "oct"
    shutil.copytree(model_dirs["oct"], tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-1])
    daemon = TriageDaemon(tmp_path / "state", {"oct": tampered, "cxr": model_dirs["cxr"]})
    daemon.triage("db", "upgrade")
    result = daemon.triage("serve", check=False)
    assert result.returncode == 78
    assert "SHA-256" in result.stdout


def test_a_full_disk_refuses_storage_for_now_and_keeps_serving(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    root = write_dicom_studies("cxr", tmp_path / "scanner", 1, seed=43)
    good = sorted(root.rglob("*.dcm"))[0]
    daemon = TriageDaemon(tmp_path / "state", model_dirs, TRIAGE_STORAGE_MIN_FREE_BYTES=str(10**18))
    daemon.start()
    try:
        # Below the watermark, an association that would store waits
        # (A-ASSOCIATE-RJ transient, which a modality retries); one already
        # open would get 0xA700 for each instance.
        refused = daemon.storescu([good], "-d")
        assert refused.returncode != 0
        assert "rejected transient" in refused.stderr.lower(), refused.stderr
        assert "local limit exceeded" in refused.stderr.lower(), refused.stderr
        daemon.wait_for_log("for now: the spool's disk has")
        assert list((tmp_path / "state" / "spool" / "instances").rglob("*.dcm")) == []
        # Echoes and worklist queries need no disk and go on.
        echo = run_tool(
            ["echoscu", "-aet", "SCANNER", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)]
        )
        assert echo.returncode == 0
        found = daemon.findscu_worklist(tmp_path / "found", "PatientID=")
        assert found.returncode == 0, found.stderr
    finally:
        assert daemon.stop() == 0, daemon.log
