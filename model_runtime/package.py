"""Model packages: a directory with ``model.onnx`` and ``manifest.json``.

The trainer writes them and the daemon loads them. The manifest records the
modality, the labels in output order with their referral categories, the
input geometry and pixel scaling, the name and version, the SHA-256 of the
ONNX file, and a training summary. A package whose ONNX file does not hash to
the manifest's value is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from domain.errors import ModelPackageError
from domain.triage import Referral, TriageModality

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
FORMAT_VERSION = 1
PIXEL_SCALINGS = ("zero_one", "minus_one_one")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor (NHWC, float32)."""

    height: int
    width: int
    channels: int
    # "zero_one": [0, 1]; "minus_one_one": [-1, 1] (Keras InceptionV3's scaling)
    scaling: str
    tensor_name: str = "image"


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    modality: TriageModality
    task: str
    labels: tuple[str, ...]
    referrals: dict[str, Referral]
    input: InputSpec
    onnx_sha256: str
    training: dict[str, Any]

    def referral_of(self, label: str) -> Referral:
        return self.referrals[label]

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT_VERSION
        data["modality"] = self.modality.value
        data["labels"] = list(self.labels)
        data["referrals"] = {k: v.value for k, v in self.referrals.items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version must be {FORMAT_VERSION}")
            labels = tuple(str(label) for label in data["labels"])
            referrals = {str(k): Referral.parse(v) for k, v in data["referrals"].items()}
            spec = InputSpec(**data["input"])
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                modality=TriageModality(data["modality"]),
                task=str(data["task"]),
                labels=labels,
                referrals=referrals,
                input=spec,
                onnx_sha256=str(data["onnx_sha256"]),
                training=dict(data.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelPackageError(f"{source} is not a valid model manifest: {exc}") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ModelPackageError(f"{source}: labels must be unique and non-empty.")
        if set(self.referrals) != set(self.labels):
            raise ModelPackageError(f"{source}: every label needs exactly one referral category.")
        if self.input.scaling not in PIXEL_SCALINGS:
            raise ModelPackageError(f"{source}: input.scaling must be one of {PIXEL_SCALINGS}.")
        if min(self.input.height, self.input.width) < 8 or self.input.channels not in (1, 3):
            raise ModelPackageError(f"{source}: input geometry is invalid.")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_package(directory: Path) -> tuple[Manifest, Path]:
    """Read and verify a model package.

    Returns
    -------
    tuple
        The manifest and the path of the verified ONNX file.

    Raises
    ------
    ModelPackageError
        If a file is missing, the manifest is invalid, or the hash differs.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    model_path = directory / MODEL_NAME
    if not manifest_path.is_file() or not model_path.is_file():
        raise ModelPackageError(
            f"Model package {directory} needs {MANIFEST_NAME} and {MODEL_NAME}; "
            "build one with `triage train`."
        )
    manifest = Manifest.from_json(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
    actual = sha256_of_file(model_path)
    if actual != manifest.onnx_sha256:
        raise ModelPackageError(
            f"Model package {directory}: {MODEL_NAME} has SHA-256 {actual}, but the manifest "
            f"records {manifest.onnx_sha256}. The file was changed or corrupted; refusing it."
        )
    return manifest, model_path


def write_package(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> Manifest:
    """Write ``model.onnx`` and a manifest whose hash matches it; return that manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_NAME).write_bytes(onnx_bytes)
    final = dataclasses.replace(manifest, onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest())
    write_manifest(directory, final)
    return final


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Rewrite the manifest of an existing package (its ONNX hash must still match)."""
    directory = Path(directory)
    manifest.validate(str(directory))
    actual = sha256_of_file(directory / MODEL_NAME)
    if actual != manifest.onnx_sha256:
        raise ModelPackageError(f"{directory}: the manifest's hash does not match {MODEL_NAME}.")
    (directory / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
