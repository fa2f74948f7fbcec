"""A bare pynetdicom receiver, the floor under the daemon's ingest figures.

One process, PDU size 0 (unlimited), every storage SOP class the daemon
accepts; each C-STORE writes the received bytes to a file and fsyncs it,
then answers success. No parsing, no database: what the daemon adds above
this is its own cost. ``python -m bench.bare_receiver PORT FOLDER``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt

from daemon.routing import ACCEPTED_STORAGE_SOP_CLASSES
from daemon.scp import STORAGE_TRANSFER_SYNTAXES


def main() -> None:
    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)

    def store(event: Any) -> int:
        path = folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with path.open("wb") as handle:
            handle.write(event.encoded_dataset(include_meta=True))
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 16
    for sop_class in ACCEPTED_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, store)])


if __name__ == "__main__":
    main()
