"""For load balancers and Prometheus: liveness (the only public route),
readiness, and the metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from daemon.health import judge, read_status
from daemon.metrics import serving_registry
from daemon.web.context import context_of


def livez(request: Request) -> Response:
    """The HTTP service answers: nothing more (no database, no patient)."""
    return PlainTextResponse("ok\n")


def readyz(request: Request) -> Response:
    """Ready when the daemon's status is fresh, its workers run and the
    database answers (what `triage status` judges)."""
    healthy, problems = judge(read_status(context_of(request).state_dir))
    if healthy:
        return PlainTextResponse("ready\n")
    return PlainTextResponse("".join(f"{problem}\n" for problem in problems), status_code=503)


def prometheus(request: Request) -> Response:
    return Response(generate_latest(serving_registry()), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/livez", livez, include_in_schema=False),
    Route("/readyz", readyz, include_in_schema=False),
    Route("/metrics", prometheus, include_in_schema=False),
]
