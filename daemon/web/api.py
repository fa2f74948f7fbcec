"""The REST/JSON API: the same data as the pages, for programs. Its OpenAPI
schema (``/api/openapi.json``) is built from these docstrings (Starlette's
``SchemaGenerator``: the YAML after ``---``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from daemon.health import judge, read_status
from daemon.web.auth import csrf_ok, read_form
from daemon.web.context import BadQuery, audit_view, context_of, json_error, study_filter
from daemon.web.operations import map_png, retry_delivery
from storage import queries
from storage.models import DeliveryState

API_VERSION = "1"


def _json(value: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(_plain(value), status_code=status_code)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, dt.datetime):
        return (
            value.replace(tzinfo=dt.UTC).isoformat() if value.tzinfo is None else value.isoformat()
        )
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def list_studies(request: Request) -> Response:
    """
    summary: Triaged studies, newest decision first.
    parameters:
      - {name: modality, in: query, schema: {type: string, enum: [oct, cxr]}}
      - {name: referral, in: query, description: "default: every referral",
         schema: {type: string, enum: [urgent, routine, supportive care, observation]}}
      - {name: from, in: query, description: first image received on or after (UTC),
         schema: {type: string, format: date}}
      - {name: to, in: query, description: first image received on or before (UTC),
         schema: {type: string, format: date}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
    responses:
      200: {description: "{studies: [study]}: each with study_id, patient, result, report_state"}
      400: {description: a parameter out of range}
    """
    try:
        where = study_filter(request, default_referral=None)
    except BadQuery as error:
        return json_error(str(error), 400)
    with context_of(request).sessions() as session:
        rows = queries.triaged_studies(session, where)
    audit_view(request, f"API listed {len(rows)} studies")
    return _json({"studies": rows})


def get_study(request: Request) -> Response:
    """
    summary: One study, each image's result and heat map, and its deliveries.
    parameters:
      - {name: study_id, in: path, required: true, schema: {type: integer}}
    responses:
      200:
        description: >-
          the study: its images (probabilities; model name, version and
          SHA-256; map_id) and its deliveries
      404: {description: no such study}
    """
    study_id = int(request.path_params["study_id"])
    with context_of(request).sessions() as session:
        detail = queries.study_detail(session, study_id)
    if detail is None:
        return json_error("no such study", 404)
    audit_view(request, f"API study {study_id}", detail.patient_id, detail.study_instance_uid)
    return _json(detail)


def get_map(request: Request) -> Response:
    """
    summary: An occlusion heat map drawn over its image, as PNG.
    parameters:
      - {name: map_id, in: path, required: true, schema: {type: integer}}
    responses:
      200: {description: the PNG, content: {image/png: {}}}
      404: {description: no such map}
    """
    png = map_png(context_of(request), int(request.path_params["map_id"]))
    if png is None:
        return json_error("no such map", 404)
    return Response(png, media_type="image/png")


def list_outbox(request: Request) -> Response:
    """
    summary: The outbox, one row per object and destination.
    parameters:
      - {name: state, in: query, schema: {type: string, enum: [pending, delivered, failed]}}
    responses:
      200: {description: "{deliveries: [...]}; failed ones are dead letters"}
      400: {description: an unknown state}
    """
    state_name = request.query_params.get("state")
    try:
        state = DeliveryState(state_name) if state_name else None
    except ValueError:
        return json_error("state must be pending, delivered or failed", 400)
    with context_of(request).sessions() as session:
        rows = queries.outbox(session, state)
    return _json({"deliveries": [_outbox_row(row) for row in rows]})


def _outbox_row(row: queries.OutboxRow) -> dict[str, Any]:
    # The Study Instance UID names a patient's study: the API gives the
    # study's id, which means nothing outside this service.
    plain = _plain(row)
    plain.pop("study_instance_uid", None)
    return dict(plain)


async def retry(request: Request) -> Response:
    """
    summary: Put a delivery back in the queue now (a dead letter, or one waiting to retry).
    parameters:
      - {name: delivery_id, in: path, required: true, schema: {type: integer}}
    responses:
      200: {description: "{study_id}"}
      403: {description: a browser session without its CSRF token (X-CSRF-Token)}
      404: {description: no such delivery}
    """
    if not csrf_ok(request, await read_form(request)):
        return json_error("missing or wrong X-CSRF-Token", 403)
    delivery_id = int(request.path_params["delivery_id"])
    study_id = await run_in_threadpool(retry_delivery, context_of(request), request, delivery_id)
    if study_id is None:
        return json_error("no such delivery", 404)
    return _json({"study_id": study_id})


def health(request: Request) -> Response:
    """
    summary: The service's health, as `triage status` shows it (no patient data).
    responses:
      200: {description: "{healthy, problems, status}"}
    """
    snapshot = read_status(context_of(request).state_dir)
    healthy, problems = judge(snapshot)
    return _json({"healthy": healthy, "problems": problems, "status": snapshot})


routes = [
    Route("/api/studies", list_studies),
    Route("/api/studies/{study_id:int}", get_study),
    Route("/api/maps/{map_id:int}.png", get_map),
    Route("/api/outbox", list_outbox),
    Route("/api/deliveries/{delivery_id:int}/retry", retry, methods=["POST"]),
    Route("/api/health", health),
]

schemas = SchemaGenerator(
    {
        "openapi": "3.1.0",
        "info": {"title": "dicom-triage", "version": API_VERSION},
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "session": {"type": "apiKey", "in": "cookie", "name": "triage_session"},
            }
        },
        "security": [{"basic": []}, {"session": []}],
    }
)


def openapi(request: Request) -> Response:
    """The schema as JSON (Starlette's own response gives YAML)."""
    return JSONResponse(schemas.get_schema(routes=request.app.routes))
