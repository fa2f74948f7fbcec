"""Occlusion maps: exactness of the fast mode, and localisation on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.inference import Classifier
from daemon.occlusion import occlusion_map, peak
from dicom_io.phantom_files import write_dicom_studies
from dicom_io.pixels import decode_instance

LOCALISED_CLASSES = {"oct": ("CNV", "DME", "DRUSEN"), "cxr": ("BACTERIA", "VIRUS")}


def test_grid_finds_a_known_region() -> None:
    """A model that only looks at one square: the map must peak there."""

    def predict(batch: np.ndarray) -> np.ndarray:
        signal = batch[:, 40:50, 10:20, 0].mean(axis=(1, 2))
        positive = 1 / (1 + np.exp(-(signal - 0.5) * 20))
        return np.stack([positive, 1 - positive], axis=1)

    image = np.zeros((64, 64, 1), dtype=np.float32)
    image[40:50, 10:20] = 1.0
    result = occlusion_map(predict, image, box=8, mode="grid", stride=1)
    row, col = peak(result.values)
    assert 40 <= row < 50 and 10 <= col < 20
    assert result.forward_passes == 57 * 57 + 1
    assert result.class_index == 0


def _urgent_phantoms(modality: str, folder: Path, count: int, seed: int) -> list[tuple[Path, dict]]:
    root = write_dicom_studies(modality, folder, count, seed=seed)
    truth = json.loads((root / "lesions.json").read_text())
    return [
        (root / relative, record)
        for relative, record in sorted(truth.items())
        if record["label"] in LOCALISED_CLASSES[modality]
    ]


# OCT only: on the chest phantoms a 20-pixel box at 128x128 never hides
# enough of a consolidation to lower the small CNN's probability, so both
# maps are flat noise and there is no region to agree on (see the note on
# issue 6).
@pytest.mark.parametrize("modality", ["oct"])
def test_fast_mode_matches_stride_one(
    modality: str, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    classifier = Classifier(model_dirs[modality], device="cpu")
    path, _record = _urgent_phantoms(modality, tmp_path, 1, seed=111)[0]
    image = classifier.prepare(decode_instance(path).image)
    exact = occlusion_map(classifier.predict, image, mode="grid", stride=1)
    fast = occlusion_map(classifier.predict, image, mode="fast")
    correlation = float(np.corrcoef(exact.values.ravel(), fast.values.ravel())[0, 1])
    print(
        f"\n{modality}: fast/exact correlation {correlation:.4f}, passes "
        f"{fast.forward_passes}/{exact.forward_passes}"
    )
    assert correlation >= 0.95
    assert fast.forward_passes * 20 <= exact.forward_passes
    # Same top region: the fast map's peak lies where the exact map is within
    # 10% of its own maximum.
    fast_row, fast_col = peak(fast.values)
    assert exact.values[fast_row, fast_col] >= 0.9 * exact.values.max()


def test_accumulation_matches_a_plain_loop() -> None:
    from daemon.occlusion import _accumulate

    rng = np.random.default_rng(3)
    drops = {(y, x): float(rng.normal()) for y in range(0, 23, 3) for x in range(0, 19, 2)}
    fast = _accumulate(drops, (30, 28), 8)
    total = np.zeros((30, 28))
    count = np.zeros((30, 28))
    for (y, x), drop in drops.items():
        total[y : y + 8, x : x + 8] += drop
        count[y : y + 8, x : x + 8] += 1
    assert np.allclose(fast, total / np.maximum(count, 1), atol=1e-6)
