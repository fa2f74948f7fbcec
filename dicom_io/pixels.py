"""From a stored DICOM instance to a grey image in [0, 1].

The steps follow the order of PS3.3 C.11 (the grayscale pipeline): decode
(any transfer syntax pydicom and the pylibjpeg plugins support), Modality
LUT or rescale, the first VOI LUT or window, then MONOCHROME1 inversion.
Colour images are converted to luminance. Multi-frame OCT volumes give their
central (foveal) B-scan.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from domain.errors import InferenceError
from model_runtime.preprocess import normalise_range


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    image: np.ndarray  # float32 (rows, cols), 0 = black as displayed, 1 = white
    frame_number: int | None  # 1-based, for multi-frame instances


def centre_frame_index(dataset: Dataset) -> int | None:
    """0-based index of the central frame, or None for a single-frame image."""
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    return frames // 2 if frames > 1 else None


def decode_instance(path: Path) -> DecodedImage:
    """Decode the image to triage from the file at ``path``: the centre frame."""
    return _decode(path, all_frames=False)[0]


def decode_all_frames(path: Path) -> list[DecodedImage]:
    """Decode every frame (every B-scan of an OCT volume)."""
    return _decode(path, all_frames=True)


def _decode(path: Path, all_frames: bool) -> list[DecodedImage]:
    try:
        header = dcmread(path, stop_before_pixels=True)
        index = centre_frame_index(header)
        if index is None:
            raw = _frames(path, header, None)
            return [DecodedImage(display_image(raw, header), None)]
        if not all_frames:
            raw = _frames(path, header, index)
            return [DecodedImage(display_image(raw, header), index + 1)]
        volume = _frames(path, header, None)
        return [
            DecodedImage(display_image(frame, header), number)
            for number, frame in enumerate(volume, start=1)
        ]
    except InferenceError:
        raise
    except Exception as exc:
        raise InferenceError(f"Cannot decode pixel data: {exc}") from exc


def _frames(path: Path, header: Dataset, index: int | None) -> np.ndarray:
    if header.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        # pixel_array() cannot read single frames from a deflated stream.
        frames = dcmread(path).pixel_array
        return frames if index is None else frames[index]
    return pixel_array(path, index=index)


def display_image(raw: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Apply the grayscale pipeline to one decoded frame; return [0, 1] floats."""
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples == 3:
        # pydicom returns RGB for YBR data by default; Rec. 601 luminance.
        rgb = raw.astype(np.float32)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return normalise_range(grey)
    if raw.ndim != 2:
        raise InferenceError(f"Expected a single grey frame, got an array of shape {raw.shape}.")
    values = apply_modality_lut(raw, dataset)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        values = apply_voi_lut(values, dataset, index=0)
    image = normalise_range(np.asarray(values, dtype=np.float32))
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        image = 1.0 - image
    return image
