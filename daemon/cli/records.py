"""``triage worklist``, ``outbox``, ``purge`` and ``audit``: the records the daemon keeps."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from collections.abc import Sequence

from daemon.cli.context import migrated_sessions, settings_from
from daemon.cli.process import configure_logging
from daemon.spool import remove_retired_files


def cmd_worklist(args: argparse.Namespace) -> int:
    from storage.queries import urgent_worklist

    settings = settings_from(args)
    configure_logging("WARNING")
    with migrated_sessions(settings)() as session:
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
    _print_table(columns, table)
    print(f"{len(entries)} urgent referral(s)")
    return 0


def _print_table(columns: tuple[str, ...], table: Sequence[tuple[object, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [columns, *table]) for i in range(len(columns))]
    for row in [columns, *table]:
        line = "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())


def parse_moment(text: str, now: dt.datetime) -> dt.datetime:
    """A time for a filter, as naive UTC (the database's): "7d" or "90m" ago,
    or an ISO date or date and time ("2026-11-30", "2026-11-30T14:00"; UTC
    unless it says otherwise)."""
    from daemon.config import parse_duration
    from domain.errors import ConfigError

    try:
        return now - dt.timedelta(seconds=parse_duration(text))
    except ConfigError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is neither a duration like 7d nor an ISO time.") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def cmd_audit(args: argparse.Namespace) -> int:
    from storage.queries import AuditFilter, audit_events

    settings = settings_from(args)
    configure_logging("WARNING")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    where = AuditFilter(
        since=parse_moment(args.since, now) if args.since else None,
        until=parse_moment(args.until, now) if args.until else None,
        peer=args.peer or "",
        patient_id=args.patient_id or "",
        event=args.event or "",
        limit=args.limit,
    )
    with migrated_sessions(settings)() as session:
        events = audit_events(session, where)
        rows = [
            {
                "id": e.id,
                "at": e.at.isoformat(timespec="seconds"),
                "event": e.event,
                "outcome": e.outcome,
                "peer_address": e.peer_address,
                "calling_ae_title": e.calling_ae_title,
                "called_ae_title": e.called_ae_title,
                "patient_id": e.patient_id,
                "study_instance_uid": e.study_instance_uid,
                "instances_stored": e.instances_stored,
                "instances_refused": e.instances_refused,
                "queries": e.queries,
                "detail": e.detail,
            }
            for e in events
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("Id", "At (UTC)", "Event", "Outcome", "Peer", "Calling", "Called", "Patient ID")
    _print_table(
        (*columns, "Stored", "Refused", "Queries", "Detail"),
        [
            (
                r["id"],
                str(r["at"]).replace("T", " "),
                r["event"],
                r["outcome"],
                r["peer_address"],
                r["calling_ae_title"],
                r["called_ae_title"],
                r["patient_id"],
                r["instances_stored"],
                r["instances_refused"],
                r["queries"],
                str(r["detail"])[:80],
            )
            for r in rows
        ],
    )
    print(f"{len(rows)} event(s)")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from daemon.config import parse_duration
    from storage.models import DeliveryState
    from storage.queries import outbox, purge_deliveries, retry_deliveries

    settings = settings_from(args)
    configure_logging("WARNING")
    with migrated_sessions(settings)() as session, session.begin():
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

    settings = settings_from(args)
    configure_logging("WARNING")
    with migrated_sessions(settings)() as session, session.begin():
        purge = purge_studies(
            session,
            dt.timedelta(seconds=parse_duration(args.older_than)),
            settings.retention.keep_results,
        )
    studies = purge.retired
    removed = remove_retired_files(settings.spool_dir, purge.files)
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
