"""The exit statuses of ``triage``, which the systemd unit acts on."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # restartable: systemd tries again (Restart=on-failure)
    USAGE = 2  # a command's own error (argparse uses 2 too)
    # EX_CONFIG from sysexits.h: systemd shows it by name and does not restart
    # on it (RestartPreventExitStatus=78), since a restart cannot mend it.
    CONFIG = 78
    INTERRUPTED = 130
