"""Durable storage of received instances, and quarantine of rejected ones.

An instance is written to a temporary file, fsync'ed, renamed into place and
its directory fsync'ed before the C-STORE is acknowledged (PS3.4 B.2.3: a
success tells the sender it may delete its copy).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class StoredFile:
    path: Path
    size_bytes: int
    sha256: str


class Spool:
    """The folders under ``root``: ``instances/``, ``quarantine/`` and ``incoming/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.quarantine_dir = self.root / "quarantine"
        self.incoming = self.root / "incoming"
        for folder in (self.instances, self.quarantine_dir, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)

    def store(self, content: bytes, sop_instance_uid: str, sha256: str | None = None) -> StoredFile:
        """Write ``content`` durably; the name never collides, even for duplicates."""
        key = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
        folder = self.instances / key[:2]
        folder.mkdir(exist_ok=True)
        final = folder / f"{key}-{uuid.uuid4().hex[:12]}.dcm"
        _write_durably(self.incoming, final, content)
        digest = sha256 or hashlib.sha256(content).hexdigest()
        return StoredFile(final, len(content), digest)

    def quarantine(self, content: bytes, reason: str, calling_ae_title: str) -> Path:
        """Keep a rejected dataset with a JSON note of why it was rejected."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}"
        path = self.quarantine_dir / f"{name}.dcm"
        _write_durably(self.incoming, path, content)
        note = {
            "reason": reason,
            "calling_ae_title": calling_ae_title,
            "received_at": dt.datetime.now(dt.UTC).isoformat(),
            "size_bytes": len(content),
        }
        _write_durably(
            self.incoming, path.with_suffix(".json"), json.dumps(note, indent=1).encode()
        )
        return path

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by a crash; none of them was acknowledged."""
        removed = 0
        for leftover in self.incoming.glob(".*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def discard(self, stored: StoredFile) -> None:
        """Remove a file whose database row could not be written."""
        stored.path.unlink(missing_ok=True)


def _write_durably(scratch: Path, final: Path, content: bytes) -> None:
    temporary = scratch / f".{final.name}.{uuid.uuid4().hex}.part"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(content)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, final)
    _fsync_directory(final.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
