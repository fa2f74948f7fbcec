"""Check a received dataset before it is stored: the C-STORE handler's gate.

Every rejection is an ``IngestError`` carrying the DIMSE status to answer
(PS3.4 B.2.3) and a reason that is kept with the quarantined bytes. The
checks are cheap and bounded: nothing here decodes pixels, and a deflated
dataset is inflated in chunks with a ceiling before pydicom sees it.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from daemon.spool import (
    HashingReader,
    Received,
    received_chunks,
    received_head,
    received_size,
)
from dicom_io.status import Status
from domain.errors import IngestError

DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
# Larger than any OCT volume or radiograph we expect; a deflate bomb is not.
MAX_DATASET_BYTES = 512 * 1024 * 1024
MAX_SAMPLES = 512 * 1024 * 1024  # rows x columns x frames x samples per pixel
# Checked from the header before anything is decoded, compressed or not:
# the decoded image's bytes, and its frames (an OCT volume has up to ~1,000
# B-scans; each frame is decoded and prepared on its own).
MAX_DECODED_BYTES = 1024 * 1024 * 1024
MAX_FRAMES = 2048
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_TAGS = frozenset(Tag(keyword) for keyword in PIXEL_KEYWORDS)
# Values larger than this are left in the received buffer, not copied: the
# checks need only the pixel data's length and where it lies.
DEFER_BYTES = 1024 * 1024
# A received file up to this size is read whole to be checked (an OCT
# B-scan, a compressed radiograph); a larger one is read in chunks.
WHOLE_READ_BYTES = 2 * 1024 * 1024


# The file meta group is a few hundred bytes; this is far more than enough.
HEAD_BYTES = 64 * 1024


def dataset_offset(head: bytes) -> int:
    """Where the dataset starts after the preamble and the file meta group."""
    if head[128:132] != b"DICM":
        return 0
    position = 132
    # File meta elements are explicit VR little endian (PS3.10 7.1).
    while position + 8 <= len(head) and head[position : position + 2] == b"\x02\x00":
        vr = head[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(head[position + 8 : position + 12], "little")
            position += 12 + length
        else:
            length = int.from_bytes(head[position + 6 : position + 8], "little")
            position += 8 + length
    return position


def check_inflated_size(content: Received, limit: int = MAX_DATASET_BYTES) -> None:
    """Refuse a deflated dataset that would inflate beyond ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        for block in received_chunks(content, dataset_offset(received_head(content, HEAD_BYTES))):
            pending = block
            while pending:
                total += len(inflater.decompress(pending, 1 << 20))
                if total > limit:
                    raise IngestError(
                        f"The deflated dataset inflates beyond {limit} bytes; refused.",
                        Status.CANNOT_UNDERSTAND,
                    )
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise IngestError(
            f"The deflated dataset is corrupt: {exc}", Status.CANNOT_UNDERSTAND
        ) from exc


def _check_geometry(dataset: Dataset, size: int) -> None:
    try:
        rows = int(dataset.Rows)
        columns = int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise IngestError(
            f"The image pixel description is incomplete: {exc}", Status.CANNOT_UNDERSTAND
        ) from exc
    if min(rows, columns, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise IngestError("The image dimensions are not valid.", Status.CANNOT_UNDERSTAND)
    declared = rows * columns * frames * samples
    if frames > MAX_FRAMES:
        raise IngestError(
            f"The image declares {frames} frames; at most {MAX_FRAMES} are accepted.",
            Status.CANNOT_UNDERSTAND,
        )
    decoded_bytes = (declared * bits + 7) // 8
    if decoded_bytes > MAX_DECODED_BYTES:
        raise IngestError(
            f"The declared image ({rows} x {columns} x {frames} frames x {samples} samples, "
            f"{bits} bits) would decode to {decoded_bytes} bytes, which exceeds "
            f"{MAX_DECODED_BYTES}; refused.",
            Status.CANNOT_UNDERSTAND,
        )
    if declared > MAX_SAMPLES:
        raise IngestError(
            f"The declared image ({rows} x {columns} x {frames} frames x {samples} samples) "
            f"exceeds {MAX_SAMPLES} samples; refused.",
            Status.CANNOT_UNDERSTAND,
        )
    # A deflated dataset is inflated in memory and its offsets are in the
    # inflated stream, so there the value is read and measured.
    meta = getattr(dataset, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID", "") == DEFLATED
    element = dataset.get_item("PixelData", keep_deferred=not deflated)
    if element is None:
        return
    if isinstance(element, RawDataElement):
        if element.length == UNDEFINED_LENGTH:
            return  # encapsulated (compressed) pixel data: fragments, not a fixed length
        if element.value is None:
            # Deferred: the declared length, as far as the buffer really holds it.
            held = min(element.length, max(size - element.value_tell, 0))
        else:
            held = len(element.value)
    else:
        if element.is_undefined_length or element.value is None:
            return
        held = len(element.value)
    expected = (declared * bits + 7) // 8
    if held < expected:
        raise IngestError(
            f"Pixel Data holds {held} bytes but the image needs {expected}.",
            Status.CANNOT_UNDERSTAND,
        )


UID_KEYWORDS = {
    "SOPInstanceUID": "SOP Instance UID",
    "SOPClassUID": "SOP Class UID",
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
}


PN_COMPONENT_GROUP_MAX = 64  # PS3.5 6.2: Person Name, per component group


def coercion_warnings(dataset: Dataset) -> list[str]:
    """Problems that do not stop an image from being stored, but are reported.

    The instance is kept and triaged (its name is stored truncated), the
    sender gets 0xB000 (coercion of data elements), and a copy goes to the
    quarantine with the reason, for the PACS administrator to review.
    """
    warnings = []
    name = str(dataset.get("PatientName", ""))
    if any(len(group) > PN_COMPONENT_GROUP_MAX for group in name.split("=")):
        warnings.append(
            f"Patient's Name has a component group longer than {PN_COMPONENT_GROUP_MAX} "
            "characters (PS3.5 6.2); stored truncated"
        )
    return warnings


def parse_header(
    content: Received,
    affected_sop_instance_uid: str,
    negotiated_sop_class_uid: str | None = None,
    transfer_syntax_uid: str | None = None,
) -> Dataset:
    """Parse and check a received dataset, or raise ``IngestError``."""
    return parse_and_hash(
        content, affected_sop_instance_uid, negotiated_sop_class_uid, transfer_syntax_uid
    )[0]


def parse_and_hash(
    content: Received,
    affected_sop_instance_uid: str,
    negotiated_sop_class_uid: str | None = None,
    transfer_syntax_uid: str | None = None,
) -> tuple[Dataset, str]:
    """Parse and check a received dataset, or raise ``IngestError``; with
    the dataset, the file's SHA-256, from the same read of its bytes."""
    if transfer_syntax_uid == DEFLATED:
        check_inflated_size(content)
    try:
        dataset, sha256 = _read_and_hash(content)
    except Exception as exc:
        raise IngestError(f"Cannot parse the dataset: {exc}", Status.CANNOT_UNDERSTAND) from exc
    _check_dataset(dataset, content, affected_sop_instance_uid, negotiated_sop_class_uid)
    return dataset, sha256


def _read_and_hash(content: Received) -> tuple[Dataset, str]:
    """The parsed dataset and the SHA-256 of ``content``, from one read."""
    digest = hashlib.sha256()
    if isinstance(content, Path):
        with content.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size > WHOLE_READ_BYTES:
                reader = HashingReader(handle, digest)
                return _read_checked(reader), reader.finish()
            # A small file is read whole and parsed in memory: its header is
            # read element by element, and through a file those reads cost
            # more than the one read of the whole.
            content = handle.read()
    digest.update(content)
    return _read_checked(BytesIO(content)), digest.hexdigest()


def _read_checked(source: Any) -> Dataset:
    dataset = dcmread(source, defer_size=DEFER_BYTES)
    # Touch every top-level element so that a malformed one fails here;
    # the pixel data stays where it is (its length is checked below).
    # (Iterating a Dataset would convert every element, deferred ones too.)
    for tag in dataset.keys():  # noqa: SIM118
        if tag not in PIXEL_TAGS:
            dataset[tag]
    return dataset


def _check_dataset(
    dataset: Dataset,
    content: Received,
    affected_sop_instance_uid: str,
    negotiated_sop_class_uid: str | None,
) -> None:
    for keyword, name in UID_KEYWORDS.items():
        value = str(dataset.get(keyword, "")).strip()
        if not value:
            raise IngestError(
                f"The dataset has no {keyword}.", Status.CANNOT_UNDERSTAND_MISSING_UID
            )
        if not UID(value).is_valid:
            # Refused before it is acknowledged: no SR or SC could ever cite it.
            raise IngestError(
                f"The dataset's {name} is not a valid UID "
                f"({len(value)} characters; PS3.5 9.1 allows 64 digits and dots).",
                Status.CANNOT_UNDERSTAND,
            )
    if not any(key in dataset for key in PIXEL_KEYWORDS):
        raise IngestError("The dataset has no pixel data.", Status.CANNOT_UNDERSTAND_NO_PIXEL_DATA)
    if dataset.SOPInstanceUID != affected_sop_instance_uid:
        raise IngestError(
            "SOP Instance UID in the dataset differs from the C-STORE request.",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if negotiated_sop_class_uid and dataset.SOPClassUID != negotiated_sop_class_uid:
        raise IngestError(
            f"The dataset is a {dataset.SOPClassUID} but was sent as {negotiated_sop_class_uid}.",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    _check_geometry(dataset, received_size(content))
