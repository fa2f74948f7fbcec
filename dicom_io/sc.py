"""The occlusion heat map as an RGB Secondary Capture (PS3.3 A.8.1).

The map is drawn over the grey source image with a colour-scale legend to
its right, and wrapped with highdicom's ``SCImage.from_ref_dataset``: the
object joins the source study in a series of its own and references its
source image (and frame) in the Source Image Sequence.
"""

from __future__ import annotations

import io

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.source import with_type2_attributes
from model_runtime.preprocess import normalise_range, resample

HEATMAP_SERIES_DESCRIPTION = "AI triage occlusion map"
HEATMAP_SERIES_NUMBER = 9902
MANUFACTURER = "dicom-triage"
LEGEND_WIDTH = 72
OVERLAY_ALPHA = 0.45

# A perceptually ordered ramp: dark blue (no effect) to red (decision rests here).
_RAMP = np.array(
    [
        [0.0, 0, 0, 140],
        [0.25, 0, 120, 255],
        [0.5, 0, 220, 120],
        [0.75, 255, 220, 0],
        [1.0, 230, 20, 0],
    ],
    dtype=np.float64,
)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB floats in [0, 255]."""
    clipped = np.clip(values, 0.0, 1.0)
    return np.stack(
        [np.interp(clipped, _RAMP[:, 0], _RAMP[:, channel]) for channel in (1, 2, 3)], axis=-1
    )


def render_overlay(
    grey: np.ndarray, heat: np.ndarray, low_label: str = "0", high_label: str = "max"
) -> np.ndarray:
    """The grey image with the heat map blended over it, and a legend; RGB uint8.

    Parameters
    ----------
    grey
        The source image as displayed, values in [0, 1], shape (rows, cols).
    heat
        The map, any shape; it is resampled to ``grey`` and stretched to [0, 1].
    low_label, high_label
        Text at the bottom and top of the colour scale.
    """
    if grey.ndim != 2:
        raise ValueError('Argument "grey" must be a two-dimensional image.')
    rows, cols = grey.shape
    scaled = normalise_range(resample(heat, rows, cols))
    base = np.repeat(np.clip(grey, 0, 1)[:, :, None] * 255.0, 3, axis=2)
    # Blend more where the map is high, so that unimportant regions stay readable.
    weight = OVERLAY_ALPHA * scaled[:, :, None]
    blended = base * (1 - weight) + colour_ramp(scaled) * weight

    legend = np.zeros((rows, LEGEND_WIDTH, 3), dtype=np.float64)
    margin = max(rows // 12, 12)
    bar = np.linspace(1.0, 0.0, max(rows - 2 * margin, 1))[:, None]
    legend[margin : margin + len(bar), 8:24] = colour_ramp(np.repeat(bar, 16, axis=1))
    canvas = Image.fromarray(
        np.concatenate([blended, legend], axis=1).round().astype(np.uint8), mode="RGB"
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((cols + 28, margin - 4), high_label, fill=(255, 255, 255), font=font)
    draw.text((cols + 28, rows - margin - 8), low_label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def build_heatmap_sc(
    source: Dataset,
    overlay: np.ndarray,
    *,
    frame_number: int | None = None,
    description: str = "",
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    software_version: str = "",
) -> SCImage:
    """Wrap an RGB overlay (from :func:`render_overlay`) as a Secondary Capture."""
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ValueError('Argument "overlay" must be an RGB uint8 array (rows, cols, 3).')
    laterality = source.get("Laterality") or source.get("ImageLaterality") or None
    # highdicom insists on an orientation for the PATIENT coordinate system; the
    # source's own (often empty for OCT) replaces it below rather than invent one.
    image = SCImage.from_ref_dataset(
        ref_dataset=with_type2_attributes(source),
        pixel_array=overlay,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=HEATMAP_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        laterality=laterality if laterality in ("L", "R") else None,
        patient_orientation=("L", "F"),
        series_description=HEATMAP_SERIES_DESCRIPTION,
        software_versions=software_version or None,
    )
    image.PatientOrientation = source.get("PatientOrientation", "")
    if "Laterality" not in image:
        image.Laterality = ""  # Type 2C: unknown laterality is sent empty
    for keyword in ("StudyDescription", "StudyID"):
        if keyword in source and keyword not in image:
            setattr(image, keyword, source[keyword].value)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None:
        reference.ReferencedFrameNumber = frame_number
    image.SourceImageSequence = [reference]
    image.DerivationDescription = (
        description or "Occlusion sensitivity map of the AI triage model"
    )[:1024]
    image.BurnedInAnnotation = "YES"  # the legend's text is in the pixels
    return image


def secondary_capture_png(content: bytes) -> bytes:
    """A Secondary Capture's first frame as PNG, for a browser."""
    dataset = dcmread(io.BytesIO(content))
    pixels = dataset.pixel_array
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        pixels = (normalise_range(pixels) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
