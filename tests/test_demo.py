"""The README's quick start: `triage demo` runs the whole path and ends by itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.network


def test_the_demo_reports_every_study_and_lists_the_urgent_ones(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    state = tmp_path / "demo"
    for modality, package in model_dirs.items():
        # The demo trains these itself on a fresh machine; here the suite's are reused.
        shutil.copytree(package, state / "models" / modality)
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "demo", "--state-dir", str(state), "--count", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Training the" not in result.stdout
    held = re.search(r"Demo PACS holds (\d+) SR\(s\) of (\d+) studies", result.stdout)
    assert held is not None, result.stdout
    assert held.group(1) == held.group(2) == "7"  # one study per class: 4 OCT, 3 CXR
    assert len(list((state / "demo-pacs").glob("*.dcm"))) == 7
    urgent = re.search(r"(\d+) urgent referral\(s\)", result.stdout)
    assert urgent is not None and int(urgent.group(1)) == 3, result.stdout  # CNV, DME, BACTERIA


def test_the_demo_uses_the_configured_port_and_says_when_it_is_taken(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    """The demo sends to the port the daemon listens on (TRIAGE_DICOM_PORT);
    when the daemon cannot start there, the demo says so and stops, without
    a traceback."""
    import os
    import socket

    from tests.peers import free_port

    state = tmp_path / "demo"
    for modality, package in model_dirs.items():
        shutil.copytree(package, state / "models" / modality)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "demo", "--state-dir", str(state), "--count", "1"],
            env={**os.environ, "TRIAGE_DICOM_PORT": str(port)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    assert "the daemon stopped before it was ready" in refused.stdout + refused.stderr

    other = free_port()
    ran = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "demo", "--state-dir", str(state), "--count", "1"],
        env={**os.environ, "TRIAGE_DICOM_PORT": str(other)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"TRIAGE@127.0.0.1:{other}" in ran.stdout
