"""The DIMSE statuses, re-exported from ``dicom_io.status`` where they now live:
they are DICOM (PS3.4, PS3.7), not the daemon's, and tools below it use them."""

from dicom_io.status import Status

__all__ = ["Status"]
