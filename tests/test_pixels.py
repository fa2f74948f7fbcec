"""The grayscale pipeline in the standard's order (PS3.3 C.11)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.pixels import display_image


def _mono(photometric: str = "MONOCHROME2", **attributes: object) -> Dataset:
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def test_monochrome1_is_inverted() -> None:
    raw = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    normal = display_image(raw, _mono())
    inverted = display_image(raw, _mono("MONOCHROME1"))
    assert normal[0, 0] == 0.0 and normal[1, 1] == 1.0
    assert np.allclose(inverted, 1.0 - normal)


def test_window_clips_before_scaling() -> None:
    raw = np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    image = display_image(raw, _mono(WindowCenter=1500, WindowWidth=1000))
    # Everything at or below the window's bottom is black, at or above its top white.
    assert image[0, 0] == image[0, 1] == 0.0
    assert image[0, 3] == image[0, 4] == 1.0
    assert 0.4 < image[0, 2] < 0.6


def test_rescale_and_signed_pixels() -> None:
    raw = np.array([[-1000, 0, 1000]], dtype=np.int16)
    ds = _mono(RescaleSlope=2, RescaleIntercept=-100)
    ds.PixelRepresentation = 1
    image = display_image(raw, ds)
    assert np.allclose(image, [[0.0, 0.5, 1.0]])


def test_rgb_becomes_luminance() -> None:
    ds = Dataset()
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    raw = np.zeros((1, 3, 3), dtype=np.uint8)
    raw[0, 0] = (255, 0, 0)
    raw[0, 1] = (0, 255, 0)
    raw[0, 2] = (255, 255, 255)
    image = display_image(raw, ds)
    assert image.shape == (1, 3)
    assert image[0, 1] > image[0, 0]  # green is brighter than red to the eye
    assert image[0, 2] == 1.0
