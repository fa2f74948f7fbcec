"""Users of the HTTP service and their password hashes.

The credentials file holds one ``name:hash`` a line (``#`` starts a
comment); ``triage http-user NAME`` prints such a line. The hash is scrypt
(RFC 7914, ``hashlib.scrypt``: memory-hard, in the standard library), as
``scrypt$N$r$p$salt$key`` with the salt and key in base64. The file never
holds a password.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import threading
from pathlib import Path

from domain.errors import ConfigError

# OWASP's minimum for scrypt (N=2^17, r=8, p=1) takes 128 MiB and ~0.3 s a
# check; N=2^15 (32 MiB, ~0.1 s on a slow core) bounds what a burst of wrong
# passwords can cost the service while keeping a stolen file slow to attack.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_KEY_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    """A new salted scrypt hash of ``password``."""
    salt = os.urandom(16)
    key = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)])


def password_matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant time)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + 2**20,
        dklen=_KEY_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_user_name(name: str) -> str:
    """``name`` if it may name a user (it appears in the audit trail)."""
    if not _NAME.match(name):
        raise ConfigError(f"A user name is 1-64 letters, digits or ._@- characters, got {name!r}.")
    return name


def read_users(path: Path) -> dict[str, str]:
    """``{name: hash}`` from the credentials file; a bad line is an error
    that names its number, never its content (it may hold a hash)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the HTTP credentials file {path}: {exc}") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, stored = line.partition(":")
        if not _NAME.match(name) or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise ConfigError(
                f"Line {number} of {path} is not name:scrypt$N$r$p$salt$key "
                "(make one with `triage http-user NAME`)."
            )
        if name in users:
            raise ConfigError(f"Line {number} of {path} names a user a second time.")
        users[name] = stored
    if not users:
        raise ConfigError(f"The HTTP credentials file {path} names no user.")
    return users


class Users:
    """The users of the credentials file, and which passwords were right.

    A scrypt check costs tens of milliseconds by design; an API client that
    sends its password with every request (HTTP Basic) would pay it each
    time, so a password once found right is remembered, as its SHA-256 with
    a secret of this process, until the file's hash changes.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users
        self._secret = os.urandom(32)
        self._lock = threading.Lock()
        self._known: dict[str, bytes] = {}

    @classmethod
    def from_file(cls, path: Path) -> Users:
        return cls(read_users(path))

    def names(self) -> list[str]:
        return sorted(self._users)

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` is a user and ``password`` is theirs."""
        stored = self._users.get(name)
        if stored is None:
            # As slow as a real check: the answer's time tells no one which
            # names exist.
            password_matches(_dummy_hash(), password)
            return False
        fingerprint = hmac.digest(self._secret, f"{stored}\0{password}".encode(), "sha256")
        with self._lock:
            if hmac.compare_digest(self._known.get(name, b""), fingerprint):
                return True
        if not password_matches(stored, password):
            return False
        with self._lock:
            self._known[name] = fingerprint
        return True


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not a password of anyone's")
