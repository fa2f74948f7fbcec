"""The source image's header as the objects derived from it (SR, SC) need it."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1,
# C.7.2.1) that the SR and SC copy from their source image.
TYPE2_SOURCE_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def with_type2_attributes(source: Dataset) -> Dataset:
    """The source header with every type 2 patient and study attribute present.

    Some devices leave them out; DICOM says they are then present and empty
    (PS3.5 7.4.5), which is how a derived object must carry them.
    """
    missing = [keyword for keyword in TYPE2_SOURCE_KEYWORDS if keyword not in source]
    if not missing:
        return source
    completed = copy.deepcopy(source)
    for keyword in missing:
        setattr(completed, keyword, "")
    return completed
