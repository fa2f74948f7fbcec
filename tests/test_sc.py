"""The heat-map Secondary Capture: round-trip, dciodvfy and dcentvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_io.pixels import decode_instance
from dicom_io.sc import LEGEND_WIDTH, build_heatmap_sc, render_overlay
from phantoms.files import write_dicom_studies


def _errors(tool: list[str]) -> list[str]:
    result = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def _sources(tmp_path: Path) -> list[Path]:
    oct_root = write_dicom_studies("oct", tmp_path / "oct", 1, seed=61)
    cxr_root = write_dicom_studies("cxr", tmp_path / "cxr", 1, seed=62)
    real = get_testdata_file("RG1_UNCR.dcm", download=False)
    assert real is not None
    return [sorted(oct_root.rglob("*.dcm"))[0], sorted(cxr_root.rglob("*.dcm"))[0], Path(real)]


def test_heatmap_sc_validates_and_round_trips(tmp_path: Path) -> None:
    for number, source_path in enumerate(_sources(tmp_path)):
        source = dcmread(source_path, stop_before_pixels=True)
        decoded = decode_instance(source_path)
        heat = np.zeros((12, 12), dtype=np.float32)
        heat[2:4, 8:10] = 1.0  # top right
        overlay = render_overlay(decoded.image, heat, "0.00", "0.50")
        rows, cols = decoded.image.shape
        assert overlay.shape == (rows, cols + LEGEND_WIDTH, 3)
        hot = overlay[int(rows * 0.25), int(cols * 0.75)].astype(int)
        cold = overlay[int(rows * 0.75), int(cols * 0.25)].astype(int)
        assert hot[0] - hot[2] > cold[0] - cold[2]  # redder where the map is high

        image = build_heatmap_sc(source, overlay, frame_number=decoded.frame_number)
        path = tmp_path / f"sc{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert _errors(["dciodvfy", str(path)]) == []
        assert _errors(["dcentvfy", str(source_path), str(path)]) == []

        back = dcmread(path)
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert back.PatientID == source.PatientID
        assert back.SeriesInstanceUID != source.SeriesInstanceUID
        assert back.PhotometricInterpretation == "RGB"
        assert np.array_equal(back.pixel_array, overlay)
        reference = back.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if decoded.frame_number is not None:
            assert reference.ReferencedFrameNumber == decoded.frame_number


def test_overlay_needs_a_grey_image() -> None:
    with pytest.raises(ValueError, match='"grey"'):
        render_overlay(np.zeros((4, 4, 3)), np.zeros((2, 2)))
