"""A corpus of hostile and broken input, sent as raw bytes over DICOM.

Each case is built from a valid phantom at test time and sent by a
pynetdicom SCU that streams the file's bytes unparsed
(``STORE_SEND_CHUNKED_DATASET``), as a broken or malicious sender would.
Each must get its status and be quarantined with its reason, while the
daemon keeps serving and its memory stays bounded.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

from daemon.validate import dataset_offset
from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon, run_tool

pytestmark = pytest.mark.network

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MPEG2 = "1.2.840.10008.1.2.4.100"


def send_raw(path: Path, port: int, sop_class: str, transfer_syntax: str) -> int | None:
    """C-STORE the file's dataset bytes as they are; return the status (None: refused)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(sop_class, transfer_syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        if not assoc.is_established:
            return None  # its only presentation context was rejected
        try:
            try:
                status = assoc.send_c_store(path)
            except ValueError:
                return None  # no accepted presentation context
            return int(status.Status) if status else None
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _fresh(source: Path) -> object:
    dataset = dcmread(source)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return dataset


def _save(dataset, path: Path, **kwargs) -> Path:
    dataset.save_as(path, enforce_file_format=True, **kwargs)
    return path


def _truncated(good: Path, out: Path) -> Path:
    data = _save(_fresh(good), out).read_bytes()
    out.write_bytes(data[: int(len(data) * 0.6)])
    return out


def _garbage(good: Path, out: Path) -> Path:
    data = _save(_fresh(good), out).read_bytes()
    dataset = dcmread(out)
    header_end = data.index(b"\x08\x00\x05\x00")  # the first dataset element
    out.write_bytes(data[:header_end] + bytes(range(256)) * 64)
    assert dataset  # the valid meta header stays
    return out


def _wrong_vr_length(good: Path, out: Path) -> Path:
    data = bytearray(_save(_fresh(good), out).read_bytes())
    tag = data.index(b"\x10\x00\x20\x00LO")  # Patient ID, explicit VR
    data[tag + 6 : tag + 8] = (0xFFF0).to_bytes(2, "little")
    out.write_bytes(bytes(data))
    return out


def _no_pixels(good: Path, out: Path) -> Path:
    dataset = _fresh(good)
    del dataset.PixelData
    return _save(dataset, out)


def _short_pixels(good: Path, out: Path) -> Path:
    dataset = _fresh(good)
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 3]
    return _save(dataset, out)


def _huge_dimensions(good: Path, out: Path) -> Path:
    dataset = _fresh(good)
    dataset.Rows = dataset.Columns = 65535
    return _save(dataset, out)


def _compressed_huge_volume(good: Path, out: Path) -> Path:
    """RLE-compressed (so no fixed pixel length to check) but declaring 1,500
    frames of 1024 x 1024: 3 GiB once decoded."""
    from pydicom.uid import RLELossless

    dataset = _fresh(good)
    dataset.compress(RLELossless)
    dataset.NumberOfFrames = 1500
    dataset.Rows = dataset.Columns = 1024
    return _save(dataset, out)


def _compressed_many_frames(good: Path, out: Path) -> Path:
    """RLE-compressed, small frames (well under the decoded size limit), but 5,000 of them."""
    from pydicom.uid import RLELossless

    dataset = _fresh(good)
    dataset.compress(RLELossless)
    dataset.NumberOfFrames = 5000
    return _save(dataset, out)


def _deflate_bomb(good: Path, out: Path) -> Path:
    """A deflated dataset whose Pixel Data inflates to 1 GiB of zeros."""
    dataset = _fresh(good)
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    _save(dataset, out)
    data = out.read_bytes()
    meta_end = dataset_offset(data)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = b"\x08\x00\x16\x00UI" + len(DX_STORAGE).to_bytes(2, "little") + DX_STORAGE.encode()
    body = [compressor.compress(header)]
    size = 1 << 30
    body.append(compressor.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")))
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        body.append(compressor.compress(zeros))
    body.append(compressor.flush())
    out.write_bytes(data[:meta_end] + b"".join(body))
    return out


def _wrong_sop_class(good: Path, out: Path) -> Path:
    """The file meta says DX; the dataset inside says X-Ray Angiography."""
    data = _save(_fresh(good), out).read_bytes()
    start = dataset_offset(data)
    body = data[start:].replace(
        b"1.2.840.10008.5.1.4.1.1.1.1\x00", b"1.2.840.10008.5.1.4.1.1.12.1", 1
    )
    out.write_bytes(data[:start] + body)
    assert dcmread(out).SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1"
    return out


CASES: list[tuple[str, Callable[[Path, Path], Path], str, set[int] | None, str]] = [
    ("truncated", _truncated, DX_STORAGE, {0xC000}, "Pixel Data"),
    ("garbage", _garbage, DX_STORAGE, {0xC000, 0xC002}, ""),
    ("wrong-vr-length", _wrong_vr_length, DX_STORAGE, {0xC000, 0xC002}, ""),
    ("no-pixel-data", _no_pixels, DX_STORAGE, {0xC001}, "no pixel data"),
    ("short-pixel-data", _short_pixels, DX_STORAGE, {0xC000}, "Pixel Data holds"),
    ("65535x65535", _huge_dimensions, DX_STORAGE, {0xC000}, "exceeds"),
    ("compressed-huge-volume", _compressed_huge_volume, DX_STORAGE, {0xC000}, "would decode"),
    ("compressed-many-frames", _compressed_many_frames, DX_STORAGE, {0xC000}, "frames; at most"),
    ("deflate-bomb", _deflate_bomb, DX_STORAGE, {0xC000}, "inflates beyond"),
    ("sop-class-mismatch", _wrong_sop_class, DX_STORAGE, {0xA900}, "sent as"),
]


def test_hostile_corpus(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    good = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=97).rglob("*.dcm"))[0]
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    daemon.start()
    assert daemon.process is not None
    quarantine = tmp_path / "state" / "spool" / "quarantine"
    try:
        for name, build, sop_class, statuses, reason in CASES:
            path = build(good, tmp_path / f"{name}.dcm")
            syntax = str(
                dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID
            )
            before = set(quarantine.glob("*.json"))
            status = send_raw(path, daemon.port, sop_class, syntax)
            assert status in statuses, f"{name}: status {status!r}\n{daemon.log}"
            notes = set(quarantine.glob("*.json")) - before
            assert len(notes) == 1, name
            note = json.loads(notes.pop().read_text())
            assert reason in note["reason"], (name, note)
            echo = run_tool(
                ["echoscu", "-aet", "SCANNER", "-aec", "TRIAGE", "127.0.0.1", str(daemon.port)]
            )
            assert echo.returncode == 0, f"daemon stopped serving after {name}"

        mpeg = _save(_fresh(good), tmp_path / "mpeg.dcm")
        assert send_raw(mpeg, daemon.port, DX_STORAGE, MPEG2) is None  # refused at negotiation

        long_name = _fresh(good)
        long_name.SpecificCharacterSet = "ISO_IR 192"
        long_name.PatientName = "Ä" * 200 + "^" + "名" * 100
        long_path = _save(long_name, tmp_path / "long-name.dcm")
        before = set(quarantine.glob("*.json"))
        status = send_raw(long_path, daemon.port, DX_STORAGE, "1.2.840.10008.1.2.1")
        assert status == 0xB000  # stored, with a warning: coercion of data elements
        (note,) = set(quarantine.glob("*.json")) - before
        assert "Patient's Name" in json.loads(note.read_text())["reason"]
        stored = daemon.database().execute("select patient_name from patients").fetchall()
        assert len(stored) == 1 and len(stored[0][0]) <= 324

        peak_mib = daemon.peak_memory_mib()
        print(f"\npeak daemon memory after the corpus (1 GiB deflate bomb): {peak_mib:.0f} MiB")
        assert peak_mib < 900
    finally:
        assert daemon.stop() == 0, daemon.log
