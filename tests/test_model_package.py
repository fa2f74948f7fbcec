from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from domain.errors import ModelPackageError
from model_runtime.classifier import Classifier
from model_runtime.package import load_package


def test_trained_package_loads(model_dirs: dict[str, Path]) -> None:
    manifest, model_path = load_package(model_dirs["oct"])
    assert manifest.labels == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert {k: v.value for k, v in manifest.referrals.items()} == {
        "CNV": "urgent",
        "DME": "urgent",
        "DRUSEN": "routine",
        "NORMAL": "observation",
    }
    assert model_path.name == "model.onnx"
    assert manifest.training["holdout_accuracy"] >= 0.9
    assert "from scratch" in manifest.training["method"]
    assert manifest.training["base_weights"] == "none"
    cxr, _ = load_package(model_dirs["cxr"])
    assert {k: v.value for k, v in cxr.referrals.items()} == {
        "BACTERIA": "urgent",
        "VIRUS": "supportive care",
        "NORMAL": "observation",
    }


def test_changed_model_is_refused(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "oct"
    shutil.copytree(tiny_model_dirs["oct"], copy)
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelPackageError, match="SHA-256"):
        Classifier(copy)


def test_manifest_without_referrals_is_refused(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "oct"
    shutil.copytree(tiny_model_dirs["oct"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["referrals"]["DME"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="referral"):
        load_package(copy)


def test_missing_package_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="triage train"):
        load_package(tmp_path / "absent")
