"""DICOM in and out: pixel decoding, frame selection, SR and SC builders, codes."""
