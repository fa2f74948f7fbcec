"""Ingest: how fast the daemon acknowledges images, next to Orthanc and dcmtk's storescp.

In one run, the same files go to each receiver from ``--senders`` parallel
``storescu`` processes (one association each), and the acknowledgement rate
is instances per second from the first association to the last answer.
Each figure is a ratio to Orthanc's measured in the same run, for
``bench/README.md``. Run it as root in a loopback-only namespace::

    bash tests/run_in_netns.sh .venv/bin/python -m bench.ingest
    TRIAGE_TEST_DATABASE=postgresql bash tests/run_in_netns.sh \\
        .venv/bin/python -m bench.ingest --database postgresql

``--receivers 1,2,4`` runs the daemon once per count of receiver
processes (``[dicom] receivers``), ``--hold 0,2`` once per
``[dicom] ingest_priority_hold_seconds`` (0: triage does not yield); a bare pynetdicom receiver
(``bench.bare_receiver``) shows what pynetdicom alone costs. ``--stow`` adds the daemon
receiving the same files by STOW-RS, ``--senders`` clients at once, one study a request.

The images: phantom OCT volumes (5 B-scans of 256 x 320, 8 bits, 410 KB)
and phantom chest radiographs enlarged to 2048 x 1920 at 16 bits (7.9 MB),
each copy with its own UIDs, four images to a study. Every receiver writes
each instance to disk; only the daemon also fsyncs and commits a database
row before it answers, and then triages, reports and maps them.

Beside each rate: the CPU per image of the receiver's whole process tree
during the burst, and how busy the host's cores were (``/proc``); for the
daemon also when its last study was reported, the CPU per image it spent
after the burst until then, and the wall and thread-CPU time per image of
each stage of its C-STORE handler (``triage_store_stage_seconds``). Each
figure is from the round of median rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from bench.harness import bench_database, bench_models
from bench.process_cpu import host_busy, tree_cpu_seconds
from daemon.web.credentials import hash_password
from phantoms.files import write_dicom_studies
from tests.peers import WEB_PASSWORD, WEB_USER, Orthanc, TriageDaemon, dcmtk_env, free_port
from tests.traffic import acknowledged_files

IMAGES_PER_STUDY = 4


@dataclasses.dataclass
class Running:
    """A receiver under test: where to send, whose CPU counts, and (the
    daemon) how to wait for its reports and read its store stages."""

    port: int
    pid: int
    daemon: TriageDaemon | None = None
    metrics_port: int = 0
    # Set: the files go by STOW-RS to this URL, one study a request.
    stow_url: str = ""


@dataclasses.dataclass
class Round:
    """One push to one fresh receiver."""

    rate: float  # acknowledged instances per second
    cpu_ms: float  # the receiver tree's CPU per image during the burst
    host_busy: float  # share of all cores busy during the burst
    last_report_s: float | None = None  # first image sent to the last study reported
    after_cpu_ms: float | None = None  # the tree's CPU per image from then to it
    stages: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


Receiver = Callable[[Path], contextlib.AbstractContextManager[Running]]


def copies(source: Path, out: Path, count: int, enlarge: int = 1) -> list[Path]:
    """``count`` copies of ``source`` with fresh UIDs, ``IMAGES_PER_STUDY`` to a study."""
    out.mkdir(parents=True, exist_ok=True)
    dataset = dcmread(source)
    if enlarge > 1:
        pixels = dataset.pixel_array
        bigger = np.kron(pixels, np.ones((enlarge, enlarge), dtype=pixels.dtype))
        dataset.Rows, dataset.Columns = bigger.shape
        dataset.PixelData = bigger.tobytes()
    files = []
    for number in range(count):
        if number % IMAGES_PER_STUDY == 0:
            dataset.StudyInstanceUID = generate_uid()
            dataset.SeriesInstanceUID = generate_uid()
            dataset.AccessionNumber = f"BENCH{number:06d}"
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = number % IMAGES_PER_STUDY + 1
        path = out / f"{number:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def push(files: Sequence[Path], called: str, port: int, senders: int) -> tuple[float, int]:
    """Send ``files`` over ``senders`` associations at once; (seconds, acknowledged)."""
    shares = [list(files[i::senders]) for i in range(senders)]

    def send(share: list[Path]) -> int:
        result = subprocess.run(
            ["storescu", "-v", "-aet", "SCANNER", "-aec", called, "127.0.0.1", str(port)]
            + [str(p) for p in share],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=600,
        )
        return len(acknowledged_files(result.stdout + result.stderr))

    started = time.monotonic()
    with ThreadPoolExecutor(senders) as pool:
        acknowledged = sum(pool.map(send, shares))
    return time.monotonic() - started, acknowledged


@contextlib.contextmanager
def storescp(folder: Path) -> Iterator[Running]:
    """dcmtk's storescp, a process per association, writing every instance to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "--fork", "-aet", "STORESCP", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(),
    )
    time.sleep(0.5)
    try:
        yield Running(port, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def bare_pynetdicom(folder: Path) -> Iterator[Running]:
    """``bench.bare_receiver``: pynetdicom writing raw bytes and fsyncing, nothing more."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_receiver", str(port), str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    try:
        yield Running(port, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def orthanc(folder: Path) -> Iterator[Running]:
    peer = Orthanc(folder)
    peer.start()
    try:
        assert peer.process is not None
        yield Running(peer.dicom_port, peer.process.pid)
    finally:
        peer.stop()


@contextlib.contextmanager
def daemon(
    folder: Path, models: dict[str, Path], env: dict[str, str], stow: bool = False
) -> Iterator[Running]:
    metrics_port = free_port()
    http = {}
    if stow:
        folder.mkdir(parents=True, exist_ok=True)
        users = folder / "http-users"
        users.write_text(f"{WEB_USER}:{hash_password(WEB_PASSWORD)}\n")
        http = {"TRIAGE_HTTP_PORT": str(free_port()), "TRIAGE_HTTP_CREDENTIALS_FILE": str(users)}
    process = TriageDaemon(
        folder,
        models,
        **{
            "TRIAGE_DICOM_MAX_ASSOCIATIONS": "16",
            "TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER": "16",
            "TRIAGE_METRICS_PORT": str(metrics_port),
            **http,
            **env,
        },
    )
    process.start()
    try:
        assert process.process is not None
        stow_url = f"http://127.0.0.1:{http['TRIAGE_HTTP_PORT']}/dicomweb/studies" if stow else ""
        yield Running(process.port, process.process.pid, process, metrics_port, stow_url)
    finally:
        process.stop()


def stow_push(files: Sequence[Path], url: str, senders: int) -> tuple[float, int]:
    """Send ``files`` by STOW-RS from ``senders`` clients at once, one study
    (``IMAGES_PER_STUDY`` files) a request; (seconds, acknowledged)."""
    requests = [
        list(files[i : i + IMAGES_PER_STUDY]) for i in range(0, len(files), IMAGES_PER_STUDY)
    ]
    shares = [requests[i::senders] for i in range(senders)]
    boundary = "bench-stow-boundary"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    def body(study: list[Path]) -> Iterator[bytes]:
        for path in study:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    def send(share: list[list[Path]]) -> int:
        stored = 0
        with httpx.Client(auth=(WEB_USER, WEB_PASSWORD), timeout=600) as client:
            for study in share:
                answer = client.post(
                    url, content=body(study), headers={"content-type": content_type}
                )
                stored += len(answer.json().get("00081199", {}).get("Value", []))
        return stored

    started = time.monotonic()
    with ThreadPoolExecutor(senders) as pool:
        acknowledged = sum(pool.map(send, shares))
    return time.monotonic() - started, acknowledged


STAGE_SUM = re.compile(r'triage_store_stage_seconds_sum\{clock="(\w+)",stage="(\w+)"\} (\S+)')


def store_stages(metrics_port: int, images: int) -> dict[str, tuple[float, float]]:
    """Each store stage's (wall, thread CPU) ms per image, from the daemon's
    metrics endpoint (every receiving process's counts, added up)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    sums: dict[str, dict[str, float]] = {}
    for clock, stage, value in STAGE_SUM.findall(text):
        sums.setdefault(stage, {})[clock] = 1000 * float(value) / images
    return {stage: (c.get("wall", 0.0), c.get("cpu", 0.0)) for stage, c in sums.items()}


def measure_round(running: Running, called: str, files: Sequence[Path], senders: int) -> Round:
    """Push ``files`` once; for the daemon, wait until every study is reported."""
    # One daemon state serves every kind of image: count what this round adds.
    reported_before = running.daemon.reported_studies() if running.daemon is not None else 0
    cpu_before, (busy_before, total_before) = tree_cpu_seconds(running.pid), host_busy()
    started = time.monotonic()
    if running.stow_url:
        seconds, acknowledged = stow_push(files, running.stow_url, senders)
    else:
        seconds, acknowledged = push(files, called, running.port, senders)
    cpu_after, (busy_after, total_after) = tree_cpu_seconds(running.pid), host_busy()
    if acknowledged != len(files):
        raise RuntimeError(f"{acknowledged} of {len(files)} acknowledged")
    result = Round(
        rate=acknowledged / seconds,
        cpu_ms=1000 * (cpu_after - cpu_before) / acknowledged,
        host_busy=(busy_after - busy_before) / max(total_after - total_before, 1e-9),
    )
    if running.daemon is not None:
        running.daemon.wait_for_reported_studies(
            reported_before + len(files) // IMAGES_PER_STUDY, timeout=600
        )
        result.last_report_s = time.monotonic() - started
        result.after_cpu_ms = 1000 * (tree_cpu_seconds(running.pid) - cpu_after) / acknowledged
        result.stages = store_stages(running.metrics_port, acknowledged)
    return result


def measure(
    name: str,
    receiver: Receiver,
    called: str,
    files: Sequence[Path],
    senders: int,
    rounds: int,
    scratch: Path,
) -> Round:
    """The round of median rate over ``rounds``, each on a fresh receiver."""
    results = []
    for number in range(rounds):
        with receiver(scratch / f"{name}-{number}") as running:
            try:
                results.append(measure_round(running, called, files, senders))
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}") from exc
    results.sort(key=lambda r: r.rate)
    return results[len(results) // 2]


def describe(name: str, result: Round, orthanc_rate: float, bare_rate: float | None) -> str:
    """One receiver's line: the rate and its ratios, CPU, cores, and the daemon's extras."""
    line = (
        f"  {name}: {result.rate:.1f}/s ({result.rate / orthanc_rate:.2f}x Orthanc"
        + (f", {result.rate / bare_rate:.2f}x bare" if bare_rate else "")
        + f"), CPU {result.cpu_ms:.1f} ms/image, cores busy {result.host_busy:.0%}"
    )
    if result.last_report_s is not None:
        line += (
            f"; last study reported {result.last_report_s:.1f} s after the first image sent, "
            f"then {result.after_cpu_ms:.1f} ms/image of CPU"
        )
    if result.stages:
        line += "\n    store stages, wall/thread-CPU ms per image: " + ", ".join(
            f"{stage} {wall:.2f}/{cpu:.2f}" for stage, (wall, cpu) in sorted(result.stages.items())
        )
    return line


def add_daemon_env_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="settings for the daemon, e.g. TRIAGE_OCCLUSION_ENABLED=false",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oct", type=int, default=200, help="OCT volumes per round")
    parser.add_argument("--cxr", type=int, default=40, help="chest radiographs per round")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="var/bench", help="state dir with (or for) models")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    add_daemon_env_argument(parser)
    parser.add_argument("--only", choices=["OCT", "CXR"], default=None)
    parser.add_argument(
        "--receivers",
        default="1",
        help="the daemon once for each of these [dicom] receivers counts, e.g. 1,2,4",
    )
    parser.add_argument(
        "--stow",
        action="store_true",
        help="also the daemon receiving the same files by STOW-RS (one study a request)",
    )
    parser.add_argument(
        "--hold",
        default="",
        help="the daemon once for each of these [dicom] ingest_priority_hold_seconds, e.g. 0,2",
    )
    args = parser.parse_args()

    models = bench_models(args.models)
    daemon_env = dict(item.split("=", 1) for item in args.daemon_env)
    with (
        bench_database(args.database),
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as temporary,
    ):
        scratch = Path(temporary)
        oct_source = sorted(write_dicom_studies("oct", scratch, 1, seed=5).rglob("*.dcm"))
        cxr_source = sorted(write_dicom_studies("cxr", scratch, 1, seed=6).rglob("*.dcm"))
        sets = {
            "OCT": copies(oct_source[0], scratch / "sent-oct", args.oct),
            "CXR": copies(cxr_source[0], scratch / "sent-cxr", args.cxr, enlarge=4),
        }
        receivers: dict[str, tuple[Receiver, str]] = {
            "storescp": (storescp, "STORESCP"),
            "Orthanc": (orthanc, "ORTHANC"),
            "bare pynetdicom": (bare_pynetdicom, "BARE"),
        }
        for count in args.receivers.split(","):
            for hold in args.hold.split(",") if args.hold else [""]:
                env = {**daemon_env, "TRIAGE_DICOM_RECEIVERS": count}
                name = f"dicom-triage x{count}"
                if hold:
                    env["TRIAGE_DICOM_INGEST_PRIORITY_HOLD_SECONDS"] = hold
                    name += f" hold {hold} s"
                receivers[name] = (functools.partial(daemon, models=models, env=env), "TRIAGE")
        if args.stow:
            stow = functools.partial(daemon, models=models, env=daemon_env, stow=True)
            receivers["dicom-triage STOW-RS x1"] = (stow, "TRIAGE")
        for kind, files in sets.items():
            if args.only and kind != args.only:
                continue
            size = files[0].stat().st_size / 1e6
            results = {
                name: measure(name, make, called, files, args.senders, args.rounds, scratch)
                for name, (make, called) in receivers.items()
            }
            print(
                f"{kind} {size:.2f} MB x {len(files)}, {args.senders} senders, "
                f"{args.database}{' ' + ' '.join(args.daemon_env) if args.daemon_env else ''}, "
                f"{os.cpu_count()} cores, median of {args.rounds}:",
                flush=True,
            )
            bare = results["bare pynetdicom"].rate
            for name, result in results.items():
                print(
                    describe(
                        name,
                        result,
                        results["Orthanc"].rate,
                        bare if name.startswith("dicom-triage") else None,
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
