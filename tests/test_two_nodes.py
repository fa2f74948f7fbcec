"""Two daemons share one PostgreSQL: work is claimed once, SRs are sent once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from phantoms.files import write_dicom_studies
from tests import peers
from tests.peers import Orthanc, TriageDaemon, dcmtk_env

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        os.environ.get("TRIAGE_TEST_DATABASE") != "postgresql",
        reason="two nodes need PostgreSQL (make test runs this on it)",
    ),
]


def test_two_nodes_one_database(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    files = sorted(write_dicom_studies("oct", tmp_path / "src", 4, seed=101).rglob("*.dcm"))
    database_url = peers.DATABASE_FACTORY[0]()
    pacs = Orthanc(tmp_path / "orthanc")
    shared = {
        # The spool is shared storage between the nodes (NFS in production).
        "TRIAGE_STORAGE_SPOOL_DIR": str(tmp_path / "shared-spool"),
        "TRIAGE_DESTINATIONS": json.dumps(
            [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}]
        ),
    }
    nodes = [
        TriageDaemon(tmp_path / f"node{n}", model_dirs, database_url=database_url, **shared)
        for n in (1, 2)
    ]
    # Orthanc accepts SRs from either node: both use the AE title TRIAGE.
    pacs.start(triage_port=nodes[0].port)
    try:
        for node in nodes:
            node.start()
        senders = [
            subprocess.Popen(
                node.storescu_command(files[n::2]),
                env=dcmtk_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for n, node in enumerate(nodes)
        ]
        assert all(sender.wait(timeout=120) == 0 for sender in senders)
        database = nodes[0].database()
        # Every study reported and every delivery delivered: nothing is left
        # that could send a second SR after this.
        settled = (
            "select (select count(*) from studies where state = 'reported'), "
            "(select count(*) from deliveries where state = 'delivered'), "
            "(select count(*) from deliveries where state != 'delivered')"
        )
        deadline = time.monotonic() + 120
        while database.execute(settled).fetchone() != (len(files), len(files), 0):
            assert time.monotonic() < deadline, nodes[0].log + nodes[1].log
            time.sleep(0.3)
        assert len(pacs.structured_reports()) == len(files)

        assert database.execute("select count(*) from instance_results").fetchone() == (len(files),)
        assert database.execute("select count(*) from reports").fetchone() == (len(files),)
        assert database.execute(
            "select count(*) from deliveries where state = 'delivered'"
        ).fetchone() == (len(files),)
        triaged_by = [node.log.count(" triaged: ") for node in nodes]
        print(f"\ninstances triaged by node 1 and node 2: {triaged_by}")
        assert sum(triaged_by) == len(files)
    finally:
        for node in nodes:
            assert node.stop() == 0, node.log
        pacs.stop()
