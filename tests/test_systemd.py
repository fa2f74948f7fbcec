"""The unit file passes systemd-analyze, and the daemon speaks sd_notify."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, free_port

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "dicom-triage.service"


def _exposure(unit: Path) -> float:
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    return float(exposure.group(1))


def _verify(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _local_unit(folder: Path, extra: str = "") -> Path:
    """The unit with ExecStart at this environment's triage (verify checks it
    exists), and ``extra`` lines added to its [Service] section."""
    triage = Path(sys.executable).parent / "triage"
    assert triage.exists()
    unit = folder / UNIT.name
    text = UNIT.read_text().replace("/opt/dicom-triage/.venv/bin/triage", str(triage))
    unit.write_text(text.replace("\n[Install]", f"{extra}\n[Install]"))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    _verify(_local_unit(tmp_path))
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=30",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "MemoryHigh=6G",
        "MemoryMax=8G",
    ):
        assert line in text.splitlines()
    assert _exposure(_local_unit(tmp_path)) <= 2.0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_network_dropin_fences_the_unit_to_the_configured_peers(tmp_path: Path) -> None:
    config = tmp_path / "triage.toml"
    config.write_text(
        '[dicom]\nhost = "0.0.0.0"\nallowed_networks = ["10.20.0.0/16", "192.168.4.7"]\n'
        '[worklist]\nallowed_networks = ["10.30.0.0/24"]\n'
        '[storage]\ndatabase_url = "postgresql+psycopg://triage@10.40.0.5/triage"\n'
        '[[destinations]]\nae_title = "PACS"\nhost = "10.50.0.9"\nport = 104\n'
        '[[destinations]]\nae_title = "LOCAL"\nhost = "localhost"\nport = 4242\n'
    )
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
    made = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "systemd-dropin", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    settings = [line for line in made.stdout.splitlines() if not line.startswith("#")]
    assert settings[:2] == ["[Service]", "IPAddressDeny=any"]
    allowed = [line.removeprefix("IPAddressAllow=") for line in settings[2:]]
    assert allowed[:5] == ["localhost", "10.20.0.0/16", "192.168.4.7", "10.30.0.0/24", "10.50.0.9"]
    assert "127.0.0.1" in allowed and "10.40.0.5" in allowed  # destination "localhost"; database
    assert "(localhost, resolved now)" in made.stdout
    (tmp_path / "fenced").mkdir()
    fenced = _local_unit(tmp_path / "fenced", "\n" + made.stdout.split("[Service]\n", 1)[1])
    _verify(fenced)
    assert _exposure(fenced) < _exposure(_local_unit(tmp_path)) <= 2.0

    # No source networks: no fence that would not cut the scanners off.
    config.write_text('[dicom]\nallowed_calling_aets = ["OCT1"]\n')
    refused = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "systemd-dropin", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode == 78
    assert "dicom.allowed_networks" in refused.stderr


def test_ready_once_and_watchdog_pings(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.5)
    daemon = TriageDaemon(
        tmp_path / "state", tiny_model_dirs, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000"
    )
    # WATCHDOG_PID, when set, must name the daemon; leave it unset.
    daemon.env.pop("WATCHDOG_PID", None)
    daemon.start()
    messages: list[str] = []
    deadline = time.monotonic() + 30
    # Until three pings after readiness (every 0.2 s), not for a fixed time.
    while time.monotonic() < deadline and sum(m == "WATCHDOG=1" for m in messages) < 3:
        with contextlib.suppress(TimeoutError):
            messages.append(listener.recv(4096).decode())
    assert daemon.stop() == 0
    try:
        while True:
            messages.append(listener.recv(4096).decode())
    except TimeoutError:
        pass
    listener.close()
    ready = [m for m in messages if "READY=1" in m.split("\n")]
    assert len(ready) == 1
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert any("STOPPING=1" in m for m in messages)
    assert os.path.exists(address)


@pytest.mark.network
def test_status_and_metrics(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    metrics_port = free_port()
    daemon = TriageDaemon(tmp_path / "state", model_dirs, TRIAGE_METRICS_PORT=str(metrics_port))
    daemon.start()
    try:
        files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=141).rglob("*.dcm"))
        assert daemon.storescu(files).returncode == 0
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "triage_instances_triaged_total{" not in text:
            time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as page:
                text = page.read().decode()
        assert f'triage_instances_received_total{{outcome="success"}} {len(files)}.0' in text
        assert 'triage_instances_triaged_total{modality="cxr"}' in text
        assert "triage_inference_seconds_bucket" in text
        result = daemon.triage("status", "--json")
        report = json.loads(result.stdout)
        assert report["healthy"] is True, report
        status = report["status"]
        assert status["listen"].endswith(f":{daemon.port}")
        assert set(status["models"]) == {"oct", "cxr"}
        assert status["models"]["oct"]["provider"] in (
            "CPUExecutionProvider",
            "CUDAExecutionProvider",
        )
        assert status["dead_letters"] == 0 and status["spool_free_bytes"] > 0
        assert "healthy" in daemon.triage("status").stdout
    finally:
        assert daemon.stop() == 0, daemon.log
    stopped = daemon.triage("status", check=False)
    assert stopped.returncode == 1


def test_install_script_into_a_staging_root(tmp_path: Path) -> None:
    script = UNIT.parent / "install.sh"
    env = {**os.environ, "DESTDIR": str(tmp_path), "SKIP_VENV": "1"}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
    for path in (
        "etc/dicom-triage/triage.toml",
        "etc/systemd/system/dicom-triage.service",
        "usr/lib/sysusers.d/dicom-triage.conf",
        "var/lib/dicom-triage/models",
        "opt/dicom-triage/README.md",
    ):
        assert (tmp_path / path).exists(), path
    config = tmp_path / "etc/dicom-triage/triage.toml"
    config.write_text(config.read_text() + "\n# site edit\n")
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
    assert "# site edit" in config.read_text()  # an upgrade never overwrites the config
    dropin = tmp_path / "etc/systemd/system/dicom-triage.service.d/network.conf"
    assert not dropin.exists()  # no allowed_networks: no fence that would cut scanners off

    # With allowed networks (and this environment's triage as the installed
    # one), the install writes the kernel's fence for them.
    venv_bin = tmp_path / "opt/dicom-triage/.venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "triage").symlink_to(Path(sys.executable).parent / "triage")
    config.write_text(
        config.read_text().replace(
            "allowed_networks = []  ", 'allowed_networks = ["10.9.0.0/16"]', 1
        )
    )
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
    assert "IPAddressDeny=any\n" in dropin.read_text()
    assert "IPAddressAllow=10.9.0.0/16\n" in dropin.read_text()
    subprocess.run(
        ["bash", str(script), "uninstall"], env=env, check=True, capture_output=True, timeout=60
    )
    assert not (tmp_path / "etc/systemd/system/dicom-triage.service").exists()
    assert not dropin.exists()
    assert not (tmp_path / "opt/dicom-triage").exists()
    assert config.exists() and (tmp_path / "var/lib/dicom-triage").exists()


def test_json_logs(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    daemon = TriageDaemon(tmp_path / "state", tiny_model_dirs, TRIAGE_LOGGING_FORMAT="json")
    daemon.start()
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.lines if line.startswith("{")]
    assert any(r["message"].startswith("Ready: listening") for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_a_stuck_worker_stops_the_watchdog() -> None:
    import threading

    from daemon.supervisor import Supervisor, workers_healthy
    from daemon.worker import Worker

    class Idle(Worker):
        def tick(self) -> bool:
            return False

    supervisor = Supervisor(threading.Event())
    fresh = Idle("fresh", supervisor.stop)
    stale = Idle("stale", supervisor.stop, idle_seconds=3600, stuck_seconds=60)
    supervisor.start(fresh, stale)  # stale: one round, then it waits an hour
    try:
        assert supervisor.healthy()
        supervisor.stop.wait(0.2)  # its first round is over
        stale.heartbeat -= 10_000  # as if that round had lasted hours
        assert not supervisor.healthy()
        dead = Idle("never started", supervisor.stop)
        assert not workers_healthy([fresh, dead])
    finally:
        assert supervisor.drain(5.0) == []
    assert not fresh.is_alive() and not stale.is_alive()


def test_status_file_in_a_missing_state_directory(tmp_path: Path) -> None:
    from daemon.health import read_status, write_status

    target = tmp_path / "not" / "there"
    write_status(target, {"pid": 1, "updated_at": "2026-01-01T00:00:00+00:00"})
    assert read_status(target) == {"pid": 1, "updated_at": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "file").write_text("")
    write_status(tmp_path / "file", {})  # cannot write: logged, not raised


def test_a_worker_being_started_is_never_judged_dead() -> None:
    """A delivery worker is started from the dispatcher's thread while the main
    loop judges health: the judgement must not see it added but not yet running."""
    import threading

    from daemon.supervisor import Supervisor
    from daemon.worker import Worker

    class SlowToStart(Worker):
        def start(self) -> None:
            started.set()
            time.sleep(0.5)  # the window between being added and running
            super().start()

        def tick(self) -> bool:
            return False

    started = threading.Event()
    supervisor = Supervisor(threading.Event())
    starting = threading.Thread(
        target=supervisor.start, args=(SlowToStart("slow", supervisor.stop),)
    )
    starting.start()
    try:
        assert started.wait(5)
        assert supervisor.healthy()
    finally:
        starting.join()
        assert supervisor.drain(5) == []
