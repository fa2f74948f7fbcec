"""docs/conformance.md stays true: what it lists is what the daemon negotiates."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.config import DicomSettings
from daemon.scp import make_acceptor
from dicom_io.status import Status

DOCUMENT = (Path(__file__).resolve().parent.parent / "docs" / "conformance.md").read_text()
UID = re.compile(r"\b1\.2\.840\.10008(?:\.\d+)+\b")


def _block(name: str) -> str:
    match = re.search(
        rf"<!-- conformance:{name} -->(.*?)<!-- /conformance:{name} -->", DOCUMENT, re.S
    )
    assert match, f"conformance.md has no {name} block"
    return match.group(1)


def _uids(name: str) -> list[str]:
    return UID.findall(_block(name))


def test_sop_classes_and_transfer_syntaxes_match_the_document() -> None:
    ae = make_acceptor(DicomSettings())
    negotiated = {str(c.abstract_syntax): list(c.transfer_syntax) for c in ae.supported_contexts}
    assert set(negotiated) == set(_uids("scp"))
    storage_ts = _uids("storage-ts")
    other_ts = _uids("other-ts")
    for abstract_syntax, syntaxes in negotiated.items():
        if abstract_syntax in ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.31"):
            assert sorted(syntaxes) == sorted(other_ts), abstract_syntax
        else:
            # Same syntaxes, in the documented order of preference.
            assert syntaxes == storage_ts, abstract_syntax


def test_every_status_is_documented() -> None:
    documented = {
        int(code, 16) for code in re.findall(r"\|\s*0x([0-9A-F]{4})\s*\|", _block("statuses"))
    }
    assert documented == {int(status) for status in Status}
