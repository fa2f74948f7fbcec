"""Decoding runs in a child process: a crash, a hang or a memory blow-up there
never takes the daemon down, and the next image is decoded by a fresh child.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Settings
from daemon.decoding import (
    DecoderCrashed,
    IsolatedDecoder,
    decode_for_model,
    decode_many_for_model,
)
from daemon.pipeline import TRIAGE_RETRY, TriagePipeline
from daemon.runtime import CurrentRuntime, Runtime
from dicom_io.pixels import decode_instance
from domain.errors import InferenceError
from domain.triage import TriageModality
from model_runtime.classifier import Classifier
from phantoms.files import write_dicom_studies
from storage.models import Instance, InstanceState
from tests.records import store_received
from tests.traffic import plan_studies


def _crash() -> None:
    os.abort()  # as a segfault in a native decoder would end the process


def _hang() -> None:
    time.sleep(3600)


def _exhaust_memory() -> None:
    np.ones(8 * 1024**3, dtype=np.uint8)  # more than the child's allowance


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_dicom_studies("oct", tmp_path_factory.mktemp("oct"), 1, seed=501)
    return sorted(root.rglob("*.dcm"))[0]


def test_a_child_decodes_what_this_process_would(phantom: Path) -> None:
    decoder = IsolatedDecoder()
    try:
        (child,) = decoder.decode(phantom)
        here = decode_instance(phantom)
        assert child.frame_number == here.frame_number
        np.testing.assert_array_equal(child.image, here.image)
    finally:
        decoder.close()


@pytest.mark.parametrize("fault", [_crash, _hang], ids=["crash", "hang"])
def test_a_crash_or_hang_ends_the_child_not_the_caller(phantom: Path, fault: object) -> None:
    decoder = IsolatedDecoder(timeout_seconds=3)
    try:
        with pytest.raises(DecoderCrashed):
            decoder.run(fault)  # type: ignore[arg-type]
        (image,) = decoder.decode(phantom)  # a fresh child takes the next image
        assert image.image.size > 0
    finally:
        decoder.close()


def test_running_out_of_memory_is_an_inference_error(phantom: Path) -> None:
    decoder = IsolatedDecoder(memory_limit_bytes=1024**3)
    try:
        with pytest.raises(InferenceError, match="memory"):
            decoder.run(_exhaust_memory)
        assert decoder.decode(phantom)
    finally:
        decoder.close()


class CrashingDecoder(IsolatedDecoder):
    """Crashes its child whenever a call includes one file; decodes the rest as usual."""

    def __init__(self, poison: Path) -> None:
        super().__init__(timeout_seconds=10)
        self.poison = poison

    def run(self, function: Any, *args: Any) -> Any:
        if function is decode_for_model and args[0] == self.poison:
            return super().run(_crash)
        if function is decode_many_for_model and any(r[0] == self.poison for r in args[0]):
            return super().run(_crash)
        return super().run(function, *args)


def _stored_with_a_poison(
    tmp_path: Path,
    tiny_model_dirs: dict[str, Path],
    sessions: sessionmaker[Session],
    images: int,
    poisoned: int,
) -> tuple[TriagePipeline, CrashingDecoder, list[int]]:
    """``images`` stored OCT images, a pipeline whose decoder crashes on the
    one at index ``poisoned``, and the images' ids."""
    pool = sorted(write_dicom_studies("oct", tmp_path / "pool", 1, seed=502).rglob("*.dcm"))
    studies = plan_studies(pool, tmp_path / "s", studies=images, images_per_study=1)
    ids = [store_received(sessions, study.images[0].path) for study in studies]
    decoder = CrashingDecoder(studies[poisoned].images[0].path)
    classifier = Classifier(tiny_model_dirs["oct"], "cpu")
    pipeline = TriagePipeline(
        sessions,
        CurrentRuntime(Runtime(Settings(), {TriageModality.OCT: classifier})),
        queue.Queue(),
        threading.Event(),
        decoder=decoder,
    )
    return pipeline, decoder, ids


def test_an_image_that_keeps_crashing_the_decoder_is_failed_after_its_attempts(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """The pipeline: the poisoned image ends FAILED with the reason; the next is triaged."""
    sessions = sqlite_sessions
    pipeline, decoder, ids = _stored_with_a_poison(tmp_path, tiny_model_dirs, sessions, 2, 0)
    try:
        for _ in range(TRIAGE_RETRY.max_attempts + 1):
            for instance_id in ids:
                pipeline.process(instance_id)
                with sessions() as session, session.begin():  # as if its lease had run out
                    session.execute(
                        update(Instance).where(Instance.id == instance_id).values(lease_until=None)
                    )
    finally:
        decoder.close()
    with sessions() as session:
        bad, good = (session.get_one(Instance, i) for i in ids)
        assert good.state == InstanceState.TRIAGED
        assert bad.state == InstanceState.FAILED
        assert f"Given up after {TRIAGE_RETRY.max_attempts} attempts" in bad.error
        assert "The decoder process died" in bad.error
        assert bad.attempts == TRIAGE_RETRY.max_attempts + 1


def test_a_crash_in_a_shared_decode_blames_only_the_image_that_caused_it(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """Several images share one call to the child; when it crashes, each is
    decoded again alone, and only the poisoned one loses an attempt."""
    pipeline, decoder, ids = _stored_with_a_poison(tmp_path, tiny_model_dirs, sqlite_sessions, 3, 1)
    try:
        pipeline.process_many(ids)
    finally:
        decoder.close()
    with sqlite_sessions() as session:
        first, poisoned, third = (session.get_one(Instance, i) for i in ids)
        assert (first.state, third.state) == (InstanceState.TRIAGED, InstanceState.TRIAGED)
        assert poisoned.state == InstanceState.RECEIVED  # back for its next try
        assert poisoned.lease_until is None and poisoned.attempts == 1
        assert "The decoder process died" in poisoned.error


def test_a_decoder_that_fails_outright_gives_every_image_back(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], sqlite_sessions: sessionmaker[Session]
) -> None:
    """Not one image's fault: each goes back for another try with the reason,
    none is failed, and the worker carries on."""

    class Broken(CrashingDecoder):
        def decode_many_for_model(self, requests: Any) -> Any:
            raise RuntimeError("the decoder pool is gone")

    pipeline, decoder, ids = _stored_with_a_poison(tmp_path, tiny_model_dirs, sqlite_sessions, 2, 0)
    pipeline.decoder = Broken(decoder.poison)
    try:
        pipeline.process_many(ids)
    finally:
        decoder.close()
    with sqlite_sessions() as session:
        for row in (session.get_one(Instance, i) for i in ids):
            assert (row.state, row.attempts, row.lease_until) == (InstanceState.RECEIVED, 1, None)
            assert row.error == "RuntimeError: the decoder pool is gone"


CLOSE_WHILE_BUSY = """
import subprocess, sys, threading, time
from pathlib import Path
from daemon.decoding import IsolatedDecoder

started = Path(sys.argv[1])
decoder = IsolatedDecoder(timeout_seconds=600)
# The child runs a call that outlasts the caller's patience (30 s).
command = ["sh", "-c", f"touch {started}; exec sleep 30 </dev/null >/dev/null 2>&1"]
threading.Thread(target=decoder.run, args=(subprocess.call, command), daemon=True).start()
while not started.exists():
    time.sleep(0.05)
decoder.close()
print("closed", flush=True)
"""


def test_closing_a_decoder_whose_child_is_busy_lets_the_process_exit(tmp_path: Path) -> None:
    """A drain that ends while a child still decodes (a worker outlived the
    drain time) must not leave the interpreter's exit waiting on that child:
    CI saw `triage serve` hang after "Stopped", joining its decoder children."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_BUSY, str(tmp_path / "started")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert "closed" in result.stdout
