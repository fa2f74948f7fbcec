"""Shared fixtures: strict pydicom, phantom models trained once, real peers."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from sqlalchemy.orm import Session, sessionmaker

from phantoms.files import write_dicom_studies
from storage.database import create_database_engine, make_session_factory, upgrade
from tests import peers
from tests.peers import Orthanc

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".pytest_cache" / "triage-models"

# Objects we write must be valid; reading must not silently fix them.
pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


# Fixtures whose models the trainer makes from phantoms: minutes on a clean
# clone (then cached), so the tests that use them are marked "trained".
TRAINED_FIXTURES = {"model_dirs", "phantom_training_data"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.trained)
    if os.environ.get("TRIAGE_IN_NETNS") == "1":
        return
    skip = pytest.mark.skip(
        reason="network test: run through `make test` (private loopback-only namespace)"
    )
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def _source_digest() -> str:
    """Models are retrained whenever the code that shapes them changes."""
    digest = hashlib.sha256()
    for relative in (
        "trainer/train.py",
        "trainer/datasets.py",
        "trainer/export.py",
        "trainer/backbones.py",
        "trainer/head.py",
        "phantoms/images.py",
        "phantoms/files.py",
        "model_runtime/preprocess.py",
        "model_runtime/package.py",
    ):
        digest.update((ROOT / relative).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def phantom_training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phantoms.files import write_jpeg_dataset

    root = tmp_path_factory.mktemp("training")
    write_jpeg_dataset("oct", root, 150, seed=7)
    write_jpeg_dataset("cxr", root, 150, seed=8)
    return root


@pytest.fixture(scope="session")
def model_dirs(request: pytest.FixtureRequest) -> dict[str, Path]:
    """OCT and CXR model packages trained on phantoms (cached between runs).

    The training images are written only when a model must be trained.
    """
    cache = CACHE / _source_digest()
    packages = {}
    for modality in ("oct", "cxr"):
        target = cache / modality
        if not (target / "manifest.json").is_file():
            from trainer.train import TrainOptions, train

            shutil.rmtree(target, ignore_errors=True)
            train(
                TrainOptions(
                    modality=modality,
                    data=request.getfixturevalue("phantom_training_data"),
                    out=target,
                    backbone="small_cnn",
                    base_weights="none",
                    seed=0,
                )
            )
        packages[modality] = target
    return packages


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    peer = Orthanc(tmp_path / "orthanc")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session", autouse=True)
def database_backend() -> Iterator[str]:
    """SQLite by default; a private PostgreSQL with TRIAGE_TEST_DATABASE=postgresql."""
    backend = os.environ.get("TRIAGE_TEST_DATABASE", "sqlite")
    if backend != "postgresql":
        yield backend
        return
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    peers.DATABASE_FACTORY.append(server.new_database_url)
    peers.POSTGRES_SERVER.append(server)
    try:
        yield backend
    finally:
        peers.DATABASE_FACTORY.clear()
        peers.POSTGRES_SERVER.clear()
        server.stop()


# A real SQLite database, and single-image OCT phantoms, for tests without network.
@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> sessionmaker[Session]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'reports.sqlite3'}")
    upgrade(engine)
    return make_session_factory(engine)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hand-built ONNX packages (milliseconds): for tests that need a model, not a trained one."""
    from domain.triage import TriageModality
    from tests.tiny_models import write_tiny_package

    root = tmp_path_factory.mktemp("tiny-models")
    return {m.value: write_tiny_package(root / m.value, m) for m in TriageModality}


@pytest.fixture(scope="module")
def oct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = write_dicom_studies("oct", tmp_path_factory.mktemp("pool"), 1, seed=301)
    return sorted(root.rglob("*.dcm"))
