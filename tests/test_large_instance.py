"""Large images: received into the spool as they arrive, not held in memory;
the file of a transfer cut off midway is cleaned up."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from daemon.spool import RECEIVING_PATTERN, STALE_SECONDS, Spool
from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, dcmtk_env, run_tool

pytestmark = pytest.mark.network

SIDE = 8192  # 8192 x 8192 x 16 bits: 128 MiB of pixel data


def _large_image(folder: Path, pixels: np.ndarray) -> Path:
    """An 8192 x 8192 radiograph of a hand: no model applies, so the daemon
    stores it and skips it without decoding, and its memory shows the
    receiving alone."""
    source = sorted(write_dicom_studies("cxr", folder / "src", 1, seed=96).rglob("*.dcm"))[0]
    dataset = dcmread(source)
    dataset.Rows = dataset.Columns = SIDE
    dataset.PixelData = pixels.tobytes()
    dataset.BodyPartExamined = "HAND"
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    large = folder / "large.dcm"
    dataset.save_as(large, enforce_file_format=True)
    return large


def test_a_large_image_is_stored_without_holding_it_in_memory(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    pixels = (np.arange(SIDE * SIDE, dtype=np.uint32) % 4093).astype(np.uint16)
    large = _large_image(tmp_path, pixels)
    size_mib = large.stat().st_size / 2**20

    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    assert daemon.process is not None
    database = daemon.database()
    try:
        before = daemon.peak_memory_mib()
        sent = daemon.storescu([large])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 60
        state: tuple[str, str] | None = None
        while time.monotonic() < deadline:
            state = database.execute("select state, path from instances").fetchone()
            if state is not None and state[0] == "skipped":
                break
            time.sleep(0.3)
        assert state is not None and state[0] == "skipped", daemon.log
        growth = daemon.peak_memory_mib() - before
        print(f"\npeak daemon memory grew by {growth:.0f} MiB receiving a {size_mib:.0f} MiB image")
        # Held in memory even once, the image alone would add 128 MiB.
        assert growth < size_mib / 4
    finally:
        assert daemon.stop() == 0, daemon.log

    stored = Path(state[1])
    assert np.array_equal(np.frombuffer(dcmread(stored).PixelData, dtype=np.uint16), pixels), (
        "the stored pixel data differ from what was sent"
    )
    incoming = tmp_path / "state" / "spool" / "incoming"
    assert [path for path in incoming.rglob("*") if path.is_file()] == []


def test_the_file_of_an_aborted_transfer_is_removed_once_stale(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    large = _large_image(tmp_path, np.zeros(SIDE * SIDE, dtype=np.uint16))
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    incoming = Spool(tmp_path / "state" / "spool").incoming
    try:
        scanner = subprocess.Popen(
            daemon.storescu_command([large]),
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(incoming.glob(RECEIVING_PATTERN)):
            time.sleep(0.01)
        scanner.kill()  # the association drops mid-transfer
        scanner.wait()
        time.sleep(2)
        # pynetdicom leaves the half-received file behind.
        (left,) = list(incoming.glob(RECEIVING_PATTERN))
        fresh = incoming / "tmpfresh.dcm"
        fresh.write_bytes(b"a transfer still in progress")
        an_hour_and_more_ago = time.time() - STALE_SECONDS - 60
        os.utime(left, (an_hour_and_more_ago, an_hour_and_more_ago))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and left.exists():
            time.sleep(0.2)
        assert not left.exists(), daemon.log
        assert fresh.exists()
        # Removed first, logged just after: wait for the line, not a fixed time.
        daemon.wait_for_log("Removed 1 file(s) of transfers that were aborted")
        echo = run_tool(
            ["echoscu", "-aet", "SCANNER", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)]
        )
        assert echo.returncode == 0
    finally:
        assert daemon.stop() == 0, daemon.log
    assert daemon.database().execute("select count(*) from instances").fetchone() == (0,)
