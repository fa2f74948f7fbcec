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

from dicom_io.phantom_files import write_dicom_studies
from storage.database import create_database_engine, make_session_factory, upgrade
from tests import peers
from tests.peers import Orthanc

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".pytest_cache" / "triage-models"

# Objects we write must be valid; reading must not silently fix them.
pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
        "dicom_io/phantoms.py",
        "dicom_io/phantom_files.py",
        "model_runtime/preprocess.py",
        "model_runtime/package.py",
    ):
        digest.update((ROOT / relative).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def phantom_training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dicom_io.phantom_files import write_jpeg_dataset

    root = tmp_path_factory.mktemp("training")
    write_jpeg_dataset("oct", root, 150, seed=7)
    write_jpeg_dataset("cxr", root, 150, seed=8)
    return root


@pytest.fixture(scope="session")
def model_dirs(phantom_training_data: Path) -> dict[str, Path]:
    """OCT and CXR model packages trained on phantoms (cached between runs)."""
    from trainer.train import TrainOptions, train

    cache = CACHE / _source_digest()
    packages = {}
    for modality in ("oct", "cxr"):
        target = cache / modality
        if not (target / "manifest.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            train(
                TrainOptions(
                    modality=modality,
                    data=phantom_training_data,
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


@pytest.fixture(scope="module")
def oct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = write_dicom_studies("oct", tmp_path_factory.mktemp("pool"), 1, seed=301)
    return sorted(root.rglob("*.dcm"))
