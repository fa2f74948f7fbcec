"""Engine creation and schema migrations (Alembic).

SQLite is the embedded default, run in WAL mode with foreign keys on;
PostgreSQL (psycopg 3) is for production. ``upgrade`` brings a database to
the newest revision; ``require_current`` refuses to run on an old one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from domain.errors import DatabaseUnavailable, StorageError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_database_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite, create the parent folder and set pragmas."""
    url = make_url(database_url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Association threads, the pipeline and the reporter share the file.
        connect_args = {"timeout": 30, "check_same_thread": False}
    elif url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    # A server's connections die when it restarts: each is pinged as it is
    # taken from the pool. A SQLite file has no server, and the ping would
    # cost every acknowledgement a statement.
    sqlite = url.get_backend_name() == "sqlite"
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not sqlite)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL with synchronous=FULL fsyncs each commit: an acknowledged C-STORE
    # must survive a power cut, not only a crash of the process.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    head = script.get_current_head()
    if head is None:
        raise StorageError("The migration scripts have no head revision.")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Apply every migration up to the newest revision."""
    command.upgrade(_alembic_config(engine), "head")
    logger.info("Database is at revision %s", current_revision(engine))


def require_current(engine: Engine) -> None:
    """Raise ``StorageError`` unless the database is at the newest revision.

    ``DatabaseUnavailable`` (a ``StorageError``) when it cannot be reached at
    all: that passes, a wrong schema does not.
    """
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"The database cannot be reached: {exc.orig or exc}") from exc
    except Exception as exc:
        raise StorageError(f"Cannot read the database schema version: {exc}") from exc
    head = head_revision()
    if current != head:
        raise StorageError(
            f"The database is at schema revision {current or 'none'} but this version of "
            f"dicom-triage needs {head}. Run `triage db upgrade` first."
        )
