"""Real processes the tests talk to: the daemon itself, Orthanc, dcmtk tools."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from phantoms.files import write_dicom_studies

READY_MARKER = "Ready: listening"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_association(port: int, called: str = "TRIAGE") -> Any:
    """An established Verification association from AE ``SCANNER`` to ``port``."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    scu = AE(ae_title="SCANNER")
    scu.add_requested_context(Verification)
    association = scu.associate("127.0.0.1", port, ae_title=called)
    assert association.is_established
    return association


def dcmtk_env() -> dict[str, str]:
    # dcmtk 3.6.7 leaves Nagle on unless told (REFERENCE.md).
    return {**os.environ, "TCP_NODELAY": "1"}


def run_tool(
    args: Sequence[str], timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), cwd=cwd
    )


class Rows(list[tuple[Any, ...]]):
    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self[0] if self else None


class DatabaseView:
    """``execute(sql, params)`` with ``?`` placeholders, on any SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url)

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Rows:
        """Read: the rows of ``statement``."""
        with self.engine.connect() as connection:
            return Rows(tuple(row) for row in connection.execute(*_named(statement, parameters)))

    def write(self, statement: str, parameters: Sequence[Any] = ()) -> None:
        """Change rows behind the daemon's back (say, while it is stopped), committed."""
        with self.engine.begin() as connection:
            connection.execute(*_named(statement, parameters))


def _named(statement: str, parameters: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """``?`` placeholders, as sqlite3 writes them, to SQLAlchemy's named ones."""
    from sqlalchemy import text

    pieces = statement.split("?")
    named = {f"p{i}": value for i, value in enumerate(parameters)}
    rebuilt = pieces[0] + "".join(f":p{i}{piece}" for i, piece in enumerate(pieces[1:]))
    return text(rebuilt), named


# Set by conftest.py when the suite runs against PostgreSQL.
DATABASE_FACTORY: list[Any] = []
POSTGRES_SERVER: list[Any] = []  # the tests.postgres.PostgresServer, to restart it


# The user of the web pages and the API that ``web_daemon`` (conftest) knows.
WEB_USER, WEB_PASSWORD = "ward-7", "correct horse battery staple"


def urgent_oct_studies(folder: Path) -> list[Path]:
    """Phantom OCT studies of one urgent class (CNV), one image each."""
    root = write_dicom_studies("oct", folder / "scanner", 1, seed=41)
    truth = json.loads((root / "lesions.json").read_text())
    return [root / relative for relative, record in truth.items() if record["label"] == "CNV"]


class TriageDaemon:
    """``triage serve`` as a real process, with its log kept for assertions."""

    def __init__(
        self,
        state_dir: Path,
        models: Mapping[str, Path],
        database_url: str | None = None,
        **env: str,
    ) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        if database_url is None:
            database_url = (
                DATABASE_FACTORY[0]()
                if DATABASE_FACTORY
                else f"sqlite:///{state_dir / 'triage.sqlite3'}"
            )
        self.database_url = database_url
        self.env = {
            "TRIAGE_STORAGE_DATABASE_URL": self.database_url,
            **os.environ,
            "TRIAGE_STORAGE_STATE_DIR": str(state_dir),
            "TRIAGE_MODELS_OCT": str(models["oct"]),
            "TRIAGE_MODELS_CXR": str(models["cxr"]),
            "TRIAGE_DICOM_PORT": str(self.port),
            "TRIAGE_STUDY_STABLE_SECONDS": "1",
            "TRIAGE_STORAGE_MIN_FREE_BYTES": "1000000",
            "TRIAGE_DELIVERY_RETRY_SCHEDULE": "30x1s",
            **env,
        }
        self.config_args: list[str] = []
        # http://127.0.0.1:PORT when the test gave it an HTTP port.
        self.web_url = ""
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()

    def database(self) -> DatabaseView:
        """Read the daemon's database, SQLite or PostgreSQL, with sqlite3-style calls."""
        return DatabaseView(self.database_url)

    def triage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def start(self, timeout: float = 90, upgrade: bool = True) -> None:
        if upgrade:
            self.triage("db", "upgrade", *self.config_args)
        self._queue = queue.Queue()  # only this process's lines count as ready
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "serve", *self.config_args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError("triage serve exited:\n" + self.log) from None
                continue
            if READY_MARKER in line:
                return
        raise RuntimeError("triage serve did not become ready:\n" + self.log)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` appears in the log (its lines arrive from a reader
        thread, a moment after the daemon acts); fail with the log if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.log:
            time.sleep(0.1)
        assert text in self.log, self.log

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Where it is stuck: the daemon writes every thread's stack on SIGUSR1.
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            self.process.kill()
            self.process.wait()
            raise AssertionError("triage serve did not stop within 60 s:\n" + self.log) from None

    def reported_studies(self) -> int:
        """How many studies are reported now."""
        rows = self.database().execute("select count(*) from studies where state = 'reported'")
        (count,) = rows.fetchone() or (0,)
        return int(count)

    def wait_for_reported_studies(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` studies are reported; fail with the log if they are not."""
        deadline = time.monotonic() + timeout
        while self.reported_studies() != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} studies were not reported in time\n{self.log}")
            time.sleep(0.3)

    def report_and_stop(self, studies: Sequence[Path]) -> None:
        """Start, push single-image ``studies``, wait until each is reported, stop cleanly."""
        self.start()
        try:
            sent = self.storescu(studies)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            self.wait_for_reported_studies(len(studies))
        finally:
            assert self.stop() == 0, self.log

    def findscu_worklist(
        self,
        out_dir: Path,
        *keys: str,
        options: Sequence[str] = (),
        port: int | None = None,
        calling: str = "CLINIC",
    ) -> subprocess.CompletedProcess[str]:
        """A Modality Worklist C-FIND by dcmtk (``options`` such as ``+tls``,
        to ``port`` rather than the plain one); answers are written as
        rsp*.dcm in out_dir."""
        out_dir.mkdir(parents=True, exist_ok=True)
        arguments = [item for key in keys for item in ("-k", key)]
        return run_tool(
            [
                "findscu", "-W", "-X", "-od", str(out_dir), *options,
                "-aet", calling, "-aec", "TRIAGE", *arguments,
                "127.0.0.1", str(port or self.port),
            ]
        )  # fmt: skip

    def storescu_command(
        self, files: Sequence[Path], *options: str, port: int | None = None
    ) -> list[str]:
        """dcmtk's storescu as the scanner SCANNER, sending ``files`` to this
        daemon (to ``port`` rather than the plain one)."""
        return [
            "storescu", *options, "-aet", "SCANNER", "-aec", "TRIAGE",
            "127.0.0.1", str(port or self.port), *map(str, files),
        ]  # fmt: skip

    def storescu(
        self, files: Sequence[Path], *options: str, port: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(self.storescu_command(files, *options, port=port))

    def peak_memory_mib(self) -> float:
        """The daemon process's peak resident memory so far (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


class Orthanc:
    """Orthanc as the PACS, on ephemeral ports, knowing the daemon's AE title."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.triage_port = 0

    def start(self, triage_port: int = 11112, **options: Any) -> None:
        """Start with the test configuration and ``options`` over it
        (for example ``DicomTlsEnabled=True``)."""
        if shutil.which("Orthanc") is None:
            raise RuntimeError("Orthanc is not installed: run tests/install_system_deps.sh")
        self.triage_port = triage_port
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": {"triage": ["TRIAGE", "127.0.0.1", triage_port]},
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "Plugins": [],
            **options,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            ["Orthanc", str(path)], stdout=log, stderr=log, env=dcmtk_env()
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start:\n" + (self.folder / "orthanc.log").read_text())

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def structured_reports(self) -> list[dict[str, Any]]:
        return list(
            self.post(
                "/tools/find",
                {"Level": "Instance", "Query": {"Modality": "SR"}, "Expand": True},
            )
        )

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class SilentPeer:
    """A destination behind a misbehaving firewall: it accepts TCP and never answers.

    Each accepted connection is held open, unread, until ``stop``.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted = 0
        self._socket: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", self.port))
        self._socket.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        assert self._socket is not None
        while self._socket.fileno() != -1:
            try:
                connection, _address = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)
            self.accepted += 1

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
        for connection in self._held:
            connection.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
