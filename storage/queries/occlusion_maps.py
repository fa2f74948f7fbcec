"""Occlusion maps: which triaged images still need one, and their failed tries.

A failed map rests until ``map_retry_at``; past its policy's last try it is
given up (tries counted, no time set) with the reason, in the database, so
that a restart neither forgets nor repeats it. A new copy of the image
(``replace_instance``) starts again from nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from domain.retry import RetryPolicy
from storage.models import (
    Instance,
    InstanceResult,
    InstanceState,
    OcclusionMapRecord,
    Study,
    StudyState,
)
from storage.queries.common import database_now


def delete_occlusion_maps(session: Session, condition: ColumnElement[bool]) -> None:
    """Delete the occlusion maps matching ``condition`` with their deliveries."""
    for record in session.scalars(select(OcclusionMapRecord).where(condition)):
        for delivery in record.deliveries:
            session.delete(delivery)
        session.delete(record)


def _has_map() -> ColumnElement[bool]:
    return exists().where(OcclusionMapRecord.instance_fk == Instance.id)


def instances_needing_maps(
    session: Session, referrals: Sequence[str], limit: int, exclude: Collection[int] = ()
) -> list[int]:
    """Triaged images the policy covers, in reported studies, without a map yet,
    neither resting after a failed try nor given up; ``exclude``: those in hand."""
    now = database_now(session)
    due = (Instance.map_attempts == 0) | (Instance.map_retry_at <= now)
    query = (
        select(Instance.id)
        .join(InstanceResult, InstanceResult.instance_fk == Instance.id)
        .join(Study, Study.id == Instance.study_fk)
        .where(
            Instance.state == InstanceState.TRIAGED,
            Instance.path != "",
            InstanceResult.referral.in_(list(referrals)),
            Study.state == StudyState.REPORTED,
            due,
            ~_has_map(),
        )
    )
    if exclude:
        query = query.where(Instance.id.not_in(list(exclude)))
    return list(session.scalars(query.order_by(Instance.id).limit(limit)))


def map_failed(
    session: Session, instance_id: int, error: str, policy: RetryPolicy
) -> tuple[int, float | None]:
    """Count a failed map of an image: (tries so far, seconds it rests, or None: given up)."""
    instance = session.get(Instance, instance_id)
    if instance is None:
        return 0, None
    instance.map_attempts += 1
    instance.map_error = error[:2000]
    delay = policy.after_failure(instance.map_attempts)
    instance.map_retry_at = (
        None if delay is None else database_now(session) + dt.timedelta(seconds=delay)
    )
    return instance.map_attempts, delay


def map_counts(session: Session) -> dict[str, int]:
    """Maps that failed and wait to be tried again, and maps given up."""
    given_up = Instance.map_retry_at.is_(None)
    rows = dict(
        session.execute(
            select(given_up, func.count())
            .where(Instance.map_attempts > 0, ~_has_map())
            .group_by(given_up)
        ).all()
    )
    return {"maps_retrying": int(rows.get(False, 0)), "maps_given_up": int(rows.get(True, 0))}
