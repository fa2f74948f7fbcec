"""How many cores this process may use, and how many receiver processes
(``[dicom] receivers = 0``, the default) that makes.

``os.cpu_count()`` counts the host's cores, not the service's: systemd's
``CPUAffinity=`` (or ``taskset``) narrows the cores a process may run on,
and ``CPUQuota=`` sets a cgroup v2 ``cpu.max`` quota that caps how much of
them it may use. Both are read here, so that a unit confined to two cores
of a large host sizes itself for two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# One receiver process per this many cores. The measurements (bench/README,
# "Receiver processes") are on 2 cores, where a second receiver lost on both
# databases: its writer and DUL threads took cores the senders and triage
# needed. Decoding (2 workers by default), inference and the occlusion maps
# need cores of their own just after a burst, so a receiver is added only
# where three more cores stay for them: 1 up to 7 cores, 2 from 8, 4 from 16.
CORES_PER_RECEIVER = 4
# Past this, more processes only add SQL connections and writers competing
# for one database; the port's max_associations applies to each anyway.
MAX_AUTOMATIC_RECEIVERS = 8

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(
    proc_self_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = _CGROUP_ROOT
) -> float:
    """The cores this process may run on, capped by its cgroup's CPU quota
    (cgroup v2 ``cpu.max``, in this cgroup or any above it)."""
    cores = float(len(os.sched_getaffinity(0)))
    quota = _cgroup_quota(proc_self_cgroup, cgroup_root)
    return min(cores, quota) if quota is not None else cores


def receivers_for(cores: float) -> int:
    """The receiver processes (the daemon's own included) for ``cores``."""
    return max(1, min(MAX_AUTOMATIC_RECEIVERS, math.floor(cores) // CORES_PER_RECEIVER))


def _cgroup_quota(proc_self_cgroup: Path, cgroup_root: Path) -> float | None:
    """The tightest ``cpu.max`` quota from this process's cgroup up to the
    root, in cores; None without cgroup v2 or without a quota."""
    try:
        lines = proc_self_cgroup.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    # cgroup v2 has one line, "0::/system.slice/triage.service".
    paths = [line[3:] for line in lines if line.startswith("0::")]
    if not paths:
        return None
    quotas = []
    here = Path(paths[0])
    for group in (here, *here.parents):
        limit = _cpu_max(cgroup_root / group.relative_to("/") / "cpu.max")
        if limit is not None:
            quotas.append(limit)
    return min(quotas) if quotas else None


def _cpu_max(path: Path) -> float | None:
    """``cpu.max`` holds "$MAX $PERIOD", or "max $PERIOD" for no quota."""
    try:
        fields = path.read_text(encoding="ascii").split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if period > 0 else None
