"""kill -9 in the middle of parallel pushes loses nothing and reports nothing twice."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, dcmtk_env
from tests.traffic import acknowledged_files

pytestmark = pytest.mark.network

SENDERS = 3
STUDIES_PER_CLASS = 6  # 4 OCT classes x 6 = 24 single-instance studies


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_stop_mid_burst(
    tmp_path: Path, model_dirs: dict[str, Path], stop_signal: signal.Signals
) -> None:
    """SIGKILL: nothing acknowledged is lost. SIGTERM: the same, and a clean exit."""
    files = sorted(
        write_dicom_studies("oct", tmp_path / "src", STUDIES_PER_CLASS, seed=93).rglob("*.dcm")
    )
    uid_of = {str(f): str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    senders = [
        subprocess.Popen(
            [
                "storescu",
                "-v",
                "-aet",
                f"SCANNER{n}",
                "-aec",
                "TRIAGE",
                "127.0.0.1",
                str(daemon.port),
                *map(str, files[n::SENDERS]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dcmtk_env(),
        )
        for n in range(SENDERS)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.log.count("Stored instance") < len(files) // 3:
        time.sleep(0.01)
    assert daemon.process is not None
    daemon.process.send_signal(stop_signal)
    exit_code = daemon.process.wait(timeout=60)
    if stop_signal == signal.SIGTERM:
        assert exit_code == 0, daemon.log  # drained: open associations finished first
    outputs = [sender.communicate(timeout=60)[0] for sender in senders]
    acknowledged = {uid_of[f] for output in outputs for f in acknowledged_files(output)}
    print(f"\npushed {len(files)}, acknowledged before {stop_signal.name}: {len(acknowledged)}")
    assert len(acknowledged) > 0, "nothing was acknowledged"
    if stop_signal == signal.SIGKILL:
        assert len(acknowledged) < len(files), "the kill did not land mid-burst"

    daemon.start()
    try:
        database = daemon.database()

        def reported() -> set[str]:
            return {
                uid
                for (uid,) in database.execute(
                    "select distinct i.sop_instance_uid from instances i "
                    "join reports r on r.study_fk = i.study_fk"
                )
            }

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not acknowledged <= reported():
            time.sleep(0.3)
        present = {uid for (uid,) in database.execute("select sop_instance_uid from instances")}
        lost = acknowledged - present
        assert lost == set(), f"{len(lost)} acknowledged instances lost"
        assert acknowledged <= reported(), daemon.log
        states = dict(database.execute("select sop_instance_uid, state from instances").fetchall())
        assert all(states[uid] == "triaged" for uid in acknowledged)

        # The scanner sends again what was not acknowledged; nothing doubles.
        resend = [f for f in files if uid_of[str(f)] not in acknowledged]
        if resend:
            assert daemon.storescu(resend).returncode == 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(reported()) < len(files):
            time.sleep(0.3)
        assert len(reported()) == len(files)
        duplicates = database.execute(
            "select study_fk, count(*) from reports group by study_fk having count(*) > 1"
        ).fetchall()
        assert duplicates == []
        assert database.execute("select count(*) from instances").fetchone() == (len(files),)
        print(f"instances lost: {len(lost)}, SRs duplicated: {len(duplicates)}")
    finally:
        assert daemon.stop() == 0, daemon.log
