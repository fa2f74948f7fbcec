"""Preprocessing lives in ``model_runtime.preprocess``; these names stay for callers."""

from model_runtime.preprocess import (
    letterbox,
    load_grey_file,
    model_input,
    normalise_range,
    resample,
    scale_pixels,
)

__all__ = [
    "letterbox",
    "load_grey_file",
    "model_input",
    "normalise_range",
    "resample",
    "scale_pixels",
]
