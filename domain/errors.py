"""The error hierarchy of dicom-triage, rooted at :class:`TriageError`."""


class TriageError(Exception):
    """Root of every error raised on purpose by dicom-triage."""


class ConfigError(TriageError):
    """The configuration file or an environment override is invalid."""


class IngestError(TriageError):
    """A received instance cannot be accepted.

    Parameters
    ----------
    reason
        Human-readable reason, recorded with the quarantined file.
    status
        The DIMSE status to answer with.
    """

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class InferenceError(TriageError):
    """An image could not be decoded, routed or classified."""


class ModelPackageError(InferenceError):
    """A model package is missing, malformed, or fails its hash check."""


class StorageError(TriageError):
    """The database or the spool cannot be used."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached now (restarting, failing over); try again later."""


class DeliveryError(TriageError):
    """A report could not be delivered to a destination."""
