"""The C-STORE handler's header check, on bytes that a network peer could send."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread

from daemon.spool import Spool
from daemon.validate import WHOLE_READ_BYTES, parse_and_hash, parse_header
from dicom_io.status import Status
from domain.errors import IngestError
from phantoms.files import write_dicom_studies


@pytest.fixture(scope="module")
def phantom_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = write_dicom_studies("oct", tmp_path_factory.mktemp("oct"), 1, seed=9)
    return sorted(root.rglob("*.dcm"))[0].read_bytes()


def _uid(content: bytes) -> str:
    return str(dcmread(BytesIO(content), stop_before_pixels=True).SOPInstanceUID)


def test_valid_instance_passes(phantom_bytes: bytes) -> None:
    header = parse_header(phantom_bytes, _uid(phantom_bytes))
    assert header.Modality == "OPT"


def test_garbage_after_the_preamble_cannot_be_understood(phantom_bytes: bytes) -> None:
    header_length = phantom_bytes.index(b"\x08\x00\x05\x00")  # first dataset element
    garbage = phantom_bytes[:header_length] + b"\x13\x37" * 200
    with pytest.raises(IngestError) as caught:
        parse_header(garbage, "1.2.3")
    assert Status.CANNOT_UNDERSTAND <= caught.value.status <= 0xCFFF


def test_uid_mismatch_with_the_request(phantom_bytes: bytes) -> None:
    with pytest.raises(IngestError) as caught:
        parse_header(phantom_bytes, "1.2.3.4")
    assert caught.value.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_spool_writes_and_quarantines(tmp_path: Path, phantom_bytes: bytes) -> None:
    spool = Spool(tmp_path)
    first = spool.store(phantom_bytes, "1.2.3")
    second = spool.store(phantom_bytes, "1.2.3")
    assert first.path != second.path
    assert first.path.read_bytes() == phantom_bytes
    assert first.sha256 == second.sha256
    kept = spool.quarantine(b"junk", "Cannot parse the dataset", "SCANNER")
    assert kept.read_bytes() == b"junk"
    assert "Cannot parse" in kept.with_suffix(".json").read_text()
    assert list(spool.incoming.iterdir()) == []
    (spool.incoming / ".x.dcm.abc.part").write_bytes(b"half")
    (spool.incoming / "tmpa1b2c3.dcm").write_bytes(b"half a received dataset")
    other_node = Spool(tmp_path, node="other-host")
    (other_node.incoming / "tmpd4e5f6.dcm").write_bytes(b"in flight on another node")
    assert spool.remove_partial_writes() == 2
    assert list(spool.incoming.iterdir()) == []
    assert [p.name for p in other_node.incoming.iterdir()] == ["tmpd4e5f6.dcm"]


def test_an_over_long_uid_is_refused_before_it_is_acknowledged(phantom_bytes: bytes) -> None:
    dataset = dcmread(BytesIO(phantom_bytes))
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498." + "1" * 40  # 66 characters
    buffer = BytesIO()
    settings = pydicom.config.settings
    mode, settings.writing_validation_mode = settings.writing_validation_mode, pydicom.config.WARN
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    finally:
        settings.writing_validation_mode = mode
    with pytest.raises(IngestError) as caught:
        parse_header(buffer.getvalue(), _uid(phantom_bytes))
    assert caught.value.status == Status.CANNOT_UNDERSTAND
    assert "Series Instance UID is not a valid UID (66 characters" in caught.value.reason


def test_a_report_is_built_without_type2_attributes(phantom_bytes: bytes) -> None:
    """A device that leaves out type 2 attributes: the SR carries them empty."""
    from dicom_io.source import TYPE2_SOURCE_KEYWORDS
    from dicom_io.sr import AlgorithmInfo, ImageTriage, build_triage_report
    from domain.triage import Referral, TriageModality

    source = dcmread(BytesIO(phantom_bytes), stop_before_pixels=True)
    for keyword in TYPE2_SOURCE_KEYWORDS:
        del source[keyword]
    report = build_triage_report(
        modality=TriageModality.OCT,
        study_label="CNV",
        study_referral=Referral.URGENT,
        images=[ImageTriage(source, "CNV", Referral.URGENT, {"CNV": 0.9, "NORMAL": 0.1})],
        algorithm=AlgorithmInfo("m", "1", "ab" * 32, "dicom-triage test"),
    )
    assert report.PatientBirthDate == "" and report.PatientID == ""
    assert "PatientBirthDate" not in source  # the source header is left as it was


def _enlarged(content: bytes, size: int) -> bytes:
    """``content`` with its pixel data repeated to at least ``size`` bytes (more frames)."""
    dataset = dcmread(BytesIO(content))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    copies = size // len(dataset.PixelData) + 1
    dataset.PixelData = dataset.PixelData * copies
    dataset.NumberOfFrames = frames * copies
    out = BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_received_file_is_hashed_in_the_read_that_checks_it(
    tmp_path: Path, phantom_bytes: bytes, size: str
) -> None:
    """A small file is read whole, a large one in chunks past its deferred
    pixel data: either way the header and the SHA-256 are the file's own."""
    content = phantom_bytes if size == "small" else _enlarged(phantom_bytes, 2 * WHOLE_READ_BYTES)
    assert (len(content) <= WHOLE_READ_BYTES) == (size == "small")
    received = tmp_path / "tmp0001.dcm"
    received.write_bytes(content)
    expected = dcmread(BytesIO(content), stop_before_pixels=True)
    for source in (received, content):
        header, sha256 = parse_and_hash(source, _uid(content))
        assert sha256 == hashlib.sha256(content).hexdigest()
        assert header.SOPInstanceUID == expected.SOPInstanceUID
        assert header.Rows == expected.Rows
