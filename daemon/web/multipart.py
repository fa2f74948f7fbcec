"""A ``multipart/related`` body (RFC 2387), read as it arrives, each part
written to its own file: a STOW-RS request can carry gigabytes, and none of
it is held in memory."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

MAX_PART_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related body (400), or too
    large (413 when ``too_large``)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclasses.dataclass
class Part:
    content_type: str
    path: Path


def content_type_parameters(header: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; type="application/dicom"; boundary=x`` as
    ("multipart/related", {"type": ..., "boundary": ...})."""
    message = Message()
    message["content-type"] = header
    parameters = {key.lower(): value for key, value in (message.get_params() or [])[1:]}
    return message.get_content_type(), parameters


async def read_parts(
    chunks: AsyncIterator[bytes], boundary: str, folder: Path, max_part_bytes: int, max_parts: int
) -> list[Part]:
    """Every part of the body, each in a new file in ``folder`` (the caller
    removes them). Raises ``MultipartError``; then no file is left behind."""
    parts: list[Part] = []
    try:
        await _read(chunks, boundary.encode("latin-1"), folder, max_part_bytes, max_parts, parts)
    except BaseException:
        for part in parts:
            part.path.unlink(missing_ok=True)
        raise
    return parts


async def _read(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    folder: Path,
    max_part_bytes: int,
    max_parts: int,
    parts: list[Part],
) -> None:
    # The first delimiter may follow a preamble; every later one follows a CRLF.
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"
    stream = aiter(chunks)

    async def more() -> bool:
        nonlocal buffer
        try:
            buffer += await anext(stream)
        except StopAsyncIteration:
            return False
        return True

    while (start := buffer.find(delimiter)) < 0:
        if len(buffer) > MAX_PART_HEADER_BYTES:
            raise MultipartError("no multipart boundary where the body begins")
        if not await more():
            raise MultipartError("the body holds no part")
    buffer = buffer[start + len(delimiter) :]
    while True:
        while len(buffer) < 2:
            if not await more():
                raise MultipartError("the body ends inside a delimiter")
        if buffer.startswith(b"--"):
            return  # the close delimiter
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_PART_HEADER_BYTES:
                raise MultipartError("a part's headers are too long")
            if not await more():
                raise MultipartError("the body ends inside a part's headers")
        headers = HeaderParser().parsestr(
            buffer[:end].decode("latin-1").lstrip(" \t").lstrip("\r\n")
        )
        buffer = buffer[end + 4 :]
        if len(parts) >= max_parts:
            raise MultipartError(f"more than {max_parts} parts", too_large=True)
        descriptor, name = tempfile.mkstemp(dir=folder, prefix="stow-", suffix=".dcm")
        part = Part(headers.get_content_type(), Path(name))
        parts.append(part)
        with os.fdopen(descriptor, "wb") as out:
            written = 0
            while (found := buffer.find(delimiter)) < 0:
                # Keep what could be the start of a delimiter split across chunks.
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    out.write(buffer[:-keep])
                    written += len(buffer) - keep
                    buffer = buffer[-keep:]
                if written > max_part_bytes:
                    raise MultipartError(f"a part is larger than {max_part_bytes} bytes", True)
                if not await more():
                    raise MultipartError("the body ends inside a part")
            out.write(buffer[:found])
            if written + found > max_part_bytes:
                raise MultipartError(f"a part is larger than {max_part_bytes} bytes", True)
        buffer = buffer[found + len(delimiter) :]
