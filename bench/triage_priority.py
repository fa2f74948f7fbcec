"""Triage before heat maps: does making occlusion maps slow triage down?

In one run, the same flood of OCT images goes to the daemon twice: with
occlusion maps on (every urgent, routine and supportive-care image gets
one) and with them off. Each time it measures the seconds from the first
image sent to the last one triaged; the ratio on/off is the cost of the
maps to triage (1.0: none). Run as root in a loopback-only namespace::

    bash tests/run_in_netns.sh .venv/bin/python -m bench.triage_priority
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.ingest import copies, push
from phantoms.demo import ensure_models
from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon


def seconds_to_triage(
    scratch: Path, models: dict[str, Path], files: list[Path], maps: bool, senders: int
) -> tuple[float, int]:
    """(seconds from the first image sent to the last triaged, maps made by then)."""
    daemon = TriageDaemon(
        scratch / f"state-{maps}",
        models,
        TRIAGE_OCCLUSION_ENABLED=str(maps).lower(),
        TRIAGE_DICOM_MAX_ASSOCIATIONS="16",
        TRIAGE_DICOM_MAX_ASSOCIATIONS_PER_PEER="16",
    )
    daemon.start()
    try:
        database = daemon.database()
        started = time.monotonic()
        _seconds, acknowledged = push(files, "TRIAGE", daemon.port, senders)
        if acknowledged != len(files):
            raise RuntimeError(f"{acknowledged} of {len(files)} acknowledged")
        deadline = started + 600
        while time.monotonic() < deadline:
            (waiting,) = database.execute(
                "select count(*) from instances where state = 'received'"
            ).fetchone() or (0,)
            if waiting == 0:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        (made,) = database.execute("select count(*) from occlusion_maps").fetchone() or (0,)
        return elapsed, int(made)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oct", type=int, default=200, help="OCT volumes in the flood")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--models", default="var/bench", help="state dir with (or for) models")
    args = parser.parse_args()
    state = Path(args.models).absolute()
    ensure_models(state)
    models = {m: state / "models" / m for m in ("oct", "cxr")}
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as temporary:
        scratch = Path(temporary)
        source = sorted(write_dicom_studies("oct", scratch, 4, seed=5).rglob("*.dcm"))
        # Every class, so that maps are due for most images.
        files = [
            path
            for number, original in enumerate(source)
            for path in copies(original, scratch / f"sent-{number}", args.oct // len(source))
        ]
        off, _none = seconds_to_triage(scratch, models, files, False, args.senders)
        on, made = seconds_to_triage(scratch, models, files, True, args.senders)
    print(
        f"{len(files)} OCT images, {args.senders} senders: last image triaged after "
        f"{on:.1f} s with maps on ({made} maps made by then), {off:.1f} s with maps off: "
        f"ratio {on / off:.2f}"
    )


if __name__ == "__main__":
    main()
