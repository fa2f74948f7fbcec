"""The classifier lives in ``model_runtime.classifier``; these names stay for callers."""

from model_runtime.classifier import (
    CPU,
    CUDA,
    Classifier,
    create_session,
)

__all__ = [
    "CPU",
    "CUDA",
    "Classifier",
    "create_session",
]
