"""A reload is whole: one snapshot swapped, restart-only keys kept and named."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from daemon.config import (
    DicomSettings,
    OcclusionSettings,
    Settings,
    StudySettings,
    keep_restart_keys,
    load_settings,
    restart_needed,
    restart_only_keys,
)
from daemon.runtime import CurrentRuntime, Runtime, reload_runtime

ROOT = Path(__file__).resolve().parent.parent


def _marked_in_example() -> set[str]:
    marked, section = set(), ""
    for line in (ROOT / "systemd" / "triage.example.toml").read_text().splitlines():
        if header := re.match(r"^\[(\w+)\]", line):
            section = header.group(1)
        elif (key := re.match(r"^(\w+) = ", line)) and "(restart)" in line:
            marked.add(f"{section}.{key.group(1)}")
    return marked


def test_the_example_configuration_marks_exactly_the_restart_only_keys() -> None:
    assert _marked_in_example() == set(restart_only_keys())
    assert {"dicom.port", "storage.database_url", "occlusion.workers"} <= _marked_in_example()


def test_a_reload_keeps_restart_only_keys_and_names_them() -> None:
    running = Settings()
    loaded = dataclasses.replace(
        running,
        dicom=dataclasses.replace(running.dicom, port=4000, max_associations=3),
        study=StudySettings(stable_seconds=1.0, oct_frames="all"),
        occlusion=OcclusionSettings(workers=4, box=10),
    )
    assert restart_needed(running, loaded) == [
        "dicom.port",
        "dicom.max_associations",
        "occlusion.workers",
    ]
    applied = keep_restart_keys(running, loaded)
    assert applied.dicom == DicomSettings()  # the listener as it runs
    assert applied.occlusion.workers == 1 and applied.occlusion.box == 10
    assert applied.study == StudySettings(stable_seconds=1.0, oct_frames="all")
    assert restart_needed(running, applied) == []


def test_a_reload_that_fails_keeps_the_running_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("TRIAGE_MODELS_OCT", "TRIAGE_MODELS_CXR", "TRIAGE_STORAGE_STATE_DIR"):
        monkeypatch.delenv(key, raising=False)
    config = tmp_path / "triage.toml"
    config.write_text(f'[models]\noct = "{tmp_path / "missing"}"\n')
    running = Runtime(load_settings(None, {"STATE_DIRECTORY": str(tmp_path)}), {})
    current = CurrentRuntime(running)
    with caplog.at_level(logging.ERROR):
        current.replace(reload_runtime(config, current.current()))
    assert current.current() is running
    assert "Reload rejected" in caplog.text

    config.write_text("[dicom]\nport = 'not a number'\n")
    assert reload_runtime(config, running) is running
