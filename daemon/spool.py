"""Durable storage of received instances, and quarantine of rejected ones.

An instance is written to a temporary file, fsync'ed, renamed into place and
its directory fsync'ed before the C-STORE is acknowledged (PS3.4 B.2.3: a
success tells the sender it may delete its copy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# A received dataset with its file meta: bytes in memory, or the file that
# pynetdicom wrote as it arrived. A large file is read in chunks, never whole.
Received = bytes | Path

# pynetdicom's temporary files (tempfile.NamedTemporaryFile, suffix ".dcm")
# in the incoming folder; one left behind was never acknowledged.
RECEIVING_PATTERN = "tmp*.dcm"
CHUNK_BYTES = 1024 * 1024
# A file in incoming/ untouched for this long belongs to no live transfer.
STALE_SECONDS = 3600.0


def received_size(content: Received) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def received_head(content: Received, length: int) -> bytes:
    """The first ``length`` bytes (fewer if there are fewer)."""
    if isinstance(content, bytes):
        return content[:length]
    with content.open("rb") as handle:
        return handle.read(length)


def received_chunks(content: Received, start: int = 0) -> Iterator[bytes]:
    """The bytes from ``start`` on, a chunk at a time."""
    if isinstance(content, bytes):
        for offset in range(start, len(content), CHUNK_BYTES):
            yield content[offset : offset + CHUNK_BYTES]
        return
    with content.open("rb") as handle:
        handle.seek(start)
        while block := handle.read(CHUNK_BYTES):
            yield block


def received_sha256(content: Received) -> str:
    digest = hashlib.sha256()
    for block in received_chunks(content):
        digest.update(block)
    return digest.hexdigest()


class HashingReader:
    """A binary file read through this is hashed as it is read, once.

    pydicom reads a header and seeks over deferred values (the pixel data);
    bytes skipped by a seek forward are hashed when a later read passes
    them, and ``finish`` hashes what was never read. So a header parse and
    the file's SHA-256 take one pass over the file, whatever order pydicom
    reads it in (a seek back re-reads bytes already counted, which are not
    counted again).
    """

    def __init__(self, handle: Any, digest: Any) -> None:
        self._handle = handle
        self._digest = digest
        self._hashed = 0  # every byte before this offset is in the digest
        self.name = getattr(handle, "name", "")

    def read(self, size: int = -1) -> bytes:
        start = self._handle.tell()
        data: bytes = self._handle.read(size)
        end = start + len(data)
        if end > self._hashed:
            if start > self._hashed:
                self._hash_up_to(start)
                self._handle.seek(end)
            self._digest.update(memoryview(data)[self._hashed - start :])
            self._hashed = end
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return int(self._handle.seek(offset, whence))

    def tell(self) -> int:
        return int(self._handle.tell())

    def finish(self) -> str:
        """Hash the rest of the file; the whole file's SHA-256."""
        self._hash_up_to(None)
        return str(self._digest.hexdigest())

    def _hash_up_to(self, offset: int | None) -> None:
        self._handle.seek(self._hashed)
        while offset is None or self._hashed < offset:
            wanted = CHUNK_BYTES if offset is None else min(CHUNK_BYTES, offset - self._hashed)
            block = self._handle.read(wanted)
            if not block:
                break
            self._digest.update(block)
            self._hashed += len(block)


@dataclasses.dataclass(frozen=True)
class StoredFile:
    path: Path
    size_bytes: int
    sha256: str


class Spool:
    """The folders under ``root``: ``instances/``, ``quarantine/`` and ``incoming/NODE/``.

    Files being received or written live in ``incoming/NODE`` (the host name
    by default) until they are complete, so that on a spool shared by several
    nodes one node's restart never removes another's files in flight.
    """

    def __init__(self, root: Path, node: str | None = None) -> None:
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.quarantine_dir = self.root / "quarantine"
        self.incoming = self.root / "incoming" / _safe_name(node or socket.gethostname())
        for folder in (self.instances, self.quarantine_dir, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)

    def store(
        self, content: Received, sop_instance_uid: str, sha256: str | None = None
    ) -> StoredFile:
        """Write ``content`` durably; the name never collides, even for duplicates."""
        final = self._final_path(sop_instance_uid)
        # Without a digest in hand, it is computed in the same pass as the copy.
        digest = hashlib.sha256()
        _write_durably(self.incoming, final, content, digest if sha256 is None else None)
        return StoredFile(final, received_size(content), sha256 or digest.hexdigest())

    def keep(self, content: Received, sop_instance_uid: str, sha256: str) -> StoredFile:
        """Keep a received file durably without copying it: a hard link into
        ``instances/`` (pynetdicom's temporary file is in ``incoming/``, on the
        same file system), the file and the folder fsync'ed. Bytes in memory,
        or a file on another file system, are written (``store``)."""
        if isinstance(content, bytes):
            return self.store(content, sop_instance_uid, sha256)
        final = self._final_path(sop_instance_uid)
        try:
            os.link(content, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return self.store(content, sop_instance_uid, sha256)
        try:
            descriptor = os.open(final, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            _fsync_directory(final.parent)
        except OSError:
            final.unlink(missing_ok=True)
            raise
        return StoredFile(final, received_size(content), sha256)

    def _final_path(self, sop_instance_uid: str) -> Path:
        """A new name in ``instances/``: it never collides, even for duplicates."""
        key = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
        folder = self.instances / key[:2]
        folder.mkdir(exist_ok=True)
        return folder / f"{key}-{uuid.uuid4().hex[:12]}.dcm"

    def quarantine(self, content: Received, reason: str, calling_ae_title: str) -> Path:
        """Keep a rejected dataset with a JSON note of why it was rejected."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}"
        path = self.quarantine_dir / f"{name}.dcm"
        _write_durably(self.incoming, path, content)
        note = {
            "reason": reason,
            "calling_ae_title": calling_ae_title,
            "received_at": dt.datetime.now(dt.UTC).isoformat(),
            "size_bytes": received_size(content),
        }
        _write_durably(
            self.incoming, path.with_suffix(".json"), json.dumps(note, indent=1).encode()
        )
        return path

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by a crash or an aborted association;
        none of them was acknowledged."""
        removed = 0
        for pattern in (".*.part", RECEIVING_PATTERN):
            for leftover in self.incoming.glob(pattern):
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def remove_stale_receives(self, older_than_seconds: float = STALE_SECONDS) -> int:
        """Delete files of transfers that stopped long ago.

        pynetdicom leaves the file of a dataset whose association was aborted
        mid-transfer; a live transfer writes to its file with every packet,
        and the network timeout ends a silent one long before this age.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        for pattern in (".*.part", RECEIVING_PATTERN):
            for leftover in self.incoming.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    if leftover.stat().st_mtime < cutoff:
                        leftover.unlink()
                        removed += 1
        return removed

    def discard(self, stored: StoredFile) -> None:
        """Remove a file whose database row could not be written."""
        stored.path.unlink(missing_ok=True)


def remove_retired_files(spool_root: Path, names: Iterable[str]) -> int:
    """Delete the files of retired instances; how many were deleted.

    Only ever inside ``spool_root``: a path in the database that points
    elsewhere (a moved spool, a hand-edited row) is left alone.
    """
    root = Path(spool_root).resolve()
    removed = 0
    for name in names:
        path = Path(name).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()
            removed += 1
    return removed


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "node"


def _write_durably(
    scratch: Path, final: Path, content: Received, digest: Any | None = None
) -> None:
    """Write, fsync, rename into place, fsync the folder; update ``digest`` on the way."""
    temporary = scratch / f".{final.name}.{uuid.uuid4().hex}.part"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        try:
            for block in received_chunks(content):
                if digest is not None:
                    digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        # A full disk (ENOSPC) or an I/O error: leave no partial file behind.
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, final)
    _fsync_directory(final.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
