"""DIMSE status codes used by dicom-triage, with their names.

The values come from PS3.4 Annex B.2.3 (Storage) and PS3.7 Annex C.
"""

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    # PS3.7 C.4: general processing failure
    PROCESSING_FAILURE = 0x0110
    # PS3.7 C.5.x: Refused, not authorized (any DIMSE service)
    NOT_AUTHORIZED = 0x0124
    # PS3.4 B.2.3: Warning, coercion of data elements
    COERCION_OF_DATA_ELEMENTS = 0xB000
    # PS3.4 B.2.3: Refused, out of resources (A7xx)
    OUT_OF_RESOURCES = 0xA700
    # PS3.4 B.2.3: Error, data set does not match SOP class (A9xx)
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # PS3.4 B.2.3: Error, cannot understand (Cxxx); the low byte tells why
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_UNDERSTAND_NO_PIXEL_DATA = 0xC001
    CANNOT_UNDERSTAND_MISSING_UID = 0xC002
    # PS3.4 C.4.1.1.4: Unable to process (C-FIND)
    UNABLE_TO_PROCESS = 0xC311
