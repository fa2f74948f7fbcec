"""The ``triage`` command line: ``parser`` lists the commands; each group has a module.

- ``service``: serve, db, status
- ``records``: worklist, outbox, purge
- ``models``: phantoms, train, evaluate, demo
- ``process``: the process-wide switches (logging), set only here
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from daemon.cli.parser import build_parser
from daemon.exit_codes import ExitCode
from domain.errors import ConfigError, TriageError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except TriageError as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
