"""The HTTP service of the real daemon: sign-in on every route but liveness,
the urgent list, a study with its heat map, the outbox with a retry, the
API and its schema, and the audit trail of who looked at what."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.peers import WEB_PASSWORD as PASSWORD
from tests.peers import WEB_USER as USER
from tests.peers import TriageDaemon, urgent_oct_studies

pytestmark = pytest.mark.network

WAIT_SECONDS = 90


def _poll(ask, timeout: float = WAIT_SECONDS):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := ask():
            return found
        time.sleep(0.5)
    raise AssertionError("not found in time")


def test_nothing_but_liveness_without_credentials(web_daemon: TriageDaemon) -> None:
    with httpx.Client(base_url=web_daemon.web_url, follow_redirects=False) as anonymous:
        assert anonymous.get("/livez").status_code == 200
        for path in ("/api/studies", "/api/health", "/readyz", "/metrics", "/api/openapi.json"):
            refused = anonymous.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic")
        for path in ("/", "/outbox", "/health", "/studies/1", "/maps/1.png"):
            page = anonymous.get(path)
            assert page.status_code == 303, path
            assert page.headers["location"].startswith("/login?next=")
        assert anonymous.post("/deliveries/1/retry").status_code == 401
        wrong = anonymous.post("/login", data={"user": USER, "password": "not it"})
        assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        assert "triage_session" not in wrong.cookies
        # A Basic password that is wrong is refused too; a right one passes.
        assert anonymous.get("/api/studies", auth=(USER, "nope")).status_code == 401
        assert anonymous.get("/api/studies", auth=(USER, PASSWORD)).status_code == 200
        assert anonymous.get("/readyz", auth=(USER, PASSWORD)).status_code == 200
    refusals = web_daemon.database().execute(
        "select count(*) from audit_events where event = 'connection-refused' "
        "and detail like '%HTTP sign-in refused%'"
    )
    assert (refusals.fetchone() or (0,))[0] >= 1


def test_a_study_from_arrival_to_dead_letter_and_retry(
    tmp_path: Path, web_daemon: TriageDaemon
) -> None:
    files = urgent_oct_studies(tmp_path)
    sent = web_daemon.storescu(files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    api = httpx.Client(base_url=web_daemon.web_url, auth=(USER, PASSWORD))

    # The API: the study appears on the urgent list, with its heat map.
    urgent = {"referral": "urgent"}
    studies = _poll(lambda: api.get("/api/studies", params=urgent).json()["studies"])
    study = studies[0]
    assert study["referral"] == "urgent" and study["modality"] == "oct"
    detail = _poll(
        lambda: (
            (d := api.get(f"/api/studies/{study['study_id']}").json())["images"][0]["map_id"] and d
        )
    )
    image = detail["images"][0]
    assert image["label"] in ("CNV", "DME") and abs(sum(image["probabilities"].values()) - 1) < 1e-3
    assert re.fullmatch(r"[0-9a-f]{64}", image["model_sha256"])
    png = api.get(f"/api/maps/{image['map_id']}.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert api.get("/api/studies", params={"modality": "cxr"}).json()["studies"] == []
    assert api.get("/api/studies", params={"referral": "later"}).status_code == 400
    schema = api.get("/api/openapi.json").json()
    assert {"/api/studies", "/api/studies/{study_id}", "/api/outbox"} <= set(schema["paths"])
    assert "triage_instances_received" in api.get("/metrics").text

    # A browser: sign in, see the list, open the study and its map.
    browser = httpx.Client(base_url=web_daemon.web_url, follow_redirects=False)
    signed_in = browser.post("/login", data={"user": USER, "password": PASSWORD, "next": "/"})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    listing = browser.get("/")
    assert listing.status_code == 200 and f'href="/studies/{study["study_id"]}"' in listing.text
    assert listing.headers["cache-control"] == "no-store"
    assert "script-src" not in listing.headers["content-security-policy"]  # default 'self'
    page = browser.get(f"/studies/{study['study_id']}")
    assert f'src="/maps/{image["map_id"]}.png"' in page.text
    assert image["model_sha256"] in page.text
    assert browser.get(f"/maps/{image['map_id']}.png").content.startswith(b"\x89PNG")

    # The SR's destination is down: a dead letter, then retried from the outbox.
    dead = _poll(lambda: api.get("/api/outbox", params={"state": "failed"}).json()["deliveries"])
    delivery_id = dead[0]["delivery_id"]
    assert "study_instance_uid" not in dead[0]
    outbox = browser.get("/outbox")
    assert f'action="/deliveries/{delivery_id}/retry"' in outbox.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', outbox.text)
    assert token is not None
    forged = browser.post(f"/deliveries/{delivery_id}/retry", data={"back": "outbox"})
    assert forged.status_code == 403
    retried = browser.post(
        f"/deliveries/{delivery_id}/retry", data={"csrf_token": token[1], "back": "outbox"}
    )
    assert retried.status_code == 303 and retried.headers["location"] == "/outbox"
    view = web_daemon.database()
    attempts = view.execute("select attempts from deliveries where id = ?", [delivery_id])
    # Put back with no attempts; the deliverer may already have tried once more.
    assert (attempts.fetchone() or (99,))[0] <= 1

    # Who looked at which study, who signed in, who retried: in the audit trail.
    events = {
        event: detail
        for event, detail in view.execute(
            "select event, detail from audit_events where event in "
            "('record-viewed', 'user-login', 'delivery-retried')"
        ).fetchall()
    }
    assert set(events) == {"record-viewed", "user-login", "delivery-retried"}
    assert f"user={USER}" in events["delivery-retried"]
    uids = view.execute(
        "select study_instance_uid from audit_events where event = 'record-viewed' "
        "and study_instance_uid != ''"
    ).fetchall()
    assert uids, "a study page view names its study in the audit row"
    # Nothing of the patient in the log, at the default level.
    name = dcm_patient(files[0])
    assert name not in web_daemon.log and study["patient_id"] not in web_daemon.log


def dcm_patient(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).PatientName)
