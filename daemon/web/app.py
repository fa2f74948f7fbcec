"""The Starlette application: the routes, sign-in on every one but
liveness, and headers that keep pages out of caches and frames."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.web import api, pages, probes, sign_in, stow
from daemon.web.auth import SignInRequired
from daemon.web.context import WebContext

STATIC = Path(__file__).parent / "static"

# No inline script or style, nothing from elsewhere; images may be data:
# only for the favicon.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Every response: the headers above; and, for everything but the
    stylesheet and script, ``Cache-Control: no-store`` (pages hold patient
    data: no shared cache, no back-button copy on a ward's PC)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.extra = [(b"strict-transport-security", b"max-age=31536000")] if https else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name for name, _ in headers}
                headers += [h for h in _SECURITY_HEADERS + self.extra if h[0] not in names]
                if not cacheable and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(context: WebContext, https: bool) -> Starlette:
    routes = [
        *probes.routes,
        *sign_in.routes,
        *pages.routes,
        *api.routes,
        *stow.routes,
        Route("/api/openapi.json", api.openapi, include_in_schema=False),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders, https=https),
            Middleware(SignInRequired, gatekeeper=context.gatekeeper),
        ],
    )
    app.state.web = context
    return app
