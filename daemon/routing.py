"""Which model triages an instance: by SOP class, Modality and Body Part Examined."""

from __future__ import annotations

from domain.triage import TriageModality

OCT_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

# The storage SOP classes accepted at association negotiation; any other is
# refused there, before a byte of pixel data is sent.
ACCEPTED_STORAGE_SOP_CLASSES = (
    OCT_STORAGE,
    CR_STORAGE,
    DX_PRESENTATION_STORAGE,
    DX_PROCESSING_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
)

_RADIOGRAPHY = (CR_STORAGE, DX_PRESENTATION_STORAGE, DX_PROCESSING_STORAGE)


def route(sop_class_uid: str, modality: str, body_part_examined: str) -> TriageModality | None:
    """Return the model for an instance, or None when no model applies.

    A CR or DX image is a chest X-ray when Body Part Examined is CHEST or
    absent (older CR readers often leave it empty); a Secondary Capture only
    when it says OPT or CHEST explicitly.
    """
    body_part = body_part_examined.strip().upper()
    if sop_class_uid == OCT_STORAGE:
        return TriageModality.OCT
    if sop_class_uid in _RADIOGRAPHY and body_part in ("CHEST", ""):
        return TriageModality.CXR
    if sop_class_uid == SECONDARY_CAPTURE_STORAGE:
        if modality.upper() == "OPT":
            return TriageModality.OCT
        if body_part == "CHEST":
            return TriageModality.CXR
    return None
