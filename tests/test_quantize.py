"""INT8 quantisation of a model package: parity checked, recorded, or refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domain.errors import TriageError
from model_runtime.classifier import Classifier
from model_runtime.package import load_package
from phantoms.files import write_jpeg_dataset
from phantoms.images import labels_for, render

pytest.importorskip("onnx")


def _phantoms(modality: str, per_class: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        render(modality, label, rng).image
        for label in labels_for(modality)
        for _ in range(per_class)
    ]


# Per class; chest phantoms take 120 ms each to draw, so fewer of them.
CALIBRATION = {"oct": 6, "cxr": 4}
HELD_OUT = {"oct": 12, "cxr": 8}


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """(calibration, held-out) phantoms per modality, rendered once."""
    return {
        modality: (
            _phantoms(modality, CALIBRATION[modality], seed=1),
            _phantoms(modality, HELD_OUT[modality], seed=2),
        )
        for modality in ("oct", "cxr")
    }


@pytest.mark.parametrize("modality", ["oct", "cxr"])
def test_an_int8_copy_keeps_the_answers_and_says_how_it_was_made(
    modality: str,
    model_dirs: dict[str, Path],
    images: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
    tmp_path: Path,
) -> None:
    from trainer.quantize import quantize_package

    package = model_dirs[modality]
    calibration, held_out = images[modality]
    # The bar (99%) is measured on hundreds of phantoms in
    # bench/int8.py; on a few dozen one changed image would already fail it.
    manifest, parity = quantize_package(
        package, tmp_path / "int8", calibration, held_out, min_agreement=0.95
    )
    assert parity.agreement >= 0.95
    assert parity.images == HELD_OUT[modality] * len(labels_for(modality))
    assert parity.mean_abs_difference < 0.05
    loaded, model = load_package(tmp_path / "int8")  # the hash verifies
    assert loaded == manifest and manifest.version.endswith("-int8")
    recorded = manifest.training["quantization"]
    assert recorded["parity"]["agreement"] == parity.agreement
    assert recorded["float_model_sha256"] == load_package(package)[0].onnx_sha256
    assert model.stat().st_size < (package / "model.onnx").stat().st_size / 2
    # The daemon runs it like any package.
    result = Classifier(tmp_path / "int8", "cpu").classify(held_out[0])
    assert result.model_version == manifest.version


def test_an_int8_copy_below_the_bar_is_not_written(
    model_dirs: dict[str, Path],
    images: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
    tmp_path: Path,
) -> None:
    from trainer.quantize import quantize_package

    calibration, held_out = images["oct"]
    with pytest.raises(TriageError, match="nothing written"):
        quantize_package(
            model_dirs["oct"],
            tmp_path / "int8",
            calibration,
            held_out,
            min_agreement=1.01,  # no copy can agree on more than every image
        )
    assert not (tmp_path / "int8").exists()


def test_the_quantize_command_prints_its_parity_as_json(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jpeg_dataset("oct", tmp_path / "data", 8, seed=4)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "quantize",
            "--model",
            str(model_dirs["oct"]),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "int8"),
            "--calibration",
            "20",
            "--min-agreement",
            "0.95",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(done.stdout)
    assert summary["agreement"] >= 0.95 and summary["held_out_images"] > 0
    assert load_package(tmp_path / "int8")[0].version == summary["version"]
