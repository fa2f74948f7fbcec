"""Signed-in browsers: a random token in a cookie, the session in memory.

The token is 256 random bits and means nothing outside this process: a
restart signs everyone out, and nothing about the user travels in the
cookie. Each session carries its own CSRF token, which every form that
changes something must send back.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable

COOKIE = "triage_session"


@dataclasses.dataclass(frozen=True)
class BrowserSession:
    user: str
    csrf_token: str
    expires_at: float


class SessionStore:
    def __init__(self, lifetime_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.lifetime_seconds = lifetime_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, BrowserSession] = {}

    def open(self, user: str) -> str:
        """A new session for ``user``; its token, for the cookie."""
        token = secrets.token_urlsafe(32)
        session = BrowserSession(
            user, secrets.token_urlsafe(32), self.clock() + self.lifetime_seconds
        )
        with self._lock:
            now = self.clock()
            self._sessions = {t: s for t, s in self._sessions.items() if s.expires_at > now}
            self._sessions[token] = session
        return token

    def find(self, token: str) -> BrowserSession | None:
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires_at <= self.clock():
                del self._sessions[token]
                return None
            return session

    def close(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)


class LoginThrottle:
    """At most ``failures`` wrong passwords from one address per ``window``
    seconds; then that address is refused until the window has passed."""

    def __init__(
        self, failures: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._failed: dict[str, list[float]] = {}

    def allowed(self, address: str) -> bool:
        with self._lock:
            recent = self._recent(address)
            return len(recent) < self.failures

    def failed(self, address: str) -> None:
        with self._lock:
            self._failed[address] = [*self._recent(address), self.clock()]
            if len(self._failed) > 10_000:  # forget the quiet ones
                self._failed = {a: t for a, t in self._failed.items() if self._recent(a)}

    def _recent(self, address: str) -> list[float]:
        since = self.clock() - self.window
        return [t for t in self._failed.get(address, []) if t > since]
