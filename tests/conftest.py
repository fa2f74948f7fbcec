"""Shared fixtures: strict pydicom, phantom models trained once, real peers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from sqlalchemy.orm import Session, sessionmaker

from daemon.web.credentials import hash_password
from phantoms import trained_models
from phantoms.files import write_dicom_studies
from storage.database import create_database_engine, make_session_factory, upgrade
from tests import peers
from tests.peers import WEB_PASSWORD, WEB_USER, Orthanc, TriageDaemon, free_port

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".pytest_cache" / "triage-models"

# Objects we write must be valid; reading must not silently fix them.
pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


# Fixtures that train models now, with the trainer under test: minutes on 2
# cores, so their tests are marked "training" and run only with
# --run-training (`make test` passes it). Everything else uses the committed
# phantom-trained packages (phantoms/trained_models.py) and never trains.
TRAINING_FIXTURES = {"trained_packages", "phantom_training_data"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-training",
        action="store_true",
        help="also run the tests that train models (minutes; `make test` sets it)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.training)
    if not config.getoption("--run-training"):
        skip_training = pytest.mark.skip(
            reason="trains models: run with --run-training (`make test` does)"
        )
        for item in items:
            if "training" in item.keywords:
                item.add_marker(skip_training)
    if os.environ.get("TRIAGE_IN_NETNS") == "1":
        return
    skip = pytest.mark.skip(
        reason="network test: run through `make test` (private loopback-only namespace)"
    )
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def phantom_training_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_models.write_training_data(tmp_path_factory.mktemp("training"))


@pytest.fixture(scope="session")
def trained_packages(request: pytest.FixtureRequest) -> dict[str, Path]:
    """OCT and CXR packages the trainer under test makes from phantoms.

    Cached between runs, keyed by the trainer's and the phantoms' sources;
    the training images are written only when a model must be trained.
    """
    sources = trained_models.RUNTIME_SOURCES + trained_models.TRAINER_SOURCES
    cache = CACHE / trained_models.source_digest(sources)
    if all((cache / m / "manifest.json").is_file() for m in trained_models.MODALITIES):
        return {m: cache / m for m in trained_models.MODALITIES}
    return trained_models.train_packages(cache, request.getfixturevalue("phantom_training_data"))


@pytest.fixture(scope="session")
def model_dirs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Phantom-trained OCT and CXR packages, for every test but the trainer's.

    A copy of the committed packages, so that no test can change them in the
    repository. If they are stale (tests/test_trained_models.py says so),
    the packages are trained afresh instead, which takes minutes.
    """
    packages = trained_models.committed_packages()
    if packages is None:
        packages = request.getfixturevalue("trained_packages")
    return trained_models.copy_packages(packages, tmp_path_factory.mktemp("phantom-models"))


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


@pytest.fixture
def web_daemon(tmp_path: Path, model_dirs: dict[str, Path]) -> Iterator[TriageDaemon]:
    """The daemon with its HTTP service, and a destination that is down:
    each SR becomes a dead letter after one retry."""
    credentials = tmp_path / "http-users"
    credentials.write_text(f"# users of the web pages\n{WEB_USER}:{hash_password(WEB_PASSWORD)}\n")
    down = free_port()
    daemon = TriageDaemon(
        tmp_path / "state",
        model_dirs,
        TRIAGE_HTTP_PORT=str(free_port()),
        TRIAGE_HTTP_CREDENTIALS_FILE=str(credentials),
        TRIAGE_DELIVERY_RETRY_SCHEDULE="1x1s",
        TRIAGE_DESTINATIONS=json.dumps([{"ae_title": "DOWN", "host": "127.0.0.1", "port": down}]),
    )
    daemon.web_url = f"http://127.0.0.1:{daemon.env['TRIAGE_HTTP_PORT']}"
    daemon.start()
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log
