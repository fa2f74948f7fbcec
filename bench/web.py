"""The web pages and the API with many studies: how fast the urgent list and
a study page answer, on SQLite or PostgreSQL.

The database is given ``--studies`` triaged studies (one image each, its
result, a report and a delivery; a fifth of them urgent, one delivery in
twenty dead), then the real daemon serves it and one signed-in client asks
each route ``--requests`` times in turn. Each answer's time is measured at
the client; every page view writes its audit row, as in use::

    bash tests/run_in_netns.sh .venv/bin/python -m bench.web
    bash tests/run_in_netns.sh .venv/bin/python -m bench.web --database postgresql
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select

from bench.harness import bench_database, bench_models
from daemon.web.credentials import hash_password
from storage.database import create_database_engine
from storage.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceResult,
    InstanceState,
    OcclusionMapRecord,
    Patient,
    Report,
    Series,
    Study,
    StudyResult,
    StudyState,
)
from tests.peers import WEB_PASSWORD, WEB_USER, TriageDaemon, free_port

OCT_LABELS = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}
BATCH = 1000


def seed(database_url: str, studies: int) -> None:
    """``studies`` triaged studies, in batches of Core inserts."""
    engine = create_database_engine(database_url)
    rng = random.Random(7)
    start = dt.datetime(2026, 1, 1)
    with engine.begin() as connection:
        for first in range(1, studies + 1, BATCH):
            ids = range(first, min(first + BATCH, studies + 1))
            when = {n: start + dt.timedelta(minutes=7 * n) for n in ids}
            labels = {n: rng.choice(["CNV", "DRUSEN", "NORMAL", "NORMAL", "NORMAL"]) for n in ids}
            connection.execute(
                insert(Patient),
                [{"id": n, "patient_id": f"P{n:07d}", "patient_name": f"PATIENT^{n}"} for n in ids],
            )
            connection.execute(
                insert(Study),
                [
                    {
                        "id": n, "study_instance_uid": f"2.25.{n}", "patient_fk": n,
                        "accession_number": f"A{n}", "study_date": when[n].strftime("%Y%m%d"),
                        "study_description": "OCT macula", "first_received_at": when[n],
                        "last_received_at": when[n], "state": StudyState.REPORTED,
                        "patient_name": f"PATIENT^{n}",
                    }
                    for n in ids
                ],
            )  # fmt: skip
            connection.execute(
                insert(Series),
                [
                    {"id": n, "series_instance_uid": f"2.25.1{n}", "study_fk": n, "modality": "OPT"}
                    for n in ids
                ],
            )
            connection.execute(
                insert(Instance),
                [
                    {
                        "id": n, "sop_instance_uid": f"2.25.2{n}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.77.1.5.4", "series_fk": n,
                        "study_fk": n, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "path": f"/nowhere/{n}.dcm", "size_bytes": 1, "sha256": "0" * 64,
                        "received_at": when[n], "state": InstanceState.TRIAGED,
                    }
                    for n in ids
                ],
            )  # fmt: skip
            probabilities = {n: _probabilities(labels[n], rng) for n in ids}
            common = {"modality": "oct", "model_name": "bench", "model_version": "1"}
            connection.execute(
                insert(InstanceResult),
                [
                    {
                        **common, "instance_fk": n, "model_sha256": "ab" * 32,
                        "label": labels[n], "referral": OCT_LABELS[labels[n]],
                        "probability": probabilities[n][labels[n]],
                        "probabilities": probabilities[n], "frame_number": 3,
                        "execution_provider": "CPUExecutionProvider", "inference_ms": 5.0,
                        "created_at": when[n],
                    }
                    for n in ids
                ],
            )  # fmt: skip
            connection.execute(
                insert(StudyResult),
                [
                    {
                        "study_fk": n, "deciding_instance_fk": n, "modality": "oct",
                        "label": labels[n], "referral": OCT_LABELS[labels[n]],
                        "probability": probabilities[n][labels[n]], "instances_triaged": 1,
                        "decided_at": when[n],
                    }
                    for n in ids
                ],
            )  # fmt: skip
            connection.execute(
                insert(Report),
                [
                    {
                        "id": n, "study_fk": n, "sop_instance_uid": f"2.25.3{n}",
                        "series_instance_uid": f"2.25.4{n}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
                        "content": b"\0" * 2048, "created_at": when[n],
                    }
                    for n in ids
                ],
            )  # fmt: skip
            connection.execute(
                insert(Delivery),
                [
                    {
                        "report_fk": n, "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                        "state": DeliveryState.FAILED if n % 20 == 0 else DeliveryState.DELIVERED,
                        "attempts": 1, "next_attempt_at": when[n],
                    }
                    for n in ids
                ],
            )  # fmt: skip
            urgent = [n for n in ids if OCT_LABELS[labels[n]] == "urgent"]
            connection.execute(
                insert(OcclusionMapRecord),
                [
                    {
                        **common, "instance_fk": n, "study_fk": n,
                        "sop_instance_uid": f"2.25.5{n}", "content": b"\0" * 4096,
                        "label": labels[n], "box_size": 20, "mode": "fast", "stride": 1,
                        "forward_passes": 100, "compute_ms": 50.0, "created_at": when[n],
                    }
                    for n in urgent
                ],
            )  # fmt: skip
    with engine.connect() as connection:
        counted = connection.scalar(select(func.count()).select_from(StudyResult))
    assert counted == studies, counted
    engine.dispose()


def _probabilities(label: str, rng: random.Random) -> dict[str, float]:
    rest = [name for name in OCT_LABELS if name != label]
    top = rng.uniform(0.6, 0.99)
    shares = [rng.random() for _ in rest]
    return {label: top} | {
        name: (1 - top) * share / sum(shares) for name, share in zip(rest, shares, strict=True)
    }


def timings(client: httpx.Client, paths: list[str]) -> list[float]:
    """Milliseconds of each GET, after one warm-up."""
    client.get(paths[0]).raise_for_status()
    spent = []
    for path in paths:
        began = time.perf_counter()
        answer = client.get(path)
        spent.append((time.perf_counter() - began) * 1000)
        answer.raise_for_status()
    return spent


def describe(name: str, spent: list[float]) -> str:
    cuts = statistics.quantiles(spent, n=20)
    return (
        f"{name:<34} n={len(spent):<4} p50 {statistics.median(spent):6.1f} ms   "
        f"p95 {cuts[18]:6.1f} ms   max {max(spent):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="per route")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--models", default="var/bench", help="state dir with (or for) models")
    args = parser.parse_args()
    models = bench_models(args.models)
    with (
        bench_database(args.database),
        tempfile.TemporaryDirectory(prefix="bench-web-") as temporary,
    ):
        scratch = Path(temporary)
        users = scratch / "users"
        users.write_text(f"{WEB_USER}:{hash_password(WEB_PASSWORD)}\n")
        daemon = TriageDaemon(
            scratch / "state",
            models,
            TRIAGE_HTTP_PORT=str(free_port()),
            TRIAGE_HTTP_CREDENTIALS_FILE=str(users),
        )
        daemon.triage("db", "upgrade")
        began = time.monotonic()
        seed(daemon.database_url, args.studies)
        print(f"{args.database}: {args.studies} studies seeded in {time.monotonic() - began:.1f} s")
        daemon.start(upgrade=False)
        try:
            base = f"http://127.0.0.1:{daemon.env['TRIAGE_HTTP_PORT']}"
            with httpx.Client(base_url=base) as client:
                client.post("/login", data={"user": WEB_USER, "password": WEB_PASSWORD})
                rng = random.Random(11)
                picks = [rng.randint(1, args.studies) for _ in range(args.requests)]
                routes = {
                    "liveness          /livez": ["/livez"] * args.requests,
                    "urgent list page  /": ["/"] * args.requests,
                    "urgent list API   /api/studies": ["/api/studies?referral=urgent"]
                    * args.requests,
                    "filtered page     /?modality&from": [
                        "/?modality=oct&referral=routine&from=2026-01-10&to=2026-01-20"
                    ]
                    * args.requests,
                    "study page        /studies/N": [f"/studies/{n}" for n in picks],
                    "study API         /api/studies/N": [f"/api/studies/{n}" for n in picks],
                }
                for name, paths in routes.items():
                    print(describe(name, timings(client, paths)), flush=True)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
