"""The ``triage`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon import __version__
from daemon.config import Settings, load_settings
from daemon.errors import TriageError

logger = logging.getLogger("triage")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # pynetdicom logs every PDU at INFO, including patient attributes of
    # C-FIND identifiers; keep it to warnings unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # highdicom logs the UIDs of the studies it copies from at INFO.
        logging.getLogger("highdicom").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def cmd_serve(args: argparse.Namespace) -> int:
    from daemon.lifecycle import serve

    settings = _settings(args)
    _configure_logging(settings.logging.level)
    return int(serve(settings))


def cmd_db(args: argparse.Namespace) -> int:
    from storage.database import create_database_engine, current_revision, head_revision, upgrade

    settings = _settings(args)
    _configure_logging(settings.logging.level)
    engine = create_database_engine(settings.storage.database_url)
    if args.action == "upgrade":
        upgrade(engine)
    else:
        print(f"current: {current_revision(engine) or 'none'}  head: {head_revision()}")
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    from dicom_io.phantom_files import write_dicom_studies, write_jpeg_dataset

    _configure_logging("INFO")
    writer = write_jpeg_dataset if args.format == "jpeg" else write_dicom_studies
    root = writer(args.modality, Path(args.out), args.count, seed=args.seed)
    print(root)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from trainer.train import TrainOptions, train
    except ImportError as exc:
        raise TriageError(
            f"Training needs the train extra (pip install 'dicom-triage[train]'): {exc}"
        ) from exc
    _configure_logging("INFO")
    options = TrainOptions(
        modality=args.modality,
        data=Path(args.data),
        out=Path(args.out),
        task=args.task,
        epochs=args.epochs,
        seed=args.seed,
        limit_per_class=args.limit_per_class,
    )
    print(train(options))
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    from storage.database import create_database_engine, make_session_factory, require_current
    from storage.queries import urgent_worklist

    settings = _settings(args)
    _configure_logging("WARNING")
    engine = create_database_engine(settings.storage.database_url)
    require_current(engine)
    with make_session_factory(engine)() as session:
        entries = urgent_worklist(session)
    if args.json:
        rows = [dataclasses.asdict(e) | {"decided_at": e.decided_at.isoformat()} for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    columns = (
        "Priority",
        "Patient ID",
        "Patient name",
        "Accession",
        "Modality",
        "Finding",
        "p",
        "Decided (UTC)",
        "SR sent",
    )
    table = [
        (
            "STAT",
            e.patient_id,
            e.patient_name,
            e.accession_number,
            e.modality,
            e.finding,
            f"{e.probability:.2f}",
            e.decided_at.strftime("%Y-%m-%d %H:%M:%S"),
            "yes" if e.report_sent else "no",
        )
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in [columns, *table]) for i in range(len(columns))]
    for row in [columns, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"{len(entries)} urgent referral(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    _configure_logging("INFO")
    return run_demo(Path(args.state_dir), count=args.count, config=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage",
        description="Triage retinal OCT and chest X-ray studies received over DICOM.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-triage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            metavar="PATH",
            help="TOML configuration file (see systemd/triage.example.toml); "
            "TRIAGE_<SECTION>_<KEY> environment variables override it",
        )
        return p

    serve = with_config(
        sub.add_parser(
            "serve",
            help="run the DICOM triage daemon",
            description="Receive OCT and CXR images by C-STORE, triage them with the ONNX models, "
            "record results in SQL, send a Structured Report for each complete study to every "
            "destination, and answer Modality Worklist queries with the urgent referrals.",
        )
    )
    serve.set_defaults(handler=cmd_serve)

    db = with_config(
        sub.add_parser(
            "db",
            help="manage the database schema",
            description="Create or upgrade the database schema (Alembic migrations).",
        )
    )
    db.add_argument("action", choices=["upgrade", "status"])
    db.set_defaults(handler=cmd_db)

    phantoms = with_config(
        sub.add_parser(
            "phantoms",
            help="make synthetic OCT or CXR images with lesions at known places",
            description="Write synthetic images of the paper's classes. 'jpeg' uses the paper's "
            "data set layout (OCT2017/, chest_xray/); 'dicom' writes one study per phantom "
            "patient. lesions.json records every lesion's bounding box.",
        )
    )
    phantoms.add_argument("--modality", choices=["oct", "cxr"], required=True)
    phantoms.add_argument("--out", required=True, metavar="DIR")
    phantoms.add_argument("--count", type=int, default=20, help="images (or studies) per class")
    phantoms.add_argument("--format", choices=["jpeg", "dicom"], default="jpeg")
    phantoms.add_argument("--seed", type=int, default=0)
    phantoms.set_defaults(handler=cmd_phantoms)

    train = with_config(
        sub.add_parser(
            "train",
            help="train a model and export it as a model package (needs the train extra)",
            description="Train on a data set in the paper's layout and write model.onnx and "
            "manifest.json to --out. This version trains a small CNN from scratch (no "
            "pretrained weights, so nothing is transferred).",
        )
    )
    train.add_argument("--modality", choices=["oct", "cxr"], required=True)
    train.add_argument("--data", required=True, metavar="DIR")
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--task", choices=["oct4", "cxr3"], default=None)
    train.add_argument("--epochs", type=int, default=25)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit-per-class", type=int, default=None, metavar="N")
    train.set_defaults(handler=cmd_train)

    worklist = with_config(
        sub.add_parser(
            "worklist",
            help="print the urgent referrals",
            description="Print every study triaged as an urgent referral, as the Modality "
            "Worklist serves it.",
        )
    )
    worklist.add_argument(
        "--urgent",
        action="store_true",
        default=True,
        help="urgent referrals only (the default and, for now, the only list)",
    )
    worklist.add_argument("--json", action="store_true", help="print JSON for machines")
    worklist.set_defaults(handler=cmd_worklist)

    demo = with_config(
        sub.add_parser(
            "demo",
            help="run the whole path once on phantoms and exit",
            description="Build phantom models if absent, start the daemon on the embedded "
            "defaults, push phantom studies from a simulated scanner to it, wait for the SRs at a "
            "demo PACS, print the urgent worklist, and stop.",
        )
    )
    demo.add_argument(
        "--state-dir",
        default="var",
        metavar="DIR",
        help="where the demo keeps models, database, spool and SRs",
    )
    demo.add_argument("--count", type=int, default=2, help="studies per class")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except TriageError as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
