"""A second copy of a SOP Instance UID under each duplicate policy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon

pytestmark = pytest.mark.network


def _wait_for(daemon: TriageDaemon, statement: str, expected: object, timeout: float = 60) -> None:
    database = daemon.database()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if database.execute(statement).fetchall() == expected:
            return
        time.sleep(0.3)
    raise AssertionError(
        f"{statement} never gave {expected}: {database.execute(statement).fetchall()}\n{daemon.log}"
    )


def test_replace_if_different(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    from daemon.pipeline import classify_file
    from model_runtime.classifier import Classifier

    root = write_dicom_studies("oct", tmp_path / "src", 2, seed=95)
    truth = json.loads((root / "lesions.json").read_text())
    cnv = root / next(rel for rel, rec in truth.items() if rec["label"] == "CNV")
    # The replacement's pixels must get another label from the model than the
    # first copy's, or the test could not tell a re-triage from none.
    classifier = Classifier(model_dirs["oct"], "cpu")
    first_label = classify_file(cnv, classifier).label
    labels = {
        rel: classify_file(root / rel, classifier).label
        for rel, rec in truth.items()
        if rec["label"] != "CNV"
    }
    other = next(rel for rel, label in labels.items() if label != first_label)
    normal, new_label = root / other, labels[other]
    corrected = dcmread(cnv)
    corrected.PixelData = dcmread(normal).PixelData  # same UIDs, different content
    corrected_path = tmp_path / "corrected.dcm"
    corrected.save_as(corrected_path, enforce_file_format=True)

    daemon = TriageDaemon(
        tmp_path / "state", model_dirs, TRIAGE_STORAGE_DUPLICATE_POLICY="replace_if_different"
    )
    daemon.start()
    try:
        assert daemon.storescu([cnv]).returncode == 0
        _wait_for(daemon, "select label from study_results", [(first_label,)])
        _wait_for(daemon, "select count(*) from reports", [(1,)])
        assert daemon.storescu([cnv]).returncode == 0  # identical copy: nothing changes
        assert daemon.storescu([corrected_path]).returncode == 0
        _wait_for(daemon, "select label from study_results", [(new_label,)])
        _wait_for(daemon, "select count(*) from reports", [(2,)])
        rows = daemon.database().execute("select count(*) from instance_results").fetchall()
        assert rows == [(1,)]  # the result was replaced, not duplicated
        files = list((tmp_path / "state" / "spool" / "instances").rglob("*.dcm"))
        assert len(files) == 1
        assert dcmread(files[0]).PixelData == corrected.PixelData
    finally:
        assert daemon.stop() == 0, daemon.log
