"""Who is asking: every route but liveness needs a signed-in browser (a
session cookie from the sign-in form) or HTTP Basic credentials (API
clients, Prometheus). Default deny: a route is public only if it is named
in ``PUBLIC_PATHS``.

Sign-in, sign-out and refused credentials are audit events; a source that
keeps failing is refused for a while (``LoginThrottle``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import urllib.parse

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.audit import AuditTrail
from daemon.web.credentials import Users
from daemon.web.sessions import COOKIE, BrowserSession, LoginThrottle, SessionStore

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/livez", "/login", "/static/style.css", "/favicon.ico"})
# Paths a machine asks for: refused with 401 and a Basic challenge, never
# sent to the sign-in page.
MACHINE_PREFIXES = ("/api/", "/dicomweb/", "/metrics", "/readyz")
_MAX_FORM_BYTES = 4096


class Gatekeeper:
    """Users, sessions and the throttle, shared by the middleware and the
    sign-in routes."""

    def __init__(self, users: Users, sessions: SessionStore, trail: AuditTrail, https: bool):
        self.users = users
        self.sessions = sessions
        self.trail = trail
        self.https = https
        self.throttle = LoginThrottle()

    async def check_password(self, name: str, password: str, peer: str) -> bool:
        """Whether the password is right, audited and throttled by source."""
        if not self.throttle.allowed(peer):
            return False
        # scrypt takes tens of milliseconds: off the event loop.
        right = await anyio.to_thread.run_sync(self.users.check, name, password)
        if not right:
            self.throttle.failed(peer)
            self.trail.security_alert(peer, f"HTTP sign-in refused for user {name[:64]!r}")
        return right


def peer_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class SignInRequired:
    """ASGI middleware: the request goes on with ``scope["user"]`` (the user
    name) and ``scope["browser_session"]``, or is refused."""

    def __init__(self, app: ASGIApp, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        session = self._browser_session(request)
        user = session.user if session is not None else await self._basic_user(request)
        if user is None:
            await self._refuse(request)(scope, receive, send)
            return
        scope["user"] = user
        scope["browser_session"] = session
        await self.app(scope, receive, send)

    def _browser_session(self, request: Request) -> BrowserSession | None:
        token = request.cookies.get(COOKIE)
        return self.gatekeeper.sessions.find(token) if token else None

    async def _basic_user(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None
        try:
            name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        right = await self.gatekeeper.check_password(name, password, peer_address(request.scope))
        return name if right else None

    def _refuse(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith(MACHINE_PREFIXES) or request.method not in ("GET", "HEAD"):
            return JSONResponse(
                {"error": "sign-in required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="dicom-triage", charset="UTF-8"'},
            )
        # The page to come back to: our own path only (no open redirect).
        back = urllib.parse.urlencode({"next": path})
        return RedirectResponse(f"/login?{back}", status_code=303)


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in, or the urgent list."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of a few fields."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return {}
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=16)
    return {name: values[0] for name, values in fields.items()}


def csrf_ok(request: Request, form: dict[str, str]) -> bool:
    """A form that changes something carries its session's CSRF token; an
    API client with Basic credentials has no session, and needs none."""
    session: BrowserSession | None = request.scope.get("browser_session")
    if session is None:
        return True
    sent = form.get("csrf_token") or request.headers.get("x-csrf-token", "")
    return bool(sent) and sent == session.csrf_token


def session_cookie(response: Response, token: str, gatekeeper: Gatekeeper) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(gatekeeper.sessions.lifetime_seconds),
        httponly=True,
        samesite="strict",
        secure=gatekeeper.https,
        path="/",
    )
