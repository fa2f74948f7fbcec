"""The real daemon under the shapes of real traffic (``tests/traffic.py``), at a small size.

Each test holds the invariants a hospital relies on: every acknowledged
image is stored and in its study's latest SR, every latest SR reached the
PACS, nobody appears under someone else's name. ``bench/traffic.py`` runs
the same generator larger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread

from tests.peers import Orthanc, TriageDaemon
from tests.traffic import (
    PlannedStudy,
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
