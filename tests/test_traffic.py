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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread

from tests import peers
from tests.peers import Orthanc, SilentPeer, TriageDaemon
from tests.traffic import (
    PlannedStudy,
    add_late_image,
    check_invariants,
    fill,
    leave_out,
    phantom_pool,
    plan_studies,
    send_in_parallel,
    small_disk,
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
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER="40",  # every sender here is 127.0.0.1
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

    def resume_once_waited_for() -> None:
        # The database comes back once the starting daemon has found it away
        # (not after a fixed delay, which a slow start outlasted on 2 cores).
        deadline = time.monotonic() + 60
        while "waiting for it" not in daemon.log and time.monotonic() < deadline:
            time.sleep(0.1)
        server.resume()

    daemon.lines.clear()
    resumer = threading.Thread(target=resume_once_waited_for, daemon=True)
    resumer.start()
    daemon.start(upgrade=False)  # returns once it is ready, after the database is back
    resumer.join()
    assert "waiting for it" in daemon.log, daemon.log


@pytest.fixture(scope="module")
def cxr_pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return phantom_pool(tmp_path_factory.mktemp("cxr-pool"), "cxr", 2, seed=212)


def test_mixed_traffic_with_faults(
    tmp_path: Path, oct_pool: list[Path], cxr_pool: list[Path], model_dirs: dict[str, Path]
) -> None:
    """Two scanners over parallel associations, duplicates, late images, a PACS that is
    down and comes back, a spool disk that fills up; every invariant holds."""
    pacs = Orthanc(tmp_path / "orthanc")
    with small_disk(tmp_path / "spool", "48m") as spool:
        if spool is None:
            pytest.skip("cannot mount a tmpfs here (make test runs as root)")
        daemon = _daemon(
            tmp_path,
            model_dirs,
            pacs,
            TRIAGE_STORAGE_SPOOL_DIR=str(spool),
            TRIAGE_STORAGE_MIN_FREE_BYTES="0",  # a real ENOSPC, not the watermark
            TRIAGE_STORAGE_RESERVE_BYTES_PER_ASSOCIATION="0",  # nor the reservation
            TRIAGE_DELIVERY_RETRY_SCHEDULE="100x1s",
        )
        octs = plan_studies(oct_pool, tmp_path / "oct", studies=4, images_per_study=4, seed=7)
        chests = plan_studies(
            cxr_pool, tmp_path / "cxr", studies=3, images_per_study=2, views=("PA", "LL"), seed=8
        )
        daemon.start()  # the PACS is down: nothing listens on its port yet
        try:
            with ThreadPoolExecutor(max_workers=2) as scanners:
                sent = [
                    scanners.submit(send_in_parallel, daemon, study_batches(s), ae, 8)
                    for s, ae in ((octs, "OCTSCANNER"), (chests, "DXROOM1"))
                ]
                acknowledged = set().union(*(f.result() for f in sent))
            # A router sends some images again.
            again = [study.images[0] for study in octs[:2]]
            assert send_in_parallel(daemon, [again]) == {i.sop_instance_uid for i in again}
            studies = [*octs, *chests]
            daemon.wait_for_reported_studies(len(studies), timeout=120)

            pacs.start(triage_port=daemon.port)  # the PACS is back
            late = [add_late_image(study, tmp_path / "late") for study in (octs[0], chests[0])]
            acknowledged |= send_in_parallel(daemon, [[image] for image in late])

            # The spool's disk fills up: what cannot be written is refused, not lost.
            filler = fill(spool, leave_bytes=600_000)
            extra = plan_studies(
                oct_pool, tmp_path / "extra", studies=2, images_per_study=3, seed=9
            )
            during = send_in_parallel(daemon, study_batches(extra))
            refused = sum(len(s.images) for s in extra) - len(during)
            filler.unlink()
            acknowledged |= during | send_in_parallel(daemon, study_batches(extra))
            studies += extra

            findings = wait_until_reported(daemon, studies, acknowledged, pacs, timeout=180)
            print(f"\n{findings.summary()}; refused while the disk was full: {refused}")
            assert refused > 0, "the disk never filled up"
            assert findings.acknowledged == sum(len(s.images) for s in studies)
            assert findings.held, f"{findings}\n{daemon.log}"
            superseding = daemon.database().execute(
                "select count(*) from reports where supersedes_fk is not null"
            )
            assert superseding.fetchone()[0] >= 2  # the late images' studies
            assert daemon.process is not None and daemon.process.poll() is None
            assert "systemd restarts" not in daemon.log
        finally:
            code = daemon.stop()
            pacs.stop()
        assert code == 0, daemon.log
