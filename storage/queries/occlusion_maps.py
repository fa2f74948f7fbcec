"""Occlusion maps: which triaged images still need one."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from storage.models import (
    Instance,
    InstanceResult,
    InstanceState,
    OcclusionMapRecord,
    Study,
    StudyState,
)


def delete_occlusion_maps(session: Session, condition: ColumnElement[bool]) -> None:
    """Delete the occlusion maps matching ``condition`` with their deliveries."""
    for record in session.scalars(select(OcclusionMapRecord).where(condition)):
        for delivery in record.deliveries:
            session.delete(delivery)
        session.delete(record)


def instances_needing_maps(
    session: Session, referrals: Sequence[str], limit: int, exclude: Collection[int] = ()
) -> list[int]:
    """Triaged images the policy covers, in reported studies, without a map yet."""
    has_map = exists().where(OcclusionMapRecord.instance_fk == Instance.id)
    query = (
        select(Instance.id)
        .join(InstanceResult, InstanceResult.instance_fk == Instance.id)
        .join(Study, Study.id == Instance.study_fk)
        .where(
            Instance.state == InstanceState.TRIAGED,
            Instance.path != "",
            InstanceResult.referral.in_(list(referrals)),
            Study.state == StudyState.REPORTED,
            ~has_map,
        )
    )
    if exclude:
        query = query.where(Instance.id.not_in(list(exclude)))
    return list(session.scalars(query.order_by(Instance.id).limit(limit)))
