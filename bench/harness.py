"""What the benches that run the real daemon share: the phantom models, and
PostgreSQL when a bench is asked for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from phantoms.demo import ensure_models
from tests import peers


def bench_models(state_dir: str) -> dict[str, Path]:
    """The phantom models' folders (made in ``state_dir`` if absent)."""
    models_state = Path(state_dir).absolute()
    ensure_models(models_state)
    return {m: models_state / "models" / m for m in ("oct", "cxr")}


@contextlib.contextmanager
def bench_database(kind: str) -> Iterator[None]:
    """With "postgresql", a PostgreSQL server of the bench's own, which each
    daemon started meanwhile uses (a database of its own each); SQLite
    otherwise, a file in each daemon's state."""
    if kind != "postgresql":
        yield
        return
    from tests.postgres import PostgresServer

    server = PostgresServer()
    server.start()
    peers.DATABASE_FACTORY.append(server.new_database_url)
    try:
        yield
    finally:
        peers.DATABASE_FACTORY.clear()
        server.stop()
