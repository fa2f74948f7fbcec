"""What every aggregate's queries share: the database clock, insert-or-read, leases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.orm.interfaces import ORMOption

from storage.models import (
    Base,
    Delivery,
    DeliveryState,
    Instance,
    InstanceState,
    Patient,
    Series,
    Study,
    utcnow,
)

# Issuer given to the patient row of a study whose images have no Patient ID.
NO_PATIENT_ID_ISSUER = "no-patient-id:"


def header_text(dataset: Dataset, keyword: str, limit: int = 64) -> str:
    value = dataset.get(keyword, "")
    return str(value if value is not None else "")[:limit]


# Where queries run: an ORM session, or a Core connection (the store path's
# writer, which needs none of the ORM's bookkeeping).
Bind = Session | Connection


def dialect_name(bind: Bind) -> str:
    return bind.dialect.name if isinstance(bind, Connection) else bind.get_bind().dialect.name


def database_now(bind: Bind) -> dt.datetime:
    """The database server's clock, as naive UTC.

    Nodes compare times they did not write themselves (when a study last
    received an image, until when a lease holds), so every such time comes
    from the one clock they share: PostgreSQL's. A SQLite database is a
    file on one host, and every process that opens it reads the host's
    clock, as SQLite's own ``'now'`` does; so there it is read here, without
    a query.
    """
    if dialect_name(bind) != "postgresql":
        return utcnow()
    value = bind.scalar(text("select (clock_timestamp() at time zone 'utc')"))
    if not isinstance(value, dt.datetime):
        raise TypeError(f"The database returned {value!r} for the time.")
    return value.replace(tzinfo=None)


Row = TypeVar("Row", Patient, Study, Series)


def insert_for(dialect: str) -> Any:
    """The ``insert`` of ``dialect``, which has ``ON CONFLICT``."""
    return postgresql_insert if dialect == "postgresql" else sqlite_insert


def insert_statement(bind: Bind, model: type[Base]) -> Any:
    """An INSERT of ``model`` in the bind's dialect, which has ``ON CONFLICT``."""
    return insert_for(dialect_name(bind))(model.__table__)


def insert_or_get_id(bind: Bind, model: type[Row], key: dict[str, object], **values: object) -> int:
    """The id of the row with ``key`` (its unique columns), inserted first if
    there is none.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key
    to commit (PostgreSQL) or runs under SQLite's single writer, so the row
    is then read back in the same transaction either way.
    """
    bind.execute(
        insert_statement(bind, model)
        .values(**key, **values)
        .on_conflict_do_nothing(index_elements=list(key))
    )
    query = select(model.id)
    for column, value in key.items():
        query = query.where(getattr(model, column) == value)
    return int(bind.scalars(query).one())


def get_or_insert(
    session: Session, model: type[Row], key: dict[str, object], **values: object
) -> Row:
    """``insert_or_get_id``, as the row."""
    return session.get_one(model, insert_or_get_id(session, model, key, **values))


Leasable = TypeVar("Leasable", Instance, Delivery)


def lease_row(
    session: Session,
    model: type[Leasable],
    row_id: int,
    waiting: InstanceState | DeliveryState,
    lease_seconds: float,
) -> Leasable | None:
    """Lease a row in state ``waiting`` that nobody holds: one more attempt, a deadline."""
    rows = lease_rows(session, model, [row_id], waiting, lease_seconds)
    return rows[0] if rows else None


def lease_rows(
    session: Session,
    model: type[Leasable],
    row_ids: Sequence[int],
    waiting: InstanceState | DeliveryState,
    lease_seconds: float,
    *options: ORMOption,
) -> list[Leasable]:
    """Lease those of ``row_ids`` in state ``waiting`` that nobody holds, in id order.

    Each gets one more attempt and a deadline (the database's clock), in one
    UPDATE whose condition is checked as it writes: on SQLite, which ignores
    FOR UPDATE and whose driver opens the transaction only at the first
    write, two workers may both read a row as free, and only the first to
    write may lease it. On PostgreSQL the second waits for the first's row
    lock and then finds the row taken. ``options`` load what the caller reads
    next (related rows) with the rows.
    """
    now = database_now(session)
    leased = session.scalars(
        update(model)
        .where(model.id.in_(row_ids), model.state == waiting)
        .where(model.lease_until.is_(None) | (model.lease_until < now))
        .values(attempts=model.attempts + 1, lease_until=now + dt.timedelta(seconds=lease_seconds))
        .returning(model.id)
    ).all()
    if not leased:
        return []
    return list(
        session.scalars(
            select(model)
            .where(model.id.in_(leased))
            .options(*options)
            .order_by(model.id)
            .execution_options(populate_existing=True)
        )
    )


Destination = tuple[str, str, int]  # (AE title, host, port)
