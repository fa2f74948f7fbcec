"""The ``triage`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sqlalchemy.orm import Session, sessionmaker

from daemon import __version__
from daemon.config import Settings, load_settings
from daemon.errors import TriageError

logger = logging.getLogger("triage")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, log_format: str = "text", stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )
    # pydicom's validation warnings quote element values (a patient's name or
    # birth date): route Python warnings through logging, and let them and
    # pydicom's own records through only when debugging.
    logging.captureWarnings(True)
    debugging = level.upper() == "DEBUG"
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if debugging else logging.CRITICAL + 1)
    logging.getLogger("pydicom").setLevel(logging.DEBUG if debugging else logging.ERROR)
    # pynetdicom logs every PDU at INFO, including patient attributes of
    # C-FIND identifiers; keep it to warnings unless debugging.
    if not debugging:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # highdicom logs the UIDs of the studies it copies from at INFO.
        logging.getLogger("highdicom").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def _migrated_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the configured database, which must be at the current schema."""
    from storage.database import create_database_engine, make_session_factory, require_current

    engine = create_database_engine(settings.storage.database_url)
    require_current(engine)
    return make_session_factory(engine)


def cmd_serve(args: argparse.Namespace) -> int:
    from daemon.lifecycle import serve

    settings = _settings(args)
    # The daemon logs to stdout for journald; the other commands keep stdout
    # for their results and log to stderr.
    _configure_logging(settings.logging.level, settings.logging.format, sys.stdout)
    return int(serve(settings, Path(args.config) if args.config else None))


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
        backbone=args.backbone,
        base_weights=args.base_weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        holdout_fraction=args.holdout_fraction,
        limit_per_class=args.limit_per_class,
        seed=args.seed,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
    )
    print(train(options).package)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        from trainer.evaluate import evaluate_package
    except ImportError as exc:
        raise TriageError(f"Evaluation needs the train extra: {exc}") from exc
    _configure_logging("INFO")
    metrics = evaluate_package(
        Path(args.model),
        Path(args.data),
        split=args.split,
        out_dir=Path(args.out) if args.out else None,
    )
    summary = {
        k: metrics[k]["value"] for k in ("accuracy", "sensitivity", "specificity", "weighted_error")
    }
    print(json.dumps(summary, indent=1))
    return 0


def cmd_worklist(args: argparse.Namespace) -> int:
    from storage.queries import urgent_worklist

    settings = _settings(args)
    _configure_logging("WARNING")
    with _migrated_sessions(settings)() as session:
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


def cmd_outbox(args: argparse.Namespace) -> int:
    from daemon.config import parse_duration
    from storage.models import DeliveryState
    from storage.queries import outbox, purge_deliveries, retry_deliveries

    settings = _settings(args)
    _configure_logging("WARNING")
    with _migrated_sessions(settings)() as session, session.begin():
        if args.action == "list":
            state = DeliveryState(args.state) if args.state else None
            rows = outbox(session, state)
            if args.json:
                print(
                    json.dumps(
                        [
                            dataclasses.asdict(r)
                            | {"next_attempt_at": r.next_attempt_at.isoformat()}
                            for r in rows
                        ],
                        indent=2,
                    )
                )
            else:
                for r in rows:
                    print(
                        f"{r.delivery_id:>6}  {r.state:<9}  attempts={r.attempts:<3} "
                        f"{r.destination:<32} next={r.next_attempt_at:%Y-%m-%d %H:%M:%S}  "
                        f"{r.last_error[:60]}"
                    )
                print(f"{len(rows)} deliver{'y' if len(rows) == 1 else 'ies'}")
        elif args.action == "retry":
            count = retry_deliveries(session, args.ids or None)
            print(f"{count} deliver{'y' if count == 1 else 'ies'} queued again")
        else:
            count = purge_deliveries(
                session,
                DeliveryState(args.state or "delivered"),
                dt.timedelta(seconds=parse_duration(args.older_than)),
            )
            print(f"{count} deliver{'y' if count == 1 else 'ies'} purged")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from daemon.config import parse_duration
    from storage.queries import purge_studies

    settings = _settings(args)
    _configure_logging("WARNING")
    with _migrated_sessions(settings)() as session, session.begin():
        purge = purge_studies(
            session,
            dt.timedelta(seconds=parse_duration(args.older_than)),
            settings.retention.keep_results,
        )
    studies, files = purge.retired, purge.files
    spool = settings.spool_dir.resolve()
    removed = 0
    for name in files:
        path = Path(name).resolve()
        # Only ever delete inside the configured spool.
        if path.is_relative_to(spool) and path.is_file():
            path.unlink()
            removed += 1
    kept = "kept" if settings.retention.keep_results else "deleted"
    print(
        f"{studies} stud{'y' if studies == 1 else 'ies'} retired, {removed} file(s) removed, "
        f"results {kept}"
    )
    if purge.skipped_undelivered or purge.skipped_unreported:
        print(
            f"kept {purge.skipped_undelivered} old stud(ies) whose report is not delivered "
            "(pending or dead-lettered: see `triage outbox list`) and "
            f"{purge.skipped_unreported} still receiving or with a parked report"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.health import judge, read_status

    settings = _settings(args)
    snapshot = read_status(settings.state_dir)
    healthy, problems = judge(snapshot)
    if args.json:
        print(json.dumps({"healthy": healthy, "problems": problems, "status": snapshot}, indent=2))
    elif snapshot is None:
        print(f"not running: no status in {settings.state_dir}")
    else:
        print(
            f"{'healthy' if healthy else 'UNHEALTHY'}: {settings.dicom.ae_title} on "
            f"{snapshot['listen']} (pid {snapshot['pid']}, updated {snapshot['updated_at']})"
        )
        for modality, model in snapshot["models"].items():
            print(
                f"  model {modality}: {model['name']} {model['version']} "
                f"sha256 {model['sha256'][:12]} on {model['provider']}"
            )
        print(
            f"  queue {snapshot['queue_depth']}, outbox pending {snapshot['outbox_pending']}, "
            f"dead letters {snapshot['dead_letters']}, spool free "
            f"{snapshot['spool_free_bytes'] / 1e9:.1f} GB"
        )
        print(
            f"  database {snapshot.get('database', '?')}, reports parked "
            f"{snapshot.get('studies_report_failed', '?')}, images failed "
            f"{snapshot.get('instances_failed', '?')}, images waiting "
            f"{snapshot.get('instances_waiting', '?')}"
        )
        if occlusion := snapshot.get("occlusion"):
            print(
                f"  occlusion maps: queued {occlusion['queued']}, failed and waiting to retry "
                f"{occlusion['retrying']}, given up {occlusion['given_up']}"
            )
        print(f"  last error: {snapshot['last_error'] or 'none'}")
        for problem in problems:
            print(f"  problem: {problem}")
    return 0 if healthy else 1


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
            description="Train on a data set in the paper's layout (OCT2017/ or chest_xray/ with "
            "train/ and test/) and write model.onnx, manifest.json, history.json and an evaluation "
            "of the test split to --out. With pretrained base weights (imagenet, or a weights "
            "file) this is the method of Kermany et al.: the base is frozen, bottleneck features "
            "are cached, and only a new softmax layer is trained (Adam, lr 0.001, batches of "
            "1,000, up to 100 epochs, best step on the patient-level holdout kept). With "
            "--base-weights none there is nothing to transfer, so the whole network trains from "
            "scratch.",
        )
    )
    train.add_argument("--modality", choices=["oct", "cxr"], required=True)
    train.add_argument("--data", required=True, metavar="DIR")
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument(
        "--task",
        default=None,
        choices=[
            "oct4",
            "oct-binary-cnv",
            "oct-binary-dme",
            "oct-binary-drusen",
            "cxr3",
            "cxr-pneumonia",
            "cxr-bacterial-viral",
        ],
        help="default: oct4 or cxr3, the tasks the daemon uses",
    )
    train.add_argument(
        "--backbone",
        default="inception_v3",
        choices=["inception_v3", "mobilenet_v3_small", "small_cnn"],
        help="inception_v3 at 299 (the paper's), mobilenet_v3_small at 224, "
        "or small_cnn at 128 (tests)",
    )
    train.add_argument(
        "--base-weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="imagenet: Keras' weights (cache or download); none: train from "
        "scratch; PATH: a Keras weights file for the base",
    )
    train.add_argument(
        "--epochs", type=int, default=None, help="default 100 for the head, 25 from scratch"
    )
    train.add_argument(
        "--batch-size", type=int, default=None, help="default 1000 for the head, 32 from scratch"
    )
    train.add_argument("--learning-rate", type=float, default=0.001)
    train.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.1,
        help="share of training patients held out to pick the best model",
    )
    train.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        metavar="N",
        help="the paper's limited model used 1000",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="bottleneck cache (default ~/.cache/dicom-triage/bottlenecks)",
    )
    train.set_defaults(handler=cmd_train)

    evaluate = with_config(
        sub.add_parser(
            "evaluate",
            help="compute the paper's metrics for a model package (needs the train extra)",
            description="Run a model package as the daemon does on a data set split and write "
            "metrics.json (accuracy, sensitivity, specificity, weighted error, ROC AUC, confusion "
            "matrix, per-class figures, 95%% confidence intervals) and PNG plots.",
        )
    )
    evaluate.add_argument("--model", required=True, metavar="DIR")
    evaluate.add_argument("--data", required=True, metavar="DIR")
    evaluate.add_argument("--split", default="test", choices=["test", "train"])
    evaluate.add_argument("--out", default=None, metavar="DIR", help="default: MODEL/evaluation")
    evaluate.set_defaults(handler=cmd_evaluate)

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

    outbox = with_config(
        sub.add_parser(
            "outbox",
            help="list, retry or purge report deliveries",
            description="The delivery outbox: one row per report and destination. 'list' shows "
            "them (--state pending|delivered|failed), 'retry' puts dead-lettered deliveries "
            "(or the given ids) back in the queue, 'purge' deletes delivered (or, with --state "
            "failed, dead-lettered) rows older than --older-than.",
        )
    )
    outbox.add_argument("action", choices=["list", "retry", "purge"])
    outbox.add_argument("ids", nargs="*", type=int, help="delivery ids for retry")
    outbox.add_argument("--state", choices=["pending", "delivered", "failed"], default=None)
    outbox.add_argument(
        "--older-than",
        default="7d",
        metavar="DURATION",
        help="for purge: 30s, 5m, 1h, 7d (default 7d)",
    )
    outbox.add_argument("--json", action="store_true", help="list as JSON")
    outbox.set_defaults(handler=cmd_outbox)

    purge = with_config(
        sub.add_parser(
            "purge",
            help="remove images (and, if configured, results) past retention",
            description="Retire studies finished more than --older-than ago whose reports are "
            "delivered: their images leave the spool; with [retention] keep_results = false "
            "their rows go too.",
        )
    )
    purge.add_argument("--older-than", required=True, metavar="DURATION", help="30s, 5m, 12h, 90d")
    purge.set_defaults(handler=cmd_purge)

    status = with_config(
        sub.add_parser(
            "status",
            help="is the daemon healthy? (exit 0 when it is)",
            description="Read the status the running daemon refreshes in its state directory: "
            "listening AE and port, models with versions and hashes, execution provider, queue "
            "depth, outbox backlog and dead letters, free disk, last error. Exits 1 when the "
            "daemon is not running, stale, stopping or has a stopped worker.",
        )
    )
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.set_defaults(handler=cmd_status)

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
