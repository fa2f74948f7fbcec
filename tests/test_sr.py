"""Every SR round-trips and passes dciodvfy and dcentvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.sr import AlgorithmInfo, ImageTriage, build_triage_report
from domain.triage import Referral, TriageModality
from phantoms.files import write_dicom_studies

ALGORITHM = AlgorithmInfo("test-model", "1.2.3", "ab" * 32, "dicom-triage test")


def _validate(path: Path) -> str:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == [], result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("modality", "label", "referral"),
    [
        ("oct", "CNV", Referral.URGENT),
        ("oct", "DRUSEN", Referral.ROUTINE),
        ("cxr", "VIRUS", Referral.SUPPORTIVE_CARE),
    ],
)
def test_report_validates_and_round_trips(
    tmp_path: Path, modality: str, label: str, referral: Referral
) -> None:
    root = write_dicom_studies(modality, tmp_path / "src", 1, seed=5)
    source_path = sorted(root.rglob("*.dcm"))[0]
    source = dcmread(source_path, stop_before_pixels=True)
    frame = 3 if modality == "oct" else None
    report = build_triage_report(
        TriageModality(modality),
        label,
        referral,
        [ImageTriage(source, label, referral, {label: 0.9, "NORMAL": 0.1}, frame)],
        ALGORITHM,
    )
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    output = _validate(path)
    assert "Comprehensive3DSR" in output

    consistency = subprocess.run(
        ["dcentvfy", str(source_path), str(path)], capture_output=True, text=True, timeout=60
    )
    inconsistent = [line for line in consistency.stderr.splitlines() if line.startswith("Error")]
    assert inconsistent == [], consistency.stderr

    back = dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == source.PatientID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SeriesDescription == "AI triage report"
    assert back.VerificationFlag == "UNVERIFIED"
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=True)
    assert "Recommendation" in dump.stdout
    assert "Probability of" in dump.stdout
    assert ALGORITHM.device_uid in dump.stdout


def test_device_uid_follows_the_model_hash() -> None:
    other = AlgorithmInfo("test-model", "1.2.3", "cd" * 32, "dicom-triage test")
    assert ALGORITHM.device_uid != other.device_uid
    assert ALGORITHM.device_uid.startswith("2.25.")
    assert len(ALGORITHM.device_uid) <= 64
