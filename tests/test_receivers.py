"""Receiver processes (``[dicom] receivers``): they share the DICOM port, a
kill -9 of one loses nothing it acknowledged, and a drain stops them all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, dcmtk_env, free_port
from tests.traffic import acknowledged_files

pytestmark = pytest.mark.network

RECEIVERS = 3  # the daemon's own listener and two receiver processes


def _receiver_pids(daemon: TriageDaemon, count: int) -> list[int]:
    """The receiver processes' pids from the status file, once ``count`` run."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = json.loads(daemon.triage("status", "--json").stdout)["status"] or {}
        pids = status.get("receiver_pids", [])
        if len(pids) == count and all(Path(f"/proc/{pid}").exists() for pid in pids):
            return [int(pid) for pid in pids]
        time.sleep(0.3)
    raise AssertionError(daemon.log)


def _push(daemon: TriageDaemon, files: list[Path], senders: int) -> list[subprocess.Popen[str]]:
    """Each sender its own association (and source port) with every senders-th file."""
    return [
        subprocess.Popen(
            daemon.storescu_command(files[n::senders], "-v"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dcmtk_env(),
        )
        for n in range(senders)
    ]


def _received_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as page:
        text = page.read().decode()
    for line in text.splitlines():
        if line.startswith('triage_instances_received_total{outcome="success"}'):
            return float(line.split()[-1])
    raise AssertionError(text)


def test_receivers_share_the_port_lose_nothing_in_a_crash_and_drain(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    files = sorted(write_dicom_studies("oct", tmp_path / "src", 16, seed=141).rglob("*.dcm"))
    uid_of = {str(f): str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    first, second = files[:16], files[16:]
    metrics_port = free_port()
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DICOM_RECEIVERS=str(RECEIVERS),
        TRIAGE_METRICS_PORT=str(metrics_port),
    )
    daemon.start()
    every_pid: set[int] = set()
    try:
        pids = _receiver_pids(daemon, RECEIVERS - 1)
        every_pid |= set(pids)
        assert f"receiver processes on the same port: pids {pids[0]}, {pids[1]}" in (
            daemon.triage("status").stdout
        )

        # One association per sender, spread by the kernel over the processes.
        senders = _push(daemon, first, 12)
        outs = [s.communicate(timeout=120)[0] for s in senders]
        assert all(sender.returncode == 0 for sender in senders), "\n".join(outs) + daemon.log
        stored_by_receivers = [
            line for line in daemon.lines if "[receiver-" in line and "Stored instance" in line
        ]
        print(f"\nof {len(first)} instances, receiver processes stored {len(stored_by_receivers)}")
        assert stored_by_receivers, "no association reached a receiver process"
        daemon.wait_for_reported_studies(len(first), timeout=90)
        # The endpoint adds up what every process counted.
        assert _received_metric(metrics_port) == len(first)

        # kill -9 a receiver in the middle of a burst: the first that stores
        # one of the burst's instances, with several more on its association.
        burst_start = len(daemon.lines)
        senders = _push(daemon, second, 6)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            for line in daemon.lines[burst_start:]:
                if found := re.search(r"\[receiver-(\d)\].*Stored instance", line):
                    victim = int(found.group(1))
                    break
            time.sleep(0.01)
        assert victim is not None, "no association of the burst reached a receiver process"
        os.kill(pids[victim - 1], signal.SIGKILL)
        outputs = [sender.communicate(timeout=120)[0] for sender in senders]
        acknowledged = {uid_of[f] for output in outputs for f in acknowledged_files(output)}
        database = daemon.database()
        present = {uid for (uid,) in database.execute("select sop_instance_uid from instances")}
        lost = acknowledged - present - {uid_of[str(f)] for f in first}
        print(f"pushed {len(second)}, acknowledged {len(acknowledged)}, lost {len(lost)}")
        assert len(acknowledged) < len(second), "the kill did not land mid-burst"
        assert lost == set()

        # Another receiver takes the dead one's place; the daemon stays up.
        daemon.wait_for_log(f"Receiver process {victim} (pid")
        replaced = _receiver_pids(daemon, RECEIVERS - 1)
        assert pids[victim - 1] not in replaced
        every_pid |= set(replaced)
        assert daemon.process is not None and daemon.process.poll() is None

        # The scanner sends again what was not acknowledged; nothing doubles.
        resend = [f for f in second if uid_of[str(f)] not in acknowledged]
        if resend:
            assert daemon.storescu(resend).returncode == 0
        daemon.wait_for_reported_studies(len(files), timeout=90)
        assert database.execute("select count(*) from instances").fetchone() == (len(files),)
    finally:
        assert daemon.stop() == 0, daemon.log
    # The drain stopped every receiver process, the replacement included.
    assert [pid for pid in every_pid if Path(f"/proc/{pid}").exists()] == []
    assert "did not stop in time" not in daemon.log
