"""``triage http-user NAME``: a credentials-file line for a user of the
HTTP service, from a password read without echo (or from standard input)."""

from __future__ import annotations

import argparse
import getpass
import sys

from daemon.exit_codes import ExitCode
from domain.errors import ConfigError

MIN_PASSWORD_LENGTH = 12


def cmd_http_user(args: argparse.Namespace) -> int:
    from daemon.web.credentials import check_user_name, hash_password

    try:
        name = check_user_name(args.name)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.USAGE
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            print("The passwords differ.", file=sys.stderr)
            return ExitCode.USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        print(f"A password has at least {MIN_PASSWORD_LENGTH} characters.", file=sys.stderr)
        return ExitCode.USAGE
    # Only the hash is printed: append it to the credentials file.
    print(f"{name}:{hash_password(password)}")
    return ExitCode.OK
