"""What every route of the HTTP service reads from: the database, the audit
trail, the state directory (the status file) and who is signed in."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.templating import Jinja2Templates

from daemon.audit import AuditTrail
from daemon.scp import IngestContext
from daemon.web.auth import Gatekeeper, peer_address
from domain.triage import Referral
from storage import queries

TEMPLATES = Path(__file__).parent / "templates"
MODALITIES = ("oct", "cxr")
REFERRALS = tuple(referral.value for referral in Referral)


def dicom_date(value: str) -> str:
    """A DICOM DA (YYYYMMDD) as 2026-12-08; anything else as it came."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["dicom_date"] = dicom_date
    return templates


@dataclasses.dataclass(frozen=True)
class WebContext:
    sessions: sessionmaker[Session]
    trail: AuditTrail
    state_dir: Path
    gatekeeper: Gatekeeper
    # How STOW-RS stores (the C-STORE path's); None: this node does not receive.
    ingest: IngestContext | None = None
    max_dataset_bytes: int = 1024**3
    templates: Jinja2Templates = dataclasses.field(default_factory=_templates)


def context_of(request: Request) -> WebContext:
    context: WebContext = request.app.state.web
    return context


def user_of(request: Request) -> str:
    return str(request.scope.get("user", ""))


def audit_view(request: Request, what: str, patient_id: str = "", study_uid: str = "") -> None:
    """A user saw patient data: who, from where, what (no patient in ``what``)."""
    context_of(request).trail.record(
        "record-viewed",
        peer_address=peer_address(request.scope),
        patient_id=patient_id,
        study_instance_uid=study_uid,
        detail=f"user={user_of(request)} {what}",
    )


def json_error(message: str, status_code: int) -> JSONResponse:
    """An API's or DICOMweb's refusal: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status_code)


class BadQuery(ValueError):
    """A query parameter out of range: 400, with this message."""


def study_filter(request: Request, default_referral: str | None) -> queries.StudyFilter:
    """The list's filters from the query string: modality, referral, from, to, limit."""
    params = request.query_params
    modality = params.get("modality") or None
    if modality is not None and modality not in MODALITIES:
        raise BadQuery(f"modality must be one of {', '.join(MODALITIES)}")
    referral = params.get("referral", default_referral) or None
    if referral is not None and referral not in REFERRALS:
        raise BadQuery(f"referral must be one of {', '.join(REFERRALS)}")
    try:
        limit = int(params.get("limit", "100"))
    except ValueError as exc:
        raise BadQuery("limit must be a whole number") from exc
    if not 1 <= limit <= 1000:
        raise BadQuery("limit must be in 1..1000")
    return queries.StudyFilter(
        modality=modality,
        referral=referral,
        received_from=_date(params.get("from"), "from"),
        received_to=_date(params.get("to"), "to"),
        limit=limit,
    )


def _date(text: str | None, name: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise BadQuery(f"{name} must be a date, YYYY-MM-DD") from exc
