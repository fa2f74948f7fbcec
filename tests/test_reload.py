"""SIGHUP reloads the configuration and models; a broken model is rejected.
SIGUSR1 writes every thread's stack and changes nothing."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from model_runtime.package import Manifest, write_manifest
from phantoms.files import write_dicom_studies
from tests.peers import TriageDaemon

pytestmark = pytest.mark.network


def _config(path: Path, oct_model: Path, cxr_model: Path, extra: str = "") -> None:
    path.write_text(f'[models]\noct = "{oct_model}"\ncxr = "{cxr_model}"\n{extra}')


def _version_of(daemon: TriageDaemon, sop_instance_uid: str) -> str:
    database = daemon.database()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = database.execute(
            "select r.model_version from instance_results r join instances i "
            "on i.id = r.instance_fk where i.sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchall()
        if rows:
            return str(rows[0][0])
        time.sleep(0.2)
    raise AssertionError(daemon.log)


def test_sighup_swaps_models_and_rejects_a_broken_one(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    first = tmp_path / "oct-first"
    second = tmp_path / "oct-second"
    broken = tmp_path / "oct-broken"
    for target in (first, second, broken):
        shutil.copytree(model_dirs["oct"], target)
    manifest = Manifest.from_json((second / "manifest.json").read_text())
    write_manifest(second, dataclasses.replace(manifest, version="reloaded-v2"))
    (broken / "model.onnx").write_bytes(b"not a model")
    config = tmp_path / "triage.toml"
    _config(config, first, model_dirs["cxr"])

    files = sorted(write_dicom_studies("oct", tmp_path / "src", 1, seed=131).rglob("*.dcm"))
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    for key in ("TRIAGE_MODELS_OCT", "TRIAGE_MODELS_CXR"):
        daemon.env.pop(key)
    daemon.config_args = ["--config", str(config)]
    daemon.start()
    assert daemon.process is not None
    try:
        assert daemon.storescu(files[:1]).returncode == 0
        original = _version_of(daemon, uids[0])
        assert original == manifest.version

        # An association open across the reload is not dropped.
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", daemon.port, ae_title="TRIAGE")
        assert assoc.is_established
        # A restart-only key is kept as it runs, and named.
        _config(config, second, model_dirs["cxr"], "[dicom]\nmax_associations = 2\n")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("Reloaded:")
        assert "kept as they were until a restart: dicom.max_associations" in daemon.log
        assert assoc.send_c_echo().Status == 0
        assoc.release()

        assert daemon.storescu(files[1:2]).returncode == 0
        assert _version_of(daemon, uids[1]) == "reloaded-v2"

        _config(config, broken, model_dirs["cxr"])
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("Reload rejected")
        # SIGUSR1 writes every thread's stack, and the daemon goes on working.
        daemon.process.send_signal(signal.SIGUSR1)
        daemon.wait_for_log("(most recent call first)")
        assert daemon.storescu(files[2:3]).returncode == 0
        assert _version_of(daemon, uids[2]) == "reloaded-v2"
    finally:
        assert daemon.stop() == 0, daemon.log
