"""Each receive bound tried against the real daemon, while another sender
is served: a dataset past max_dataset_bytes, a peer trickling a byte a
second, one peer holding too many associations, a disk without room for
one more association. Peak memory is printed for each."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon

# Transport and receive bounds: the same on any database (not rerun on PostgreSQL).
pytestmark = [pytest.mark.network, pytest.mark.before_database]

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MIB = 1024 * 1024


def _associate(port: int, source: str = "127.0.0.1", calling: str = "SCANNER") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(DX_STORAGE, ExplicitVRLittleEndian)
    return _associate_with(ae, port, source)


def _associate_with(ae: AE, port: int, source: str = "127.0.0.1") -> Association:
    return ae.associate("127.0.0.1", port, ae_title="TRIAGE", bind_address=(source, 0))


def _rejection(association: Association) -> tuple[int, int, int]:
    assert association.is_rejected
    primitive = association.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def _store_from(port: int, source: str, path: Path) -> int:
    """C-STORE one file from another peer (a source address of its own)."""
    association = _associate(port, source, "OTHER")
    assert association.is_established
    try:
        status = association.send_c_store(dcmread(path))
        return int(status.Status)
    finally:
        association.release()


def _large_image(good: Path, out: Path, side: int) -> Path:
    dataset = dcmread(good)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.Rows = dataset.Columns = side
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelData = np.zeros((side, side), np.uint16).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.save_as(out, enforce_file_format=True)
    return out


def _incoming_files(daemon: TriageDaemon) -> list[Path]:
    return [p for p in (daemon.state_dir / "spool" / "incoming").glob("*") if p.is_file()]


def test_bounds_on_one_peer_leave_the_others_served(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 2, seed=171).rglob("*.dcm"))
    large = _large_image(files[0], tmp_path / "large.dcm", 4096)  # 32 MiB of pixels
    daemon = TriageDaemon(
        tmp_path / "state",
        tiny_model_dirs,
        TRIAGE_DICOM_MAX_DATASET_BYTES=str(8 * MIB),
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER="2",
        TRIAGE_DICOM_NETWORK_TIMEOUT_SECONDS="3",
    )
    daemon.start()
    try:
        # The pipeline's first triage, report and map set its memory going.
        assert _store_from(daemon.port, "127.0.0.2", files[4]) == 0x0000
        daemon.wait_for_reported_studies(1)
        baseline = daemon.peak_memory_mib()

        # 1. A dataset past the limit: aborted while it arrives, nothing left behind.
        big = _associate(daemon.port)
        assert big.is_established
        try:
            status = big.send_c_store(dcmread(large))
        except (OSError, RuntimeError):
            status = None
        assert big.is_aborted or not status, status
        daemon.wait_for_log("a dataset passed the 8388608 bytes allowed")
        assert _store_from(daemon.port, "127.0.0.2", files[1]) == 0x0000
        assert _incoming_files(daemon) == []
        # A C-FIND identifier is held in memory: 1 MiB at most past its first PDU.
        ae = AE(ae_title="CLINIC")
        ae.add_requested_context(WORKLIST_FIND)
        query = _associate_with(ae, daemon.port)
        identifier = Dataset()
        identifier.PatientID = ""
        identifier.add_new(0x00091010, "OB", bytes(9 * MIB))  # more than two PDUs
        try:
            for _status, _answer in query.send_c_find(identifier, WORKLIST_FIND):
                pass
        except (OSError, RuntimeError):
            pass
        daemon.wait_for_log("a dataset passed the 1048576 bytes allowed in memory")
        deadline = time.monotonic() + 10
        while query.is_established and time.monotonic() < deadline:
            time.sleep(0.1)  # the A-ABORT is on its way
        assert not query.is_established
        after_dataset = daemon.peak_memory_mib()

        # 2. A peer sending a byte a second: cut off after the PDU time (3 s),
        # while another peer stores.
        trickled = 0
        with socket.create_connection(("127.0.0.1", daemon.port)) as slow:
            request = struct.pack(">BBL", 0x01, 0, 200) + bytes(200)
            started = time.monotonic()

            def other_sender() -> None:
                assert _store_from(daemon.port, "127.0.0.2", files[2]) == 0x0000

            served = threading.Thread(target=other_sender)
            served.start()
            try:
                for byte in request:
                    slow.sendall(bytes([byte]))
                    trickled += 1
                    time.sleep(1)
                    closed = select.select([slow], [], [], 0)[0] and not slow.recv(1)
                    if closed:
                        break
            except OSError:
                pass  # the daemon closed the connection
            served.join()
            cut_after = time.monotonic() - started
        daemon.wait_for_log("a PDU did not arrive whole in time")
        assert trickled < 20, f"still connected after {trickled} bytes, {cut_after:.0f} s"
        after_slow = daemon.peak_memory_mib()

        # 3. Associations per peer: a third from 127.0.0.1 waits (transient,
        # local limit exceeded); another peer is accepted meanwhile.
        held = [_associate(daemon.port) for _ in range(2)]
        try:
            assert all(a.is_established for a in held), daemon.log
            assert _rejection(_associate(daemon.port)) == (0x02, 0x03, 0x02)
            daemon.wait_for_log("Rejected an association from 127.0.0.1 for now: 2 associations")
            assert _store_from(daemon.port, "127.0.0.2", files[3]) == 0x0000
        finally:
            for association in held:
                association.release()
        again = _associate(daemon.port)
        assert again.is_established
        again.release()

        peak = daemon.peak_memory_mib()
        print(
            f"\npeak memory: {baseline:.0f} MiB after a first study, {after_dataset:.0f} MiB "
            f"after a 32 MiB dataset cut at 8 MiB and a 9 MiB query at 1 MiB, "
            f"{after_slow:.0f} MiB after the slow peer, "
            f"{peak:.0f} MiB after the per-peer limit; the slow peer was cut after "
            f"{trickled} bytes ({cut_after:.1f} s)"
        )
        assert after_dataset - baseline < 48
        assert peak - baseline < 96
        daemon.wait_for_reported_studies(4)
    finally:
        assert daemon.stop() == 0, daemon.log


def test_an_association_needs_room_on_the_disk(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """Room for one association's reservation, not two: the second is refused
    for now (transient) and accepted once the first is released."""
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=172).rglob("*.dcm"))
    import shutil

    tmp_path.joinpath("state").mkdir()
    free = shutil.disk_usage(tmp_path / "state").free
    daemon = TriageDaemon(
        tmp_path / "state",
        tiny_model_dirs,
        TRIAGE_STORAGE_RESERVE_BYTES_PER_ASSOCIATION=str(int(free / 1.5)),
    )
    daemon.start()
    try:
        first = _associate(daemon.port)
        assert first.is_established
        try:
            assert _rejection(_associate(daemon.port)) == (0x02, 0x03, 0x02)
            daemon.wait_for_log("for now: the spool's disk has")
            assert int(first.send_c_store(dcmread(files[0])).Status) == 0x0000
        finally:
            first.release()
        assert _store_from(daemon.port, "127.0.0.2", files[1]) == 0x0000
        print(f"\npeak memory {daemon.peak_memory_mib():.0f} MiB")
        daemon.wait_for_reported_studies(2)
    finally:
        assert daemon.stop() == 0, daemon.log


def test_the_total_counts_live_associations_not_peers_that_left(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """At most max_associations at once, from any peers; but connections
    that closed before saying anything do not hold a place (pynetdicom keeps
    them in its list until its ACSE wait of 30 s ends)."""
    files = sorted(write_dicom_studies("cxr", tmp_path / "src", 1, seed=173).rglob("*.dcm"))
    daemon = TriageDaemon(
        tmp_path / "state",
        tiny_model_dirs,
        TRIAGE_DICOM_MAX_ASSOCIATIONS="3",
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER="2",
    )
    daemon.start()
    try:
        for _ in range(5):  # a port scanner: connect, close
            socket.create_connection(("127.0.0.1", daemon.port)).close()
        time.sleep(0.5)
        assert _store_from(daemon.port, "127.0.0.2", files[0]) == 0x0000, daemon.log

        held = [
            _associate(daemon.port),
            _associate(daemon.port),
            _associate(daemon.port, "127.0.0.2"),
        ]
        try:
            assert all(a.is_established for a in held), daemon.log
            assert _rejection(_associate(daemon.port, "127.0.0.3")) == (0x02, 0x03, 0x02)
        finally:
            for association in held:
                association.release()
        assert _store_from(daemon.port, "127.0.0.3", files[1]) == 0x0000
        print(f"\npeak memory {daemon.peak_memory_mib():.0f} MiB")
    finally:
        assert daemon.stop() == 0, daemon.log
