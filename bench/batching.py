"""Benchmark: triage under a flood, against bare ONNX Runtime (issue 13, item 2).

In one run, for each model and batch size B: N phantom images are recorded
as received in a fresh SQLite database, then the daemon's own decode
workers (each with its decoder child) and batcher triage them all, leases,
decoding, preparation and the recording of results included. The rate is
images triaged per second from the first lease to the last result. Beside
it, bare ONNX Runtime's rate for the same model at batch B on the same
prepared inputs (``Classifier.predict``, which is a plain session run on
the CPU). The goal is a ratio of at least 0.8.

Models: the phantom-trained small CNN (128x128, OCT) and, with
``--inception``, InceptionV3 at 299x299 with random weights (the ``train``
extra builds it), routed the OCT images.

Run: .venv/bin/python bench/batching.py [--images 192] [--batches 1,8,16,32]
     [--decode-workers 2] [--inception | --inception-onnx FILE] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from sqlalchemy.orm import Session, sessionmaker
from timing import images_per_second

from daemon.cli.process import load_cuda_libraries
from daemon.config import ModelSettings, Settings
from daemon.decoding import decode_for_model
from daemon.pipeline import TriagePipeline, triage_batcher
from daemon.runtime import CurrentRuntime, Runtime
from daemon.supervisor import Supervisor
from domain.triage import PAPER_REFERRALS, TriageModality
from model_runtime.classifier import Classifier
from model_runtime.package import InputSpec, Manifest, write_package
from phantoms import trained_models
from phantoms.files import write_dicom_studies
from storage import queries
from storage.database import create_database_engine, make_session_factory, upgrade
from tests.records import store_received
from tests.traffic import plan_studies


def bare_rate(classifier: Classifier, inputs: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of ``classifier.predict`` on batches of ``batch`` prepared inputs."""
    return images_per_second(
        classifier.predict, np.resize(inputs, (batch, *inputs.shape[1:])), seconds
    )


def flood_rate(
    classifier: Classifier, files: list[Path], batch: int, decode_workers: int, folder: Path
) -> tuple[float, int]:
    """Images/s through the daemon's decode workers and batcher; and its model calls."""
    database = Path(tempfile.mkstemp(suffix=".sqlite3", dir=folder)[1])
    database.unlink()  # a fresh database for every flood
    engine = create_database_engine(f"sqlite:///{database}")
    upgrade(engine)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    ids = [store_received(sessions, path) for path in files]
    settings = dataclasses.replace(
        Settings(), models=ModelSettings(batch_size=batch, decode_workers=decode_workers)
    )
    runtime = CurrentRuntime(Runtime(settings, {TriageModality.OCT: classifier}))
    supervisor = Supervisor(threading.Event())
    work: queue.Queue[int] = queue.Queue()
    batcher = triage_batcher(sessions, runtime, supervisor.stop)
    decoders = [
        TriagePipeline(sessions, runtime, work, supervisor.stop, batcher=batcher, name=f"d{n}")
        for n in range(decode_workers)
    ]
    for decoder in decoders:
        decoder.decoder.decode(files[0])  # start each child before the clock
        supervisor.close_at_exit(decoder.decoder.close)
    from daemon import metrics

    calls_before = sum(b.get() for b in metrics.BATCH_IMAGES._buckets)
    started = time.perf_counter()
    for instance_id in ids:
        work.put(instance_id)
    supervisor.start(batcher, *decoders)
    try:
        while True:
            with sessions() as session:
                if queries.work_counts(session)["instances_waiting"] == 0:
                    break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        supervisor.drain(10)
        engine.dispose()
    calls = int(sum(b.get() for b in metrics.BATCH_IMAGES._buckets) - calls_before)
    return len(ids) / elapsed, calls


def inception_package(folder: Path, onnx_path: Path | None) -> Path:
    """A package of InceptionV3 with random weights: ``onnx_path``, or built now."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inception_model import CLASSES, SIZE, save_random_inception_v3

    if onnx_path is None:
        onnx_path = save_random_inception_v3(folder / "inception.onnx")
    labels = ("CNV", "DME", "DRUSEN", "NORMAL")[:CLASSES]
    package = folder / "inception-package"
    write_package(
        package,
        onnx_path.read_bytes(),
        Manifest(
            name="inception-v3-random",
            version="1",
            modality=TriageModality.OCT,
            task="oct4",
            labels=labels,
            referrals={label: PAPER_REFERRALS[label] for label in labels},
            input=InputSpec(height=SIZE, width=SIZE, channels=3, scaling="minus_one_one"),
            onnx_sha256="",
            training={},
        ),
    )
    return package


def table(
    title: str, classifier: Classifier, files: list[Path], args: argparse.Namespace, folder: Path
) -> None:
    inputs = np.concatenate(
        [decode_for_model(p, False, classifier.manifest.input)[0] for p in files[:16]]
    )
    print(
        f"\n{title} on {classifier.provider}, {len(files)} images, "
        f"{args.decode_workers} decode workers"
    )
    print(f"{'batch':>6}{'bare ORT img/s':>16}{'daemon img/s':>14}{'ratio':>7}{'calls':>7}")
    for batch in [int(b) for b in args.batches.split(",")]:
        bare = bare_rate(classifier, inputs, batch, args.seconds)
        daemon, calls = flood_rate(classifier, files, batch, args.decode_workers, folder)
        print(f"{batch:>6}{bare:>16.1f}{daemon:>14.1f}{daemon / bare:>7.2f}{calls:>7}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--inception-images", type=int, default=64)
    parser.add_argument("--batches", default="1,8,16,32")
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing of each bare rate")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--inception", action="store_true")
    parser.add_argument(
        "--inception-onnx",
        type=Path,
        help="an InceptionV3 ONNX file (else built with the train extra)",
    )
    args = parser.parse_args()
    load_cuda_libraries(args.device)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        pool = sorted(write_dicom_studies("oct", folder / "pool", 8, seed=61).rglob("*.dcm"))
        files = [
            image.path
            for study in plan_studies(
                pool, folder / "flood", studies=args.images, images_per_study=1
            )
            for image in study.images
        ]
        packages = trained_models.committed_packages()
        assert packages is not None, "phantoms/trained is stale: make phantom-models"
        table(
            "small CNN 128x128 (OCT)", Classifier(packages["oct"], args.device), files, args, folder
        )
        if args.inception or args.inception_onnx:
            classifier = Classifier(inception_package(folder, args.inception_onnx), args.device)
            table(
                "InceptionV3 299x299 (random weights)",
                classifier,
                files[: args.inception_images],
                args,
                folder,
            )


if __name__ == "__main__":
    main()
