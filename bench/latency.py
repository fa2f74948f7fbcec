"""Latency under sustained load: push-to-SR times while scanners keep sending.

In one run:

1. **Capacity.** A flood of studies from ``--scanners`` parallel senders;
   capacity is images per second from the first image sent to the last
   study's SR delivered to the PACS.
2. **Sustained load.** ``--scanners`` scanners each send a study of
   ``IMAGES_PER_STUDY`` images every S seconds for ``--minutes``, S chosen
   so that the offered load is ``--load`` (0.7) of that capacity. Each
   scanner starts at its own offset, so that the studies do not come in
   lockstep.

For every study, the latency is from its last image acknowledged to its
first SR delivered to the PACS (``deliveries.delivered_at``, the daemon's
clock, which is this machine's). The backlog (images not yet triaged,
studies not yet delivered) is sampled twice a second. Printed: p50, p95
and p99, beside the goal of issue 13: p95 <= ``stable_seconds`` + 2x the
model's batch time (one model call on ``[models] batch_size`` images,
measured here). With ``--plot``, a PNG of latency and backlog over time.

Run as root in a loopback-only namespace::

    bash tests/run_in_netns.sh .venv/bin/python -m bench.latency --plot bench/results/latency.png
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.ingest import IMAGES_PER_STUDY, add_daemon_env_argument, copies, push
from model_runtime.classifier import Classifier
from phantoms.demo import ensure_models
from phantoms.files import write_dicom_studies
from tests.peers import Orthanc, TriageDaemon, run_tool

STABLE_SECONDS = 2.0
BATCH_SIZE = 16  # the daemon's default [models] batch_size


@dataclasses.dataclass
class Sent:
    accession: str
    finished: dt.datetime  # UTC, naive, as the daemon stores times


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def batch_seconds(model: Path, batch_size: int) -> float:
    """The median time of one model call on ``batch_size`` images, as the daemon runs it."""
    classifier = Classifier(model, device="cpu")
    spec = classifier.manifest.input
    batch = np.zeros((batch_size, spec.height, spec.width, spec.channels), dtype=np.float32)
    classifier.predict(batch)
    times = []
    for _ in range(9):
        started = time.perf_counter()
        classifier.predict(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def studies_of(files: Sequence[Path]) -> list[list[Path]]:
    return [list(files[i : i + IMAGES_PER_STUDY]) for i in range(0, len(files), IMAGES_PER_STUDY)]


def send_study(daemon: TriageDaemon, study: list[Path], scanner: str) -> Sent:
    command = daemon.storescu_command(study)
    command[command.index("SCANNER")] = scanner
    result = run_tool(command, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    accession = f"BENCH{int(study[0].stem):06d}"
    return Sent(accession, utc_now())


def delivered_at(daemon: TriageDaemon) -> dict[str, dt.datetime]:
    """Each study's first SR delivered to the PACS, by accession number."""
    rows = daemon.database().execute(
        "select s.accession_number, min(d.delivered_at) from deliveries d "
        "join reports r on r.id = d.report_fk join studies s on s.id = r.study_fk "
        "where d.state = 'delivered' group by s.accession_number"
    )
    return {str(accession): _as_datetime(value) for accession, value in rows.fetchall()}


def _as_datetime(value: dt.datetime | str) -> dt.datetime:
    # SQLite hands back text; PostgreSQL a datetime.
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)


def backlog(daemon: TriageDaemon) -> tuple[int, int]:
    """(images not yet triaged, studies without a delivered SR)."""
    database = daemon.database()
    (images,) = database.execute(
        "select count(*) from instances where state = 'received'"
    ).fetchone() or (0,)
    (studies,) = database.execute(
        "select count(*) from studies s where not exists (select 1 from reports r "
        "join deliveries d on d.report_fk = r.id where r.study_fk = s.id "
        "and d.state = 'delivered')"
    ).fetchone() or (0,)
    return int(images), int(studies)


def start_daemon(
    folder: Path, models: dict[str, Path], pacs: Orthanc, env: dict[str, str]
) -> TriageDaemon:
    daemon = TriageDaemon(
        folder / "state",
        models,
        **env,
        TRIAGE_STUDY_STABLE_SECONDS=str(STABLE_SECONDS),
        TRIAGE_DICOM_MAX_ASSOCIATIONS="32",
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER="32",
        TRIAGE_DESTINATIONS=(
            f'[{{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": {pacs.dicom_port}}}]'
        ),
    )
    pacs.start(triage_port=daemon.port)
    daemon.start()
    return daemon


def wait_delivered(daemon: TriageDaemon, accessions: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not accessions <= set(delivered_at(daemon)):
        if time.monotonic() > deadline:
            raise RuntimeError("not every study was delivered in time\n" + daemon.log[-3000:])
        time.sleep(0.2)


def capacity(
    scratch: Path, models: dict[str, Path], files: list[Path], senders: int, env: dict[str, str]
) -> float:
    """Images per second, first image sent to last SR delivered, under a flood."""
    pacs = Orthanc(scratch / "pacs-flood")
    daemon = start_daemon(scratch / "flood", models, pacs, env)
    try:
        started = time.monotonic()
        _seconds, acknowledged = push(files, "TRIAGE", daemon.port, senders)
        if acknowledged != len(files):
            raise RuntimeError(f"{acknowledged} of {len(files)} acknowledged")
        accessions = {f"BENCH{int(study[0].stem):06d}" for study in studies_of(files)}
        wait_delivered(daemon, accessions, timeout=600)
        return len(files) / (time.monotonic() - started)
    finally:
        daemon.stop()
        pacs.stop()


def sustained(
    scratch: Path,
    models: dict[str, Path],
    files: list[Path],
    scanners: int,
    period: float,
    minutes: float,
    env: dict[str, str],
) -> tuple[list[float], list[tuple[float, float, int, int]]]:
    """(latency of each study in seconds, backlog samples (t, latency-so-far, images, studies))."""
    studies = studies_of(files)
    pacs = Orthanc(scratch / "pacs-sustained")
    daemon = start_daemon(scratch / "sustained", models, pacs, env)
    sent: list[Sent] = []
    samples: list[tuple[float, float, int, int]] = []
    lock = threading.Lock()
    begun = time.monotonic()
    end = begun + minutes * 60

    def scanner(number: int) -> None:
        mine = studies[number::scanners]
        next_at = begun + period * number / scanners
        for study in mine:
            if next_at >= end:
                return
            time.sleep(max(0.0, next_at - time.monotonic()))
            record = send_study(daemon, study, f"SCANNER{number}")
            with lock:
                sent.append(record)
            next_at += period

    threads = [threading.Thread(target=scanner, args=(n,)) for n in range(scanners)]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            images, waiting = backlog(daemon)
            samples.append((time.monotonic() - begun, 0.0, images, waiting))
            time.sleep(0.5)
        for thread in threads:
            thread.join()
        wait_delivered(daemon, {record.accession for record in sent}, timeout=300)
        delivered = delivered_at(daemon)
        latencies = [
            (delivered[record.accession] - record.finished).total_seconds() for record in sent
        ]
        return latencies, samples
    finally:
        daemon.stop()
        pacs.stop()


def plot(
    path: Path,
    latencies: list[float],
    samples: list[tuple[float, float, int, int]],
    goal: float,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=False)
    top.plot(range(1, len(latencies) + 1), latencies, ".", markersize=4)
    top.axhline(goal, color="red", linestyle="--", label=f"goal (p95 <= {goal:.2f} s)")
    top.set_xlabel("study, in the order sent")
    top.set_ylabel("push-to-SR latency (s)")
    top.legend()
    seconds = [sample[0] for sample in samples]
    bottom.plot(seconds, [sample[2] for sample in samples], label="images not yet triaged")
    bottom.plot(seconds, [sample[3] for sample in samples], label="studies without an SR")
    bottom.set_xlabel("seconds into the run")
    bottom.set_ylabel("backlog")
    bottom.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def percentile(values: list[float], fraction: float) -> float:
    return float(np.percentile(values, fraction * 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scanners", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    parser.add_argument("--flood", type=int, default=160, help="OCT images in the capacity flood")
    parser.add_argument("--models", default="var/bench", help="state dir with (or for) models")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    add_daemon_env_argument(parser)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.daemon_env)

    state = Path(args.models).absolute()
    ensure_models(state)
    models = {m: state / "models" / m for m in ("oct", "cxr")}
    batch = batch_seconds(models["oct"], BATCH_SIZE)
    goal = STABLE_SECONDS + 2 * batch
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as temporary:
        scratch = Path(temporary)
        source = sorted(write_dicom_studies("oct", scratch, 1, seed=5).rglob("*.dcm"))[0]
        flood = copies(source, scratch / "flood-files", args.flood)
        rate = capacity(scratch, models, flood, args.scanners, env)
        offered = args.load * rate
        period = args.scanners * IMAGES_PER_STUDY / offered
        count = int(args.minutes * 60 / period + 1) * args.scanners * IMAGES_PER_STUDY
        files = copies(source, scratch / "sustained-files", count)
        latencies, samples = sustained(
            scratch, models, files, args.scanners, period, args.minutes, env
        )
    p50, p95, p99 = (percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    peak_images = max(sample[2] for sample in samples)
    peak_studies = max(sample[3] for sample in samples)
    print(
        f"capacity {rate:.1f} images/s (flood of {len(flood)}, {args.scanners} senders); "
        f"sustained {args.load:.0%} = {offered:.1f} images/s: {args.scanners} scanners, a study "
        f"of {IMAGES_PER_STUDY} every {period:.1f} s each, {args.minutes:g} min, "
        f"{len(latencies)} studies{' ' + ' '.join(args.daemon_env) if args.daemon_env else ''}"
    )
    print(
        f"push-to-SR latency p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s; "
        f"goal p95 <= stable_seconds {STABLE_SECONDS:g} + 2 x batch {batch * 1000:.1f} ms "
        f"= {goal:.2f} s: {'met' if p95 <= goal else 'NOT met'}; "
        f"peak backlog {peak_images} images, {peak_studies} studies"
    )
    if args.plot is not None:
        plot(
            args.plot,
            latencies,
            samples,
            goal,
            f"{args.scanners} scanners at {args.load:.0%} of capacity ({offered:.1f} images/s)",
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
