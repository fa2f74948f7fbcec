"""STOW-RS into the real daemon, from a real DICOMweb client
(``dicomweb-client``): stored through the C-STORE path and triaged, a
per-instance answer when some are refused, duplicates, and what is
refused before anything is read."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom import dcmread
from pydicom.dataset import Dataset
from requests.exceptions import HTTPError

from phantoms.files import write_dicom_studies
from tests.peers import WEB_PASSWORD, WEB_USER, TriageDaemon

pytestmark = pytest.mark.network

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _client(daemon: TriageDaemon) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{daemon.web_url}/dicomweb",
        session=create_session_from_user_pass(WEB_USER, WEB_PASSWORD),
    )


def _phantoms(tmp_path: Path) -> list[Dataset]:
    datasets = []
    for modality, seed in (("oct", 51), ("cxr", 52)):
        root = write_dicom_studies(modality, tmp_path / "scanner", 1, seed=seed)
        truth = json.loads((root / "lesions.json").read_text())
        datasets += [dcmread(root / relative) for relative in sorted(truth)]
    return datasets


def _uids(answer: Dataset, keyword: str) -> dict[str, int | None]:
    """SOP Instance UID: FailureReason (or None) of each item of a sequence."""
    return {
        str(item.ReferencedSOPInstanceUID): item.get("FailureReason")
        for item in answer.get(keyword, [])
    }


def test_stow_rs_stores_through_the_c_store_path_and_answers_per_instance(
    tmp_path: Path, web_daemon: TriageDaemon
) -> None:
    datasets = _phantoms(tmp_path)
    client = _client(web_daemon)

    answer = client.store_instances(datasets)
    assert set(_uids(answer, "ReferencedSOPSequence")) == {str(d.SOPInstanceUID) for d in datasets}
    assert "FailedSOPSequence" not in answer
    # The same path as C-STORE: recorded, triaged, reported.
    web_daemon.wait_for_reported_studies(len(datasets), timeout=120)
    view = web_daemon.database()
    rows = view.execute("select calling_ae_title, count(*) from instances group by 1").fetchall()
    assert [tuple(r) for r in rows] == [("STOW-RS", len(datasets))]

    # Sent again: duplicates, acknowledged and not stored twice.
    again = client.store_instances(datasets[:2])
    assert len(_uids(again, "ReferencedSOPSequence")) == 2
    assert view.execute("select count(*) from instances").fetchone()[0] == len(datasets)

    # One good, one without pixel data, one of a SOP class not triaged here.
    fresh = _phantoms(tmp_path / "more")
    good, no_pixels, other_class = fresh[0], fresh[1], fresh[2]
    del no_pixels.PixelData
    other_class.SOPClassUID = CT_IMAGE_STORAGE
    other_class.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    mixed = client.store_instances([good, no_pixels, other_class])  # 202
    assert set(_uids(mixed, "ReferencedSOPSequence")) == {str(good.SOPInstanceUID)}
    assert _uids(mixed, "FailedSOPSequence") == {
        str(no_pixels.SOPInstanceUID): 0xC001,
        str(other_class.SOPInstanceUID): 0x0122,
    }
    quarantined = list((web_daemon.state_dir / "spool" / "quarantine").glob("*.json"))
    assert quarantined, "the refused dataset is kept with its reason"
    # Nothing is left of the request's part files.
    assert not list((web_daemon.state_dir / "spool" / "incoming").rglob("stow-*"))

    # None stored: 409.
    with pytest.raises(HTTPError) as refused:
        client.store_instances([no_pixels])
    assert refused.value.response.status_code == 409

    # Audited with the user; the audit row names the study, the log does not.
    detail = view.execute(
        "select detail from audit_events where event = 'instances-stored' and detail like 'STOW%'"
    ).fetchall()
    assert detail and all(f"user={WEB_USER}" in d for (d,) in detail)
    assert str(good.PatientName) not in web_daemon.log


def test_stow_rs_refuses_before_reading(web_daemon: TriageDaemon) -> None:
    url = f"{web_daemon.web_url}/dicomweb/studies"
    related = 'multipart/related; type="application/dicom"; boundary=b0'
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b0--\r\n"
    assert httpx.post(url, content=body, headers={"content-type": related}).status_code == 401
    auth = (WEB_USER, WEB_PASSWORD)
    for content_type, status in (
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=b0', 415),
        ('multipart/related; type="application/dicom"', 400),
        (related, 409),  # a part that is not a DICOM file: refused, with its reason
    ):
        answer = httpx.post(url, content=body, headers={"content-type": content_type}, auth=auth)
        assert answer.status_code == status, (content_type, answer.text)
    truncated = body[:-8]
    answer = httpx.post(url, content=truncated, headers={"content-type": related}, auth=auth)
    assert answer.status_code == 400 and "ends inside" in answer.json()["error"]
