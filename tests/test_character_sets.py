"""Non-ASCII patient names survive input -> SR -> worklist answer."""

from __future__ import annotations

import json
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, run_tool

pytestmark = pytest.mark.network

NAMES = {
    "ISO_IR 100": "Müller^Jürgen",
    "ISO_IR 192": "Ødegård^Åsa Ελένη 山田",
}


def test_names_round_trip(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    root = write_dicom_studies("oct", tmp_path / "src", 2, seed=71)
    truth = json.loads((root / "lesions.json").read_text())
    urgent = [root / rel for rel, rec in sorted(truth.items()) if rec["label"] == "CNV"]
    files = {}
    for (charset, name), source in zip(NAMES.items(), urgent, strict=True):
        dataset = dcmread(source)
        dataset.SpecificCharacterSet = charset
        dataset.PatientName = name
        dataset.PatientID = f"CS{len(files)}"
        dataset.StudyInstanceUID = generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{len(files)}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files[str(dataset.StudyInstanceUID)] = (path, name)

    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    try:
        sent = daemon.storescu([p for p, _ in files.values()])
        assert sent.returncode == 0, sent.stderr
        database = daemon.database()
        deadline = time.monotonic() + 60
        reports: list = []
        while time.monotonic() < deadline and len(reports) < len(files):
            time.sleep(0.3)
            reports = database.execute(
                "select s.study_instance_uid, r.content from reports r "
                "join studies s on s.id = r.study_fk"
            ).fetchall()
        assert len(reports) == len(files), daemon.log
        for study_uid, content in reports:
            report_path = tmp_path / f"sr-{study_uid}.dcm"
            report_path.write_bytes(content)
            sr = dcmread(BytesIO(content))
            assert str(sr.PatientName) == files[study_uid][1]
            validation = run_tool(["dciodvfy", str(report_path)])
            errors = [x for x in validation.stderr.splitlines() if x.startswith("Error")]
            assert errors == [], validation.stderr

        answers = tmp_path / "answers"
        found = daemon.findscu_worklist(
            answers, "SpecificCharacterSet=ISO_IR 192", "PatientName=", "StudyInstanceUID="
        )
        assert found.returncode == 0, found.stderr
        answered = {
            str(r.StudyInstanceUID): str(r.PatientName)
            for r in (dcmread(p) for p in answers.glob("rsp*.dcm"))
        }
        assert answered == {uid: name for uid, (_path, name) in files.items()}
    finally:
        assert daemon.stop() == 0, daemon.log
