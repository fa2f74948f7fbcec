"""The model's input: shared by the trainer and the daemon so they agree.

An image is fitted into the model's square without distortion (aspect kept,
the rest padded with black), scaled as the manifest says, and repeated to
the model's channel count.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def letterbox(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``image`` (float, rows x cols) to fit ``height`` x ``width``, centred."""
    rows, cols = image.shape
    scale = min(height / rows, width / cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(
        (new_cols, new_rows), Image.Resampling.BILINEAR
    )
    canvas = np.zeros((height, width), dtype=np.float32)
    top, left = (height - new_rows) // 2, (width - new_cols) // 2
    canvas[top : top + new_rows, left : left + new_cols] = np.asarray(resized)
    return canvas


def scale_pixels(image: np.ndarray, scaling: str) -> np.ndarray:
    """Map [0, 1] to the model's range: "zero_one" or "minus_one_one"."""
    if scaling == "zero_one":
        return image
    if scaling == "minus_one_one":
        return image * 2.0 - 1.0
    raise ValueError(f'Argument "scaling" must be "zero_one" or "minus_one_one", got {scaling!r}.')


def normalise_range(values: np.ndarray) -> np.ndarray:
    """Stretch values linearly to [0, 1]; a constant image becomes all zeros."""
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return (values - low) / (high - low)


def model_input(
    image: np.ndarray, height: int, width: int, channels: int, scaling: str
) -> np.ndarray:
    """One NHWC float32 tensor row (height, width, channels) from a grey image.

    The image is stretched to [0, 1] first, so that an 8-bit JPEG and a
    12-bit radiograph of the same scene give the same input.
    """
    fitted = scale_pixels(letterbox(normalise_range(image), height, width), scaling)
    return np.repeat(fitted[:, :, None], channels, axis=2).astype(np.float32)


def load_grey_file(path: str) -> np.ndarray:
    """Read a JPEG or PNG as grey floats in [0, 1] (the paper's data sets)."""
    with Image.open(path) as handle:
        return np.asarray(handle.convert("L"), dtype=np.float32) / 255.0


def resample(heat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resampling of a map to the source image geometry."""
    image = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(image.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)
