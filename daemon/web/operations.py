"""What the pages and the API both do: render a heat map, retry a delivery."""

from __future__ import annotations

from starlette.requests import Request

from daemon.web.auth import peer_address
from daemon.web.context import WebContext, user_of
from dicom_io.sc import secondary_capture_png
from storage import queries


def map_png(context: WebContext, map_id: int) -> bytes | None:
    """The heat map, drawn over its image, as PNG; None if there is none."""
    with context.sessions() as session:
        found = queries.occlusion_map_content(session, map_id)
    return secondary_capture_png(found[1]) if found is not None else None


def retry_delivery(context: WebContext, request: Request, delivery_id: int) -> int | None:
    """Put one delivery back in the queue, now; its study, or None if there
    is no such delivery. Audited with the user who asked."""
    with context.sessions() as session, session.begin():
        study_id = queries.delivery_study(session, delivery_id)
        if study_id is None:
            return None
        queries.retry_deliveries(session, [delivery_id])
    context.trail.record(
        "delivery-retried",
        peer_address=peer_address(request.scope),
        detail=f"user={user_of(request)} delivery {delivery_id} of study {study_id}",
    )
    return study_id
