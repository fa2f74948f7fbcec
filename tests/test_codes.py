"""Codes that PS3.16 defines must match pydicom's copy of PS3.16 exactly."""

from __future__ import annotations

from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes

from dicom_io.codes import FINDING_CODES, PRIVATE_SCHEME, PROCEDURE_CODES, REFERRAL_CODES
from domain.triage import Referral

IN_PS3_16 = {("SCT", "17621005"), ("SCT", "103391001"), ("SCT", "413815006")}


def _all_codes():
    yield from FINDING_CODES.values()
    yield from REFERRAL_CODES.values()
    yield from PROCEDURE_CODES.values()


def test_ps3_16_codes_exist_in_pydicom() -> None:
    for scheme, value in IN_PS3_16:
        assert any(value in entry for entry in concepts[scheme].values()), (scheme, value)
    assert codes.DCM.Finding.value == "121071"
    assert codes.DCM.Recommendation.value == "121075"


def test_every_code_is_standard_or_declared_private() -> None:
    for code in _all_codes():
        assert code.scheme_designator in ("SCT", "I10C", PRIVATE_SCHEME), code
        if code.scheme_designator == "SCT":
            assert code.value.isdigit(), code
    # Drusen of the optic disc (33629003) is not drusen of the macula.
    assert FINDING_CODES["DRUSEN"].value != "33629003"
    assert REFERRAL_CODES[Referral.URGENT].value == "103391001"
