"""A large image is received into the spool as it arrives, not held in memory."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.phantom_files import write_dicom_studies
from tests.peers import TriageDaemon

pytestmark = pytest.mark.network

SIDE = 8192  # 8192 x 8192 x 16 bits: 128 MiB of pixel data


def _peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_large_image_is_stored_without_holding_it_in_memory(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    source = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=96).rglob("*.dcm"))[0]
    dataset = dcmread(source)
    pixels = (np.arange(SIDE * SIDE, dtype=np.uint32) % 4093).astype(np.uint16)
    dataset.Rows = dataset.Columns = SIDE
    dataset.PixelData = pixels.tobytes()
    # No model applies to a hand: the image is stored, then skipped without
    # being decoded, so the daemon's memory shows the receiving alone.
    dataset.BodyPartExamined = "HAND"
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    large = tmp_path / "large.dcm"
    dataset.save_as(large, enforce_file_format=True)
    del dataset
    size_mib = large.stat().st_size / 2**20

    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    assert daemon.process is not None
    database = daemon.database()
    try:
        before = _peak_memory_mib(daemon.process.pid)
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
        growth = _peak_memory_mib(daemon.process.pid) - before
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
