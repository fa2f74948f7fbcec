"""The model-package format lives in ``model_runtime.package``; these names stay for callers."""

from model_runtime.package import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_NAME,
    PIXEL_SCALINGS,
    InputSpec,
    Manifest,
    load_package,
    sha256_of_file,
    write_manifest,
    write_package,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "PIXEL_SCALINGS",
    "InputSpec",
    "Manifest",
    "load_package",
    "sha256_of_file",
    "write_manifest",
    "write_package",
]
