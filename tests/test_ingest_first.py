"""Ingest is not starved by triage: while a burst arrives, triage waits for it.

An ordering check, not a timing: images pushed over parallel associations
are all recorded before triage takes the cores, the GIL and the database's
write lock from the C-STORE handlers (``daemon/ingest_priority.py``). With
``ingest_priority_hold_seconds = 0`` (the path before the guard) 141 of
the 160 images were triaged while the burst still arrived, and this test
failed; with the guard, none.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, dcmtk_env

pytestmark = pytest.mark.network

SENDERS = 4
IMAGES = 160


def _as_datetime(value: object) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def test_a_burst_is_recorded_before_it_is_triaged(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    files = sorted(write_dicom_studies("oct", tmp_path / "src", 40, seed=211).rglob("*.dcm"))
    files = files[:IMAGES]
    # A hold longer than the burst: triage may not start until it has ended.
    daemon = TriageDaemon(
        tmp_path / "state", model_dirs, TRIAGE_DICOM_INGEST_PRIORITY_HOLD_SECONDS="20"
    )
    daemon.start()
    try:
        senders = [
            subprocess.Popen(
                daemon.storescu_command(files[n::SENDERS]),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=dcmtk_env(),
            )
            for n in range(SENDERS)
        ]
        for sender in senders:
            output = sender.communicate(timeout=120)[0]
            assert sender.returncode == 0, output
        database = daemon.database()
        studies = database.execute("select count(*) from studies").fetchall()[0][0]
        daemon.wait_for_reported_studies(studies, timeout=120)
        received = database.execute("select received_at from instances")
        last_received = max(_as_datetime(value) for (value,) in received)
        triaged = [
            _as_datetime(value)
            for (value,) in database.execute("select created_at from instance_results")
        ]
        assert len(triaged) == len(files)
        early = sum(1 for created in triaged if created < last_received)
        print(f"\n{early} of {len(files)} images triaged before the burst's last one was recorded")
        # Triage may slip into a pause of every sender at once (a storescu
        # starting late, say): a few, never the burst.
        assert early <= len(files) // 8, daemon.log
    finally:
        daemon.stop()
