"""Every accepted transfer syntax, sent by storescu with the matching proposal.

Files are encoded by dcmtk (dcmconv, dcmcjpeg, dcmcjpls, dcmcrle) or, for
JPEG 2000, by pydicom with the openjpeg plugin; the real chest CR of
pydicom-data (MONOCHROME1, 1955x1841, PixelSpacing 0) is sent in all three of
its forms.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEG2000Lossless, generate_uid

from daemon.pipeline import classify_file
from model_runtime.classifier import Classifier
from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon

pytestmark = pytest.mark.network


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    transfer_syntax: str
    proposal: str
    source: str  # "oct" (8-bit multi-frame) or "cxr" (12-bit DX)
    encoder: tuple[str, ...] | None  # a dcmtk command; None: pydicom J2K
    lossless: bool = True


CASES = [
    Case("implicit-le", "1.2.840.10008.1.2", "-xi", "cxr", ("dcmconv", "+ti")),
    Case("explicit-le", "1.2.840.10008.1.2.1", "-xe", "oct", ("dcmconv", "+te")),
    Case("deflated", "1.2.840.10008.1.2.1.99", "-xd", "cxr", ("dcmconv", "+td")),
    Case("big-endian", "1.2.840.10008.1.2.2", "-xb", "cxr", ("dcmconv", "+tb")),
    Case("jpeg-baseline", "1.2.840.10008.1.2.4.50", "-xy", "oct", ("dcmcjpeg", "+eb"), False),
    Case("jpeg-extended", "1.2.840.10008.1.2.4.51", "-xx", "cxr", ("dcmcjpeg", "+ee"), False),
    Case("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", "-xs", "oct", ("dcmcjpeg", "+e1")),
    Case("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", "-xt", "cxr", ("dcmcjpls", "+el")),
    Case("jpeg-ls-near", "1.2.840.10008.1.2.4.81", "-xu", "oct", ("dcmcjpls", "+en"), False),
    Case("j2k-lossless", JPEG2000Lossless, "-xv", "cxr", None),
    Case("j2k-lossy", JPEG2000, "-xw", "oct", None, False),
    Case("rle", "1.2.840.10008.1.2.5", "-xr", "oct", ("dcmcrle",)),
]


def _encode(case: Case, source: Path, target: Path) -> None:
    dataset = dcmread(source)
    # A new instance each time, so that no copy is a duplicate of another.
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if case.encoder is None:
        options = {} if case.lossless else {"j2k_cr": [10]}
        dataset.compress(case.transfer_syntax, encoding_plugin="pylibjpeg", **options)
        dataset.save_as(target, enforce_file_format=True)
        return
    plain = target.with_suffix(".plain.dcm")
    dataset.save_as(plain, enforce_file_format=True)
    subprocess.run([*case.encoder, str(plain), str(target)], check=True, capture_output=True)
    assert dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        case.transfer_syntax
    )


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("syntaxes")
    sources = {}
    for modality, seed in (("oct", 51), ("cxr", 52)):
        root = write_dicom_studies(modality, folder / "src", 1, seed=seed)
        truth = json.loads((root / "lesions.json").read_text())
        relative, record = sorted(truth.items())[0]
        sources[modality] = (root / relative, record["label"])
    files = {}
    for case in CASES:
        path, label = sources[case.source]
        target = folder / f"{case.name}.dcm"
        _encode(case, path, target)
        files[case.name] = (target, label)
    return files


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]
) -> Iterator[TriageDaemon]:
    process = TriageDaemon(tmp_path_factory.mktemp("state"), model_dirs)
    process.start()
    yield process
    assert process.stop() == 0, process.log


def _instance_row(daemon: TriageDaemon, sop_instance_uid: str, timeout: float = 60) -> tuple:
    database = daemon.database()
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = database.execute(
            "select i.state, i.transfer_syntax_uid, i.error, r.label, r.frame_number "
            "from instances i left join instance_results r on r.instance_fk = i.id "
            "where i.sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        if row and row[0] != "received":
            return row
        time.sleep(0.2)
    raise AssertionError(f"instance not triaged in time: {row}\n{daemon.log}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_transfer_syntax(case: Case, scanner: dict, daemon: TriageDaemon) -> None:
    path, label = scanner[case.name]
    sent = daemon.storescu([path], case.proposal)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    state, syntax, error, predicted, frame = _instance_row(daemon, uid)
    assert state == "triaged", error
    assert syntax == case.transfer_syntax  # stored as sent: never transcoded
    assert frame == (3 if case.source == "oct" else None)
    if case.lossless:
        assert predicted == label


@pytest.mark.parametrize(
    ("name", "proposal"),
    [("RG1_UNCR.dcm", "-xe"), ("RG1_J2KR.dcm", "-xv"), ("RG1_J2KI.dcm", "-xw")],
)
def test_real_chest_cr(
    name: str, proposal: str, daemon: TriageDaemon, tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    source = get_testdata_file(name, download=False)
    assert source is not None, f"pydicom-data lacks {name}"
    dataset = dcmread(source)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    assert [float(v) for v in dataset.PixelSpacing] == [0.0, 0.0]
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    path = tmp_path / name
    dataset.save_as(path, enforce_file_format=True)
    sent = daemon.storescu([path], proposal)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    state, syntax, error, predicted, _frame = _instance_row(daemon, str(dataset.SOPInstanceUID))
    assert state == "triaged", error
    assert syntax == str(dataset.file_meta.TransferSyntaxUID)
    # The daemon (decoding in its child, after the network) says what the
    # model says of the same file decoded here.
    expected = classify_file(path, Classifier(model_dirs["cxr"], "cpu")).label
    assert predicted == expected
    database = daemon.database()
    deadline = time.monotonic() + 30
    reported = None
    while time.monotonic() < deadline and not reported:
        reported = database.execute(
            "select r.id from reports r join studies s on s.id = r.study_fk "
            "where s.study_instance_uid = ?",
            (str(dataset.StudyInstanceUID),),
        ).fetchone()
        time.sleep(0.2)
    assert reported, daemon.log
