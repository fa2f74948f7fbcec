"""I/O binding lives in ``model_runtime.device_binding``; these names stay for callers."""

from model_runtime.device_binding import (
    SHAPES_KEPT,
    DeviceBinding,
)

__all__ = [
    "SHAPES_KEPT",
    "DeviceBinding",
]
