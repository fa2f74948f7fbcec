"""A private PostgreSQL server for the tests: its own cluster, a Unix socket only.

Started once per test session when ``TRIAGE_TEST_DATABASE=postgresql``; each
test gets a fresh database in it. Nothing listens on TCP.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run tests/install_system_deps.sh")
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and sessions run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="triage-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def start(self) -> None:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after ``pause``) and wait until it accepts connections."""
        subprocess.run(
            _as_postgres(
                [
                    _bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-w",
                    "-l",
                    str(self.root / "log"),
                    "-o",
                    f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} "
                    "-c fsync=on -c max_connections=200",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def new_database_url(self) -> str:
        name = f"triage_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            _as_postgres([_bin("createdb"), "-h", str(self.socket_dir), "-U", self.user, name]),
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://{self.user}@/{name}?host={self.socket_dir}"

    def pause(self) -> None:
        """Stop the server as a restart for patching does (fast: sessions are cut)."""
        subprocess.run(
            _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )

    def stop(self) -> None:
        self.pause()
        shutil.rmtree(self.root, ignore_errors=True)
