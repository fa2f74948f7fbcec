"""The web pages, rendered on the server: the urgent list, a study, the
outbox and the service's health. Every view of patient data is audited."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from daemon.health import judge, read_status
from daemon.web.auth import csrf_ok, read_form
from daemon.web.context import (
    MODALITIES,
    REFERRALS,
    BadQuery,
    WebContext,
    audit_view,
    context_of,
    study_filter,
    user_of,
)
from daemon.web.operations import map_png, retry_delivery
from storage import queries
from storage.models import DeliveryState


def _page(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    context = context_of(request)
    session = request.scope.get("browser_session")
    return context.templates.TemplateResponse(
        request,
        template,
        {"user": user_of(request), "csrf_token": session.csrf_token if session else "", **values},
        status_code=status_code,
    )


def _bad_query(request: Request, error: BadQuery) -> Response:
    return _page(request, "error.html", 400, message=str(error))


def urgent_list(request: Request) -> Response:
    """The list of triaged studies, urgent ones by default, newest first."""
    try:
        where = study_filter(request, default_referral="urgent")
    except BadQuery as error:
        return _bad_query(request, error)
    with context_of(request).sessions() as session:
        rows = queries.triaged_studies(session, where)
    audit_view(request, f"listed {len(rows)} studies")
    return _page(
        request,
        "studies.html",
        rows=rows,
        where=where,
        modalities=MODALITIES,
        referrals=REFERRALS,
        query=request.url.query,
    )


def urgent_rows(request: Request) -> Response:
    """The list's rows alone, for the page's live refresh (no audit: the
    page that asks was audited when it was opened)."""
    try:
        where = study_filter(request, default_referral="urgent")
    except BadQuery as error:
        return HTMLResponse(str(error), status_code=400)
    with context_of(request).sessions() as session:
        rows = queries.triaged_studies(session, where)
    return _page(request, "study_rows.html", rows=rows)


def study_page(request: Request) -> Response:
    study_id = int(request.path_params["study_id"])
    with context_of(request).sessions() as session:
        detail = queries.study_detail(session, study_id)
    if detail is None:
        return _page(request, "error.html", 404, message="No such study.")
    audit_view(request, f"study {study_id}", detail.patient_id, detail.study_instance_uid)
    return _page(request, "study.html", detail=detail)


def map_image(request: Request) -> Response:
    png = map_png(context_of(request), int(request.path_params["map_id"]))
    if png is None:
        return Response(status_code=404)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


async def retry(request: Request) -> Response:
    form = await read_form(request)
    if not csrf_ok(request, form):
        return _page(request, "error.html", 403, message="The form has expired: reload the page.")
    delivery_id = int(request.path_params["delivery_id"])
    context: WebContext = context_of(request)
    study_id = await run_in_threadpool(retry_delivery, context, request, delivery_id)
    if study_id is None:
        return _page(request, "error.html", 404, message="No such delivery.")
    back = "/outbox" if form.get("back") == "outbox" else f"/studies/{study_id}"
    return RedirectResponse(back, status_code=303)


def outbox_page(request: Request) -> Response:
    with context_of(request).sessions() as session:
        failed = queries.outbox(session, DeliveryState.FAILED)
        pending = queries.outbox(session, DeliveryState.PENDING)
    return _page(request, "outbox.html", failed=failed, pending=pending)


def health_page(request: Request) -> Response:
    snapshot = read_status(context_of(request).state_dir)
    healthy, problems = judge(snapshot)
    return _page(
        request, "health.html", snapshot=snapshot or {}, healthy=healthy, problems=problems
    )


routes = [
    Route("/", urgent_list, include_in_schema=False),
    Route("/studies/rows", urgent_rows, include_in_schema=False),
    Route("/studies/{study_id:int}", study_page, include_in_schema=False),
    Route("/maps/{map_id:int}.png", map_image, include_in_schema=False),
    Route("/deliveries/{delivery_id:int}/retry", retry, methods=["POST"], include_in_schema=False),
    Route("/outbox", outbox_page, include_in_schema=False),
    Route("/health", health_page, include_in_schema=False),
]
