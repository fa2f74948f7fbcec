"""Traffic run: the real daemon under the shapes of real traffic, larger than CI's.

Run it as root inside a loopback-only network namespace, as ``make test``
does (it starts Orthanc and, with ``--database postgresql``, PostgreSQL)::

    bash tests/run_in_netns.sh .venv/bin/python -m bench.traffic --oct-studies 20
    TRIAGE_TEST_DATABASE=postgresql bash tests/run_in_netns.sh \\
        .venv/bin/python -m bench.traffic --database postgresql

What it does, in order (every step bounded in count and time):

1. OCT studies (two series each) from one scanner and chest studies (PA
   plus lateral) from another, every image over its own association, all
   at once, while the PACS is down (nothing listens);
2. duplicates of some images; the PACS then comes up *silent* (accepts TCP,
   never answers), then for real;
3. late images after their study's SR;
4. on PostgreSQL, a server restart while images arrive;
5. the spool's disk (a tmpfs) fills up while images arrive, then frees.

Then it checks the invariants of ``tests/traffic.py`` and prints one line
of figures per step and the findings, for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phantoms.demo import ensure_models
from tests import peers
from tests.peers import Orthanc, SilentPeer, TriageDaemon
from tests.traffic import (
    PlannedStudy,
    add_late_image,
    fill,
    phantom_pool,
    plan_studies,
    send_in_parallel,
    send_like_a_scanner,
    small_disk,
    study_batches,
    wait_until_reported,
)


def _silent_for(port: int, seconds: float) -> int:
    """Hold ``port`` open without answering for ``seconds``; return connections held."""
    silent = SilentPeer(port)
    silent.start()
    time.sleep(seconds)
    silent.stop()
    return silent.accepted


def _through_fault(
    daemon: TriageDaemon,
    studies: list[PlannedStudy],
    begin: Callable[[], object],
    end: Callable[[], object],
    parallel: int,
) -> tuple[set[str], set[str]]:
    """Send ``studies`` while a fault lasts, end it, send them again as a scanner would.

    Returns (acknowledged during the fault, acknowledged in all).
    """
    begin()
    during = send_in_parallel(daemon, study_batches(studies), "OCTSCANNER", parallel)
    end()
    return during, during | send_in_parallel(daemon, study_batches(studies), "OCTSCANNER", parallel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oct-studies", type=int, default=20)
    parser.add_argument("--oct-images", type=int, default=6)
    parser.add_argument("--cxr-studies", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=24, help="associations at once")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--silent-seconds", type=float, default=20.0)
    parser.add_argument("--state-dir", default="var/bench")
    args = parser.parse_args()

    state = Path(args.state_dir).resolve()
    ensure_models(state)
    models = {m: state / "models" / m for m in ("oct", "cxr")}
    work = Path(tempfile.mkdtemp(prefix="triage-traffic-"))
    server = None
    if args.database == "postgresql":
        from tests.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        peers.DATABASE_FACTORY.append(server.new_database_url)
    unmount = contextlib.ExitStack()
    spool = unmount.enter_context(small_disk(work / "spool", "512m"))
    if spool is None:
        raise SystemExit("Run as root: the spool is a tmpfs that the run fills up.")
    pacs = Orthanc(work / "orthanc")
    daemon = TriageDaemon(
        work / "state",
        models,
        TRIAGE_DESTINATIONS=json.dumps(
            [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}]
        ),
        # Both scanners at full parallelism, and room for the worklist.
        TRIAGE_DICOM_MAX_ASSOCIATIONS=str(2 * args.parallel + 8),
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER=str(2 * args.parallel + 8),
        TRIAGE_STORAGE_SPOOL_DIR=str(spool),
        TRIAGE_STORAGE_MIN_FREE_BYTES="0",
        TRIAGE_DELIVERY_RETRY_SCHEDULE="1000x1s",
    )
    figures: list[str] = []
    try:
        oct_pool = phantom_pool(work / "pool", "oct", 3, seed=401)
        cxr_pool = phantom_pool(work / "pool", "cxr", 3, seed=402)
        octs = plan_studies(
            oct_pool, work / "oct", studies=args.oct_studies, images_per_study=args.oct_images
        )
        chests = plan_studies(
            cxr_pool,
            work / "cxr",
            studies=args.cxr_studies,
            images_per_study=2,
            views=("PA", "LL"),
            seed=1,
        )
        studies = [*octs, *chests]
        daemon.start()
        pid = daemon.process.pid if daemon.process else 0

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as scanners:
            sent = [
                scanners.submit(send_like_a_scanner, daemon, study_batches(s), ae, args.parallel)
                for s, ae in ((octs, "OCTSCANNER"), (chests, "DXROOM1"))
            ]
            results = [f.result() for f in sent]
        acknowledged = set().union(*(uids for uids, _missing in results))
        first_round_missing = sum(missing for _uids, missing in results)
        images = sum(len(s.images) for s in studies)
        elapsed = time.monotonic() - started
        figures.append(
            f"parallel arrival: {images} images of {len(studies)} studies, each over its own "
            f"association, two scanners with {args.parallel} at once each: "
            f"{first_round_missing} not acknowledged at the first try (rejected or refused), "
            f"{len(acknowledged)}/{images} acknowledged after the scanners' retries, "
            f"in {elapsed:.1f} s"
        )
        rejected = daemon.database().execute(
            "select count(*) from audit_events where event = 'rejected'"
        )
        figures.append(f"associations rejected (audit): {rejected.fetchone()[0]}")
        again = [s.images[0] for s in octs[: max(1, len(octs) // 4)]]
        duplicates = send_in_parallel(daemon, [[i] for i in again], "OCTSCANNER", args.parallel)
        figures.append(f"duplicates: {len(duplicates)}/{len(again)} acknowledged again")

        daemon.wait_for_reported_studies(len(studies), timeout=600)
        held = _silent_for(pacs.dicom_port, args.silent_seconds)
        figures.append(f"PACS down, then silent for {args.silent_seconds:.0f} s: {held} held")
        pacs.start(triage_port=daemon.port)

        late = [add_late_image(s, work / "late") for s in studies[:: max(1, len(studies) // 5)]]
        acknowledged |= send_in_parallel(daemon, [[i] for i in late], "OCTSCANNER", args.parallel)
        figures.append(f"late images after their SR: {len(late)}")

        if server is not None:
            restart = plan_studies(
                oct_pool, work / "restart", studies=4, images_per_study=3, seed=2
            )
            database = server

            def restart_end() -> None:
                time.sleep(3)
                database.resume()

            during, sent = _through_fault(
                daemon, restart, database.pause, restart_end, args.parallel
            )
            acknowledged |= sent
            studies += restart
            figures.append(
                f"PostgreSQL restart: {len(during)} acknowledged while it was down, "
                f"{sum(len(s.images) for s in restart)} after"
            )

        full = plan_studies(oct_pool, work / "full", studies=4, images_per_study=4, seed=3)
        full_images = sum(len(s.images) for s in full)
        fillers: list[Path] = []
        during, sent = _through_fault(
            daemon,
            full,
            lambda: fillers.append(fill(spool, leave_bytes=2_000_000)),
            lambda: fillers.pop().unlink(),
            args.parallel,
        )
        acknowledged |= sent
        studies += full
        figures.append(
            f"disk full: {full_images - len(during)} of {full_images} images refused, "
            "then all sent again"
        )

        started = time.monotonic()
        findings = wait_until_reported(daemon, studies, acknowledged, pacs, timeout=900)
        figures.append(f"settled in {time.monotonic() - started:.1f} s after the last fault")
        restarted = daemon.process is None or daemon.process.pid != pid
        restarted = restarted or daemon.process.poll() is not None
        figures.append(f"daemon restarted or died: {'yes' if restarted else 'no'}")
        figures.append(f"findings: {findings.summary()}")
        refusals = Counter(
            match.group(1).strip()
            for match in re.finditer(
                r"(?:Refusing|Cannot record) an instance from \S+: ([^:(\n]+)", daemon.log
            )
        )
        figures.append(f"refusals by reason, from the daemon's log: {dict(refusals)}")
        for line in figures:
            print(line)
        if not findings.held:
            print(findings)
    finally:
        daemon.stop()
        pacs.stop()
        unmount.close()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
