"""``triage demo``: the whole path once, on phantoms, ending by itself.

A simulated scanner (pynetdicom) pushes phantom studies to a real
``triage serve`` process on the embedded defaults; a small demo PACS
receives the SRs. Everything is written under the state directory.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage  # type: ignore[attr-defined]

from dicom_io.status import Status
from domain.errors import TriageError
from phantoms import trained_models

logger = logging.getLogger(__name__)

# Text or JSON logs alike: "Ready: listening as TRIAGE on 127.0.0.1:11112".
READY_LINE = re.compile(r"Ready: listening as \S+ on [^\s\"]+:(\d+)")
READY_SECONDS = 60
EXIT_SECONDS = 10
DAEMON_ENDED = ""  # put on the line queue once the daemon's output has closed


def _ready_port(lines: queue.Queue[str], seconds: float) -> int | None:
    """The port of the daemon's "Ready: listening as AE on HOST:PORT" line;
    None if it stops, or says nothing of the kind, first."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line == DAEMON_ENDED:
            return None
        if ready := READY_LINE.search(line):
            return int(ready.group(1))
    return None


def ensure_models(state_dir: Path) -> None:
    """Phantom models under ``state_dir/models``: the shipped ones when they fit
    this code (at once), otherwise trained here (once; needs the train extra)."""
    target = state_dir / "models"
    if all((target / m / "manifest.json").is_file() for m in trained_models.MODALITIES):
        return
    shipped = trained_models.committed_packages()
    if shipped is not None:
        trained_models.copy_packages(shipped, target)
        return
    try:
        import trainer.train  # noqa: F401
    except ImportError as exc:
        raise TriageError(
            "No models yet and the train extra is not installed: pip install 'dicom-triage[train]'"
        ) from exc
    print("Training the phantom models (once; a few minutes on 2 cores)...")
    data = trained_models.write_training_data(state_dir / "training-phantoms")
    trained_models.train_packages(target, data)


def start_demo_pacs(folder: Path) -> tuple[object, int]:
    """A C-STORE SCP for SRs on an ephemeral loopback port."""
    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        return Status.SUCCESS

    ae = AE(ae_title="DEMOPACS")
    ae.add_supported_context(Comprehensive3DSRStorage)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    if server is None:
        raise TriageError("The demo PACS could not start.")
    return server, int(server.server_address[1])


def push_studies(files: list[Path], port: int) -> None:
    """The simulated scanner: one association, every file."""
    ae = AE(ae_title="SCANNER")
    for sop_class in {str(dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    if not assoc.is_established:
        raise TriageError("The daemon refused the scanner's association.")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            print(f"  sent {path.parent.name}/{path.name[:24]}...: status 0x{status.Status:04X}")
    finally:
        assoc.release()


def run_demo(
    state_dir: Path, count: int = 2, timeout_seconds: float = 180.0, config: str | None = None
) -> int:
    from phantoms.files import write_dicom_studies

    state_dir = state_dir.absolute()
    ensure_models(state_dir)
    env = dict(os.environ)
    env["TRIAGE_STORAGE_STATE_DIR"] = str(state_dir)
    env["TRIAGE_STUDY_STABLE_SECONDS"] = "2"
    configured = ["--config", config] if config else []
    triage = [sys.executable, "-m", "daemon.cli"]
    subprocess.run([*triage, "db", "upgrade", *configured], env=env, check=True)

    pacs, pacs_port = start_demo_pacs(state_dir / "demo-pacs")
    env["TRIAGE_DESTINATIONS"] = json.dumps(
        [{"ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs_port}]
    )
    daemon = subprocess.Popen(
        [*triage, "serve", *configured],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: queue.Queue[str] = queue.Queue()

    def relay() -> None:
        for line in daemon.stdout or ():
            print(f"  [daemon] {line.rstrip()}")
            lines.put(line)

    def relay_then_end() -> None:
        relay()
        lines.put(DAEMON_ENDED)  # its output closed: it has stopped

    threading.Thread(target=relay_then_end, daemon=True).start()
    try:
        port = _ready_port(lines, READY_SECONDS)
        if port is None:
            try:
                # Its output has closed, or the time is up: a process whose
                # output closed is reaped a moment later, so wait for it.
                code = daemon.wait(timeout=EXIT_SECONDS)
                print(
                    f"Demo stopped: the daemon stopped before it was ready (exit {code}); "
                    "its log is above"
                )
            except subprocess.TimeoutExpired:
                print(f"Demo stopped: the daemon was not ready after {READY_SECONDS} s")
            return 1
        studies = []
        for modality in ("oct", "cxr"):
            root = write_dicom_studies(
                modality, state_dir / "demo-studies", count, seed=11 if modality == "oct" else 12
            )
            studies.extend(sorted(root.rglob("*.dcm")))
        print(f"Scanner: pushing {len(studies)} phantom studies to TRIAGE@127.0.0.1:{port}")
        push_studies(studies, port)
        received: list[Path] = []
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and len(received) < len(studies):
            time.sleep(0.5)
            received = sorted((state_dir / "demo-pacs").glob("*.dcm"))
        print(
            f"\nDemo PACS holds {len(received)} SR(s) of {len(studies)} studies, in "
            f"{state_dir / 'demo-pacs'}"
        )
        print("\nUrgent worklist (triage worklist --urgent):")
        subprocess.run([*triage, "worklist", "--urgent", *configured], env=env, check=True)
        return 0 if len(received) == len(studies) else 1
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        pacs.shutdown()  # type: ignore[attr-defined]
