"""The error hierarchy lives in ``domain.errors``; these names stay for callers."""

from domain.errors import (
    ConfigError,
    DatabaseUnavailable,
    DeliveryError,
    InferenceError,
    IngestError,
    ModelPackageError,
    StorageError,
    TriageError,
)

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "DeliveryError",
    "InferenceError",
    "IngestError",
    "ModelPackageError",
    "StorageError",
    "TriageError",
]
