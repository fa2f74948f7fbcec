"""The ``triage`` argument parser: every command, its options and its handler."""

from __future__ import annotations

import argparse

from daemon import __version__
from daemon.cli.models import cmd_demo, cmd_evaluate, cmd_phantoms, cmd_quantize, cmd_train
from daemon.cli.records import cmd_audit, cmd_outbox, cmd_purge, cmd_worklist
from daemon.cli.service import cmd_db, cmd_serve, cmd_status, cmd_systemd_dropin
from daemon.cli.users import cmd_http_user


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

    quantize = with_config(
        sub.add_parser(
            "quantize",
            help="make an INT8 copy of a model package for CPUs (needs the train extra)",
            description="Static INT8 quantisation with ONNX Runtime, calibrated on training "
            "images prepared as the daemon prepares them; written only if the top class agrees "
            "with the float model on at least --min-agreement of the held-out test images.",
        )
    )
    quantize.add_argument("--model", required=True, metavar="DIR")
    quantize.add_argument("--data", required=True, metavar="DIR", help="the data set (train/test)")
    quantize.add_argument("--out", required=True, metavar="DIR")
    quantize.add_argument("--calibration", type=int, default=200, help="training images")
    quantize.add_argument("--held-out", type=int, default=1000, help="test images for parity")
    quantize.add_argument("--min-agreement", type=float, default=0.99)
    quantize.set_defaults(handler=cmd_quantize)

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

    audit = with_config(
        sub.add_parser(
            "audit",
            help="read the audit trail back, with filters",
            description="Associations, instances stored, queries, reports exported, "
            "configuration and model changes, and security alerts (IHE ATNA style), oldest "
            "first. Only this command shows the Patient ID and Study Instance UID of an event; "
            "the syslog copies leave them out.",
        )
    )
    audit.add_argument("--since", metavar="WHEN", help="7d, 12h, 30m ago, or an ISO time (UTC)")
    audit.add_argument("--until", metavar="WHEN", help="as --since")
    audit.add_argument("--peer", metavar="ADDRESS|AE", help="a peer's address or AE title")
    audit.add_argument("--patient-id", metavar="ID", help="events about this patient")
    audit.add_argument("--event", metavar="NAME", help="one kind, e.g. query, rejected")
    audit.add_argument("--limit", type=int, default=1000, help="the newest N (default 1000)")
    audit.add_argument("--json", action="store_true", help="print JSON for machines")
    audit.set_defaults(handler=cmd_audit)

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

    dropin = with_config(
        sub.add_parser(
            "systemd-dropin",
            help="print the unit drop-in that limits the service to its configured networks",
            description="Print IPAddressDeny=any and an IPAddressAllow= for loopback, [dicom] "
            "and [worklist] allowed_networks, each destination and the database server "
            "(host names resolved now). Install it as "
            "/etc/systemd/system/dicom-triage.service.d/network.conf.",
        )
    )
    dropin.set_defaults(handler=cmd_systemd_dropin)

    http_user = sub.add_parser(
        "http-user",
        help="print a credentials-file line for a user of the web pages and the API",
        description="Read a password (twice, without echo; or one line of standard input) "
        "and print NAME:HASH (scrypt) for the file that [http] credentials_file names, or "
        'systemd\'s credential "http-credentials". The password itself is never stored.',
    )
    http_user.add_argument("name", help="the user name, 1-64 of A-Z a-z 0-9 . _ @ -")
    http_user.set_defaults(handler=cmd_http_user)

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
