"""The sign-in form and signing out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.audit import MINOR_FAILURE
from daemon.web.auth import csrf_ok, peer_address, read_form, safe_next, session_cookie
from daemon.web.context import context_of
from daemon.web.sessions import COOKIE


def _form(request: Request, message: str = "", status_code: int = 200) -> Response:
    return context_of(request).templates.TemplateResponse(
        request,
        "login.html",
        {"user": "", "message": message, "next": safe_next(request.query_params.get("next"))},
        status_code=status_code,
    )


async def login(request: Request) -> Response:
    if request.method == "GET":
        return _form(request)
    context = context_of(request)
    gatekeeper = context.gatekeeper
    form = await read_form(request)
    name, password = form.get("user", ""), form.get("password", "")
    peer = peer_address(request.scope)
    if not await gatekeeper.check_password(name, password, peer):
        # The same words whether the name or the password was wrong.
        return _form(request, "Wrong user name or password.", 401)
    context.trail.record("user-login", peer_address=peer, detail=f"user={name}")
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    session_cookie(response, gatekeeper.sessions.open(name), gatekeeper)
    return response


async def logout(request: Request) -> Response:
    form = await read_form(request)
    context = context_of(request)
    if not csrf_ok(request, form):
        context.trail.record(
            "user-logout",
            MINOR_FAILURE,
            peer_address=peer_address(request.scope),
            detail="sign-out without its form's token refused",
        )
        return RedirectResponse("/", status_code=303)
    if token := request.cookies.get(COOKIE):
        context.gatekeeper.sessions.close(token)
    context.trail.record(
        "user-logout",
        peer_address=peer_address(request.scope),
        detail=f"user={request.scope.get('user', '')}",
    )
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


routes = [
    Route("/login", login, methods=["GET", "POST"], include_in_schema=False),
    Route("/logout", logout, methods=["POST"], include_in_schema=False),
]
