"""Patient data stays out of the logs above DEBUG, pydicom's warnings included."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from daemon.cli.process import configure_logging

# Not a valid UID: pydicom warns, quoting it (and UIDs identify a patient's study).
STUDY_UID = "1.2.826.999.PATIENT"


@pytest.fixture
def invalid_file(tmp_path: Path) -> Path:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = generate_uid()
    path = tmp_path / "invalid.dcm"
    dataset.save_as(path, enforce_file_format=True)
    # Append the element by hand: pydicom refuses to write an invalid UID.
    value = STUDY_UID.encode() + b"\x00"
    path.write_bytes(
        path.read_bytes() + b"\x20\x00\x0d\x00UI" + len(value).to_bytes(2, "little") + value
    )
    return path


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_pydicom_warnings_quote_values_only_when_debugging(
    invalid_file: Path, level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # not once per process: each case warns
            dataset = dcmread(invalid_file)
            assert str(dataset.StudyInstanceUID) == STUDY_UID  # reading it warns
    finally:
        logging.captureWarnings(False)
    captured = capsys.readouterr()
    everything = stream.getvalue() + captured.out + captured.err
    assert (STUDY_UID in everything) == (level == "DEBUG"), everything
