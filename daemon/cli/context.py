"""What the commands share: the settings they were given, the database they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Settings, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def migrated_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the configured database, which must be at the current schema."""
    from storage.database import create_database_engine, make_session_factory, require_current

    engine = create_database_engine(settings.storage.database_url)
    require_current(engine)
    return make_session_factory(engine)
