"""Coded vocabulary: modalities, referral categories and their codes.

Every standard code here was checked, none invented:

- In PS3.16 as shipped with pydicom (``pydicom.sr.codedict``): SCT 17621005
  Normal, SCT 103391001 Urgent, SCT 413815006 Chest imaging; DCM 121071
  Finding and 121075 Recommendation (used by ``dicom_io.sr``).
  ``tests/test_codes.py`` re-checks these against pydicom.
- SNOMED CT concepts not in PS3.16, checked against public terminology
  releases and clinical systems (OMOP vocabulary, OpenEyes, FHIR value
  sets): 75971007 Choroidal neovascularization, 312912001 Diabetic macular
  edema, 53084003 Bacterial pneumonia, 75570004 Viral pneumonia, 233604007
  Pneumonia, 50811001 Routine (qualifier value).
- Drusen of the macula has no SNOMED CT concept (33629003 is drusen of the
  optic disc); ICD-10-CM H35.36 is used, scheme designator I10C (PS3.16 8).

"Observation" and "supportive care" as referral outcomes and the OCT
triage procedure have no standard code; they use the private scheme
``99DCMTRIAGE`` (PS3.3 8.2: private schemes start with "99"), declared in the
SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from domain.triage import Referral, TriageModality

PRIVATE_SCHEME = "99DCMTRIAGE"


FINDING_CODES: dict[str, Code] = {
    "CNV": Code("75971007", "SCT", "Choroidal neovascularization"),
    "DME": Code("312912001", "SCT", "Macular edema due to diabetes mellitus"),
    "DRUSEN": Code("H35.36", "I10C", "Drusen (degenerative) of macula"),
    "NORMAL": Code("17621005", "SCT", "Normal"),
    "BACTERIA": Code("53084003", "SCT", "Bacterial pneumonia"),
    "VIRUS": Code("75570004", "SCT", "Viral pneumonia"),
    "PNEUMONIA": Code("233604007", "SCT", "Pneumonia"),
}

REFERRAL_CODES: dict[Referral, Code] = {
    Referral.URGENT: Code("103391001", "SCT", "Urgent"),
    Referral.ROUTINE: Code("50811001", "SCT", "Routine"),
    Referral.SUPPORTIVE_CARE: Code("SUPPORTIVE-CARE", PRIVATE_SCHEME, "Supportive care"),
    Referral.OBSERVATION: Code("OBSERVATION", PRIVATE_SCHEME, "Observation"),
}

PROCEDURE_CODES: dict[TriageModality, Code] = {
    TriageModality.OCT: Code("RETINAL-OCT-TRIAGE", PRIVATE_SCHEME, "Retinal OCT triage"),
    TriageModality.CXR: Code("413815006", "SCT", "Chest imaging"),
}
