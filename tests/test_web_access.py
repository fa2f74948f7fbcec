"""Who may use the HTTP service: the credentials file, password checks,
browser sessions and their expiry, the throttle, the [http] settings and
HTTPS, without the rest of the daemon."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from daemon.audit import AuditTrail
from daemon.config import load_settings
from daemon.web.credentials import Users, hash_password, password_matches, read_users
from daemon.web.server import start_web_server
from daemon.web.sessions import LoginThrottle, SessionStore
from domain.errors import ConfigError
from tests.peers import free_port
from tests.pki import make_ca, signed

FAST = 2**10  # scrypt cost for tests that make many hashes


def test_a_hash_matches_its_password_only() -> None:
    stored = hash_password("hunter2hunter2", n=FAST)
    assert stored.startswith("scrypt$1024$8$1$")
    assert password_matches(stored, "hunter2hunter2")
    assert not password_matches(stored, "hunter2hunter3")
    assert hash_password("hunter2hunter2", n=FAST) != stored  # salted
    assert not password_matches("scrypt$1024$8$1$bad$bad", "x")
    assert not password_matches("md5$abc", "x")


def test_the_credentials_file_is_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    good = hash_password("a long password", n=FAST)
    path.write_text(f"# comment\n\nalice:{good}\n")
    assert read_users(path) == {"alice": good}
    for text, words in (
        ("alice:plaintext-password\n", "Line 1"),
        (f"alice:{good}\nalice:{good}\n", "a second time"),
        (f"al ice:{good}\n", "Line 1"),
        ("# nobody\n", "names no user"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=words) as error:
            read_users(path)
        assert "plaintext-password" not in str(error.value)
    with pytest.raises(ConfigError, match="Cannot read"):
        read_users(tmp_path / "missing")


def test_users_remember_a_right_password_not_a_wrong_one() -> None:
    users = Users({"alice": hash_password("a long password", n=FAST)})
    assert users.check("alice", "a long password")
    assert users.check("alice", "a long password")  # from memory
    assert not users.check("alice", "a long passwore")
    assert not users.check("bob", "a long password")


def test_sessions_expire_and_close() -> None:
    now = [100.0]
    store = SessionStore(60, clock=lambda: now[0])
    token = store.open("alice")
    session = store.find(token)
    assert session is not None and session.user == "alice" and session.csrf_token
    assert store.find("forged") is None
    now[0] += 61
    assert store.find(token) is None
    other = store.open("bob")
    store.close(other)
    assert store.find(other) is None


def test_the_throttle_refuses_a_source_that_keeps_failing() -> None:
    now = [0.0]
    throttle = LoginThrottle(failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.allowed("10.0.0.9")
        throttle.failed("10.0.0.9")
    assert not throttle.allowed("10.0.0.9")
    assert throttle.allowed("10.0.0.10")
    now[0] += 61
    assert throttle.allowed("10.0.0.9")


def test_http_settings_refuse_what_would_be_unsafe(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": str(tmp_path), "TRIAGE_HTTP_PORT": "8443"}
    with pytest.raises(ConfigError, match="credentials_file"):
        load_settings(None, env)
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('a long password', n=FAST)}\n")
    env["TRIAGE_HTTP_CREDENTIALS_FILE"] = str(users)
    assert load_settings(None, env).http.port == 8443
    with pytest.raises(ConfigError, match="in clear"):
        load_settings(None, {**env, "TRIAGE_HTTP_HOST": "0.0.0.0"})
    opted = load_settings(
        None, {**env, "TRIAGE_HTTP_HOST": "0.0.0.0", "TRIAGE_HTTP_ALLOW_PLAIN_HTTP": "1"}
    )
    assert opted.http.allow_plain_http
    # From systemd's credentials, when the configuration names no file.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "http-credentials").write_text(users.read_text())
    (credentials / "http-tls-private-key").write_text("key")
    del env["TRIAGE_HTTP_CREDENTIALS_FILE"]
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    with pytest.raises(ConfigError, match="go together"):
        load_settings(None, env)  # a key without its certificate
    settings = load_settings(None, {**env, "TRIAGE_HTTP_TLS_CERTIFICATE": "/etc/ssl/web.pem"})
    assert settings.http.credentials_file == str(credentials / "http-credentials")
    assert settings.http.tls_private_key == str(credentials / "http-tls-private-key")


def test_http_user_prints_a_line_the_service_accepts(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "http-user", "ward-7"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "a long enough password" not in made.stdout
    path = tmp_path / "users"
    path.write_text(made.stdout)
    assert Users.from_file(path).check("ward-7", "a long enough password")
    short = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "http-user", "ward-7"],
        input="short\n",
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2 and "at least" in short.stderr


def test_https_with_a_configured_certificate(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    ca = make_ca(tmp_path, "site-ca")
    key, certificate = signed(tmp_path, "triage-web", ca, server=True)
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('a long password', n=FAST)}\n")
    port = free_port()
    settings = load_settings(
        None,
        {
            "STATE_DIRECTORY": str(tmp_path),
            "TRIAGE_HTTP_PORT": str(port),
            "TRIAGE_HTTP_CREDENTIALS_FILE": str(users),
            "TRIAGE_HTTP_TLS_CERTIFICATE": str(certificate),
            "TRIAGE_HTTP_TLS_PRIVATE_KEY": str(key),
        },
    )
    server = start_web_server(settings, sqlite_sessions, AuditTrail(sqlite_sessions), None)
    assert server is not None
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=ca[1])) as client:
            answer = client.get(
                f"https://127.0.0.1:{port}/api/outbox", auth=("alice", "a long password")
            )
            assert answer.status_code == 200 and answer.json() == {"deliveries": []}
            assert answer.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5)
    finally:
        server.stop(5)
    assert not server.alive()
