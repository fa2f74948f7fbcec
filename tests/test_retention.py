"""triage purge: images past retention leave the spool; results stay if configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon

pytestmark = pytest.mark.network


def test_purge_keeps_or_drops_results(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=98).rglob("*.dcm"))
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.report_and_stop(files)
    database = daemon.database()
    spool = tmp_path / "state" / "spool" / "instances"
    assert len(list(spool.rglob("*.dcm"))) == len(files)

    untouched = daemon.triage("purge", "--older-than", "1d").stdout
    assert untouched.startswith("0 studies retired")
    kept = daemon.triage("purge", "--older-than", "0s").stdout
    assert kept.startswith(f"{len(files)} studies retired, {len(files)} file(s) removed")
    assert list(spool.rglob("*.dcm")) == []
    assert database.execute("select count(*) from study_results").fetchone() == (len(files),)

    daemon.env["TRIAGE_RETENTION_KEEP_RESULTS"] = "false"
    dropped = daemon.triage("purge", "--older-than", "0s").stdout
    assert "results deleted" in dropped
    for table in ("studies", "instances", "reports", "patients", "study_results"):
        assert database.execute(f"select count(*) from {table}").fetchone() == (0,), table
