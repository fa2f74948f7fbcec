"""The real daemon under the shapes of real traffic (``tests/traffic.py``), at a small size.

Each test holds the invariants a hospital relies on: every acknowledged
image is stored and in its study's latest SR, every latest SR reached the
PACS, nobody appears under someone else's name. ``bench/traffic.py`` runs
the same generator larger.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread

from tests import peers
from tests.peers import Orthanc, SilentPeer, TriageDaemon
from tests.traffic import (
    PlannedStudy,
    check_invariants,
    leave_out,
    phantom_pool,
    plan_studies,
    send_in_parallel,
    study_batches,
    wait_until_reported,
)

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def oct_pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return phantom_pool(tmp_path_factory.mktemp("pool"), "oct", 3, seed=211)


def _daemon(tmp_path: Path, models: dict[str, Path], pacs: Orthanc, **env: str) -> TriageDaemon:
    destinations = [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}]
    return TriageDaemon(
        tmp_path / "state",
        models,
        TRIAGE_DESTINATIONS=json.dumps(destinations),
        TRIAGE_DICOM_MAX_ASSOCIATIONS="40",
        **env,
    )


@pytest.fixture
def pacs_and_daemon(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> Iterator[tuple[Orthanc, TriageDaemon]]:
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = _daemon(tmp_path, model_dirs, pacs)
    pacs.start(triage_port=daemon.port)
    daemon.start()
    try:
        yield pacs, daemon
    finally:
        code = daemon.stop()
        pacs.stop()
        assert code == 0, daemon.log


def test_one_study_over_parallel_associations(
    tmp_path: Path, oct_pool: list[Path], pacs_and_daemon: tuple[Orthanc, TriageDaemon]
) -> None:
    """Every image of new studies over its own association, all at once: none lost."""
    pacs, daemon = pacs_and_daemon
    studies: list[PlannedStudy] = plan_studies(
        oct_pool, tmp_path / "traffic", studies=6, images_per_study=4, seed=1
    )
    acknowledged = send_in_parallel(daemon, study_batches(studies), parallel=24)
    findings = wait_until_reported(daemon, studies, acknowledged, pacs, timeout=120)
    print("\n" + findings.summary())
    assert findings.acknowledged == 24, daemon.log
    assert findings.held, f"{findings}\n{daemon.log}"
    assert "the first copy is kept" not in daemon.log


def test_a_sloppy_device_stops_no_report(
    tmp_path: Path, oct_pool: list[Path], pacs_and_daemon: tuple[Orthanc, TriageDaemon]
) -> None:
    """A study without type 2 attributes, then an over-long UID, then ordinary studies.

    The sloppy study is reported with empty values; the over-long UID is
    refused before it is acknowledged; every study after them is reported.
    """
    pacs, daemon = pacs_and_daemon
    sloppy, *ordinary = plan_studies(
        oct_pool, tmp_path / "traffic", studies=4, images_per_study=2, seed=2
    )
    leave_out(sloppy)
    (bad_uid,) = plan_studies(oct_pool, tmp_path / "bad", studies=1, images_per_study=1, seed=3)
    image = bad_uid.images[0]
    dataset = dcmread(image.path)
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498." + "1" * 40  # 66 characters
    settings = pydicom.config.settings
    mode, settings.writing_validation_mode = settings.writing_validation_mode, pydicom.config.WARN
    try:
        dataset.save_as(image.path, enforce_file_format=True)
    finally:
        settings.writing_validation_mode = mode

    assert send_in_parallel(daemon, study_batches([bad_uid])) == set()
    acknowledged = send_in_parallel(daemon, study_batches([sloppy]))
    acknowledged |= send_in_parallel(daemon, study_batches(ordinary))
    findings = wait_until_reported(daemon, [sloppy, *ordinary], acknowledged, pacs, timeout=90)
    print("\n" + findings.summary())
    assert findings.acknowledged == 8, daemon.log
    assert findings.held, f"{findings}\n{daemon.log}"
    quarantined = list((daemon.state_dir / "spool" / "quarantine").glob("*.json"))
    assert any("Series Instance UID" in note.read_text() for note in quarantined)


def test_a_silent_pacs_holds_back_no_other_destination(
    tmp_path: Path, oct_pool: list[Path], model_dirs: dict[str, Path]
) -> None:
    """One destination accepts TCP and never answers; the other gets every SR meanwhile.

    Before each destination had its own worker, deliveries went one after
    another in one thread, so each attempt at the silent one (an ACSE
    timeout) held up the PACS behind it.
    """
    silent = SilentPeer()
    pacs = Orthanc(tmp_path / "orthanc")
    destinations = [
        {"ae_title": "SILENT", "host": "127.0.0.1", "port": silent.port},
        {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port},
    ]
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_DESTINATIONS=json.dumps(destinations),
        TRIAGE_DELIVERY_RETRY_SCHEDULE="5x1s",
    )
    studies = plan_studies(oct_pool, tmp_path / "traffic", studies=4, images_per_study=1, seed=4)
    silent.start()
    pacs.start(triage_port=daemon.port)
    daemon.start()
    try:
        acknowledged = send_in_parallel(daemon, study_batches(studies, per_image=False))
        database = daemon.database()
        deadline = time.monotonic() + 120
        orthanc_done = (
            "select count(*) from deliveries where ae_title = 'ORTHANC' and state = 'delivered'"
        )
        while database.execute(orthanc_done).fetchone() != (len(studies),):
            assert time.monotonic() < deadline, daemon.log
            time.sleep(0.2)
        # Attempts at the silent destination that had finished by then: each
        # waits out the association timeout (15 s), so at most the first.
        finished = database.execute(
            "select count(*) from deliveries where ae_title = 'SILENT' and last_error != ''"
        ).fetchone()
        assert finished is not None and finished[0] <= 1, daemon.log
        assert silent.accepted >= 1
        findings = check_invariants(daemon, studies, acknowledged, pacs)
        # Every SR is in the PACS; the silent destination's copies are still due.
        assert not findings.lost and not findings.missing_from_latest_sr
        assert not findings.latest_sr_not_in_pacs and not findings.wrong_name
        status = json.loads(daemon.triage("status", "--json", check=False).stdout)
        assert status["healthy"], status
    finally:
        code = daemon.stop()
        pacs.stop()
        silent.stop()
        assert code == 0, daemon.log


@pytest.mark.skipif(
    os.environ.get("TRIAGE_TEST_DATABASE") != "postgresql",
    reason="restarts the PostgreSQL server (make test runs this on it)",
)
def test_a_database_restart_loses_nothing(
    tmp_path: Path, oct_pool: list[Path], pacs_and_daemon: tuple[Orthanc, TriageDaemon]
) -> None:
    """PostgreSQL stops mid-run and comes back: refused while away, nothing lost, no restart.

    Then the daemon is started while the database is down: it waits for it
    instead of exiting with a status systemd would not restart.
    """
    pacs, daemon = pacs_and_daemon
    server = peers.POSTGRES_SERVER[0]
    before, during = (
        plan_studies(oct_pool, tmp_path / name, studies=3, images_per_study=2, seed=seed)
        for name, seed in (("before", 5), ("during", 6))
    )
    acknowledged = send_in_parallel(daemon, study_batches(before))
    server.pause()
    try:
        refused = send_in_parallel(daemon, study_batches(during))
        assert refused == set(), "acknowledged while the database was away"
        assert "the database is unavailable" in daemon.log
        time.sleep(2)  # the workers' rounds fail meanwhile; the daemon must stay up
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log
        status = json.loads(daemon.triage("status", "--json", check=False).stdout)
        assert status["status"]["database"] == "unavailable", status
    finally:
        server.resume()
    acknowledged |= send_in_parallel(daemon, study_batches(during))  # the scanner retries
    findings = wait_until_reported(daemon, [*before, *during], acknowledged, pacs, timeout=120)
    print("\n" + findings.summary())
    assert findings.acknowledged == 12, daemon.log
    assert findings.held, f"{findings}\n{daemon.log}"
    assert "systemd restarts" not in daemon.log

    assert daemon.stop() == 0, daemon.log
    server.pause()
    threading.Timer(3.0, server.resume).start()
    daemon.lines.clear()
    daemon.start(upgrade=False)  # returns once it is ready, after the database is back
    assert "waiting for it" in daemon.log, daemon.log
