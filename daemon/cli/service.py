"""``triage serve``, ``triage db`` and ``triage status``: running the daemon."""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
from pathlib import Path

from daemon.cli.context import settings_from
from daemon.cli.process import (
    configure_logging,
    load_cuda_libraries,
    quiet_onnxruntime,
    share_metrics_between_processes,
)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.dicom.receivers > 1:
        share_metrics_between_processes(Path(settings.state_dir) / "metrics-multiprocess")
    from daemon.lifecycle import serve

    # The daemon logs to stdout for journald; the other commands keep stdout
    # for their results and log to stderr.
    configure_logging(settings.logging.level, settings.logging.format, sys.stdout)
    quiet_onnxruntime()
    load_cuda_libraries(settings.models.device)
    # ``kill -USR1`` writes every thread's stack to stderr (the journal): how an
    # engineer sees where a daemon that seems stuck is waiting, without a restart.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return int(serve(settings, Path(args.config) if args.config else None))


def cmd_db(args: argparse.Namespace) -> int:
    from storage.database import create_database_engine, current_revision, head_revision, upgrade

    settings = settings_from(args)
    configure_logging(settings.logging.level)
    engine = create_database_engine(settings.storage.database_url)
    if args.action == "upgrade":
        upgrade(engine)
    else:
        print(f"current: {current_revision(engine) or 'none'}  head: {head_revision()}")
    return 0


def cmd_systemd_dropin(args: argparse.Namespace) -> int:
    from daemon.unit_network import network_dropin

    print(network_dropin(settings_from(args)), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.health import judge, read_status

    settings = settings_from(args)
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
        if receivers := snapshot.get("receiver_pids"):
            print(f"  receiver processes on the same port: pids {', '.join(map(str, receivers))}")
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
