"""``[dicom] receivers = 0`` (the default) sizes the receiver processes from
the cores the service may use: its CPU affinity and its cgroup's quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.cores import receivers_for, usable_cores


@pytest.mark.parametrize(
    ("cores", "receivers"),
    [(1, 1), (2, 1), (4, 1), (7.9, 1), (8, 2), (12, 3), (16, 4), (64, 8), (512, 8)],
)
def test_one_receiver_per_four_cores_and_never_none(cores: float, receivers: int) -> None:
    assert receivers_for(cores) == receivers


def _cgroup(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup and a cgroup v2 tree with ``cpu.max`` files."""
    tmp_path.mkdir(exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/triage.service\n")
    root = tmp_path / "sys-fs-cgroup"
    for group, limit in limits.items():
        (root / group).mkdir(parents=True, exist_ok=True)
        (root / group / "cpu.max").write_text(limit + "\n")
    return proc, root


def test_the_cgroup_quota_caps_the_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    # CPUQuota=150% on the unit: 1.5 cores, whatever the host has.
    proc, root = _cgroup(tmp_path, {"system.slice/triage.service": "150000 100000"})
    assert usable_cores(proc, root) == min(affinity, 1.5)
    # The tightest quota on the way up counts (a slice's CPUQuota=).
    slice_quota = {"system.slice": "50000 100000", "system.slice/triage.service": "max 100000"}
    proc, root = _cgroup(tmp_path / "b", slice_quota)
    assert usable_cores(proc, root) == min(affinity, 0.5)


def test_no_quota_or_no_cgroup_v2_leaves_the_affinity(tmp_path: Path) -> None:
    affinity = float(len(os.sched_getaffinity(0)))
    proc, root = _cgroup(tmp_path, {"system.slice/triage.service": "max 100000"})
    assert usable_cores(proc, root) == affinity
    legacy = tmp_path / "v1"
    legacy.write_text("12:cpu,cpuacct:/system.slice/triage.service\n")
    assert usable_cores(legacy, root) == affinity
    assert usable_cores(tmp_path / "missing", root) == affinity


def test_the_default_is_sized_from_the_cores_and_a_set_count_stays(tmp_path: Path) -> None:
    environ = {"STATE_DIRECTORY": str(tmp_path)}
    assert load_settings(None, environ).dicom.receivers == receivers_for(usable_cores())
    environ["TRIAGE_DICOM_RECEIVERS"] = "3"
    assert load_settings(None, environ).dicom.receivers == 3
