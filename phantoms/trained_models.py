"""Phantom-trained model packages, shipped ready-made for the demo and the tests.

Training them takes minutes on 2 cores and needs TensorFlow, so a copy
ships in this package (``phantoms/trained``, about 1 MB): ``triage demo``
and the in-process tests use it and never train. The copy records a digest
of the code that decides whether a package still fits: the phantoms it
was trained on, the model input and the package format.
``tests/test_phantom_models.py`` fails when the copy is stale; make it
again with ``make phantom-models`` (``python -m phantoms.trained_models``).
The trainer itself is tested by the training tier (``--run-training``),
which trains afresh and never reads this copy.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the source tree, or site-packages
COMMITTED = Path(__file__).resolve().parent / "trained"
DIGEST_FILE = "SOURCE_DIGEST"
MODALITIES = ("oct", "cxr")
# What a package carries that the tests read: the model, its manifest, and
# the trained base that the frozen-base test transfers from.
PACKAGE_FILES = ("manifest.json", "model.onnx", "base.weights.h5")
TRAINING_IMAGES_PER_CLASS = 150
TRAINING_SEEDS = {"oct": 7, "cxr": 8}

# A committed package is stale when one of these changes.
RUNTIME_SOURCES = (
    "phantoms/images.py",
    "phantoms/files.py",
    "model_runtime/preprocess.py",
    "model_runtime/package.py",
)
# Freshly trained packages (the training tier) are also retrained when the
# trainer changes.
TRAINER_SOURCES = (
    "trainer/train.py",
    "trainer/datasets.py",
    "trainer/export.py",
    "trainer/backbones.py",
    "trainer/head.py",
)


def source_digest(sources: tuple[str, ...] = RUNTIME_SOURCES) -> str:
    digest = hashlib.sha256()
    for relative in sources:
        digest.update((ROOT / relative).read_bytes())
    return digest.hexdigest()[:16]


def committed_digest() -> str | None:
    path = COMMITTED / DIGEST_FILE
    return path.read_text().strip() if path.is_file() else None


def committed_packages() -> dict[str, Path] | None:
    """The committed packages, or None when missing or stale."""
    if committed_digest() != source_digest():
        return None
    return {modality: COMMITTED / modality for modality in MODALITIES}


def copy_packages(packages: dict[str, Path], target: Path) -> dict[str, Path]:
    """Copy ``packages`` (by modality) under ``target``, replacing what is there."""
    for modality, package in packages.items():
        shutil.rmtree(target / modality, ignore_errors=True)
        shutil.copytree(package, target / modality)
    return {modality: target / modality for modality in packages}


def write_training_data(root: Path) -> Path:
    from phantoms.files import write_jpeg_dataset

    for modality in MODALITIES:
        write_jpeg_dataset(modality, root, TRAINING_IMAGES_PER_CLASS, seed=TRAINING_SEEDS[modality])
    return root


def train_packages(target: Path, data: Path) -> dict[str, Path]:
    """Train one small-CNN package per modality from the phantoms in ``data``."""
    from trainer.train import TrainOptions, train

    packages = {}
    for modality in MODALITIES:
        package = target / modality
        if not (package / "manifest.json").is_file():
            shutil.rmtree(package, ignore_errors=True)
            train(
                TrainOptions(
                    modality=modality,
                    data=data,
                    out=package,
                    backbone="small_cnn",
                    base_weights="none",
                    seed=0,
                )
            )
        packages[modality] = package
    return packages


def write_committed(packages: dict[str, Path]) -> None:
    """Replace the committed copy with ``packages``."""
    shutil.rmtree(COMMITTED, ignore_errors=True)
    for modality, package in packages.items():
        (COMMITTED / modality).mkdir(parents=True)
        for name in PACKAGE_FILES:
            shutil.copy2(package / name, COMMITTED / modality / name)
    (COMMITTED / DIGEST_FILE).write_text(source_digest() + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = write_training_data(Path(folder) / "data")
        write_committed(train_packages(Path(folder) / "packages", data))
    print(f"wrote {COMMITTED.relative_to(ROOT)} (sources {source_digest()})")


if __name__ == "__main__":
    main()
