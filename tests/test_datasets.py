from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from domain.errors import TriageError
from phantoms.files import write_jpeg_dataset
from trainer.datasets import discover, limit_per_class, parse_name, split_by_patient


@pytest.mark.parametrize(
    ("name", "modality", "label", "patient"),
    [
        ("CNV-1016042-1.jpeg", "oct", "CNV", "oct-1016042"),
        ("DRUSEN-9894035-2.jpeg", "oct", "DRUSEN", "oct-9894035"),
        ("person1_bacteria_1.jpeg", "cxr", "BACTERIA", "person1"),
        ("person1_virus_6.jpeg", "cxr", "VIRUS", "person1"),
        ("IM-0115-0001.jpeg", "cxr", "NORMAL", "IM-115"),
        ("NORMAL2-IM-1427-0001.jpeg", "cxr", "NORMAL", "IM-1427"),
    ],
)
def test_paper_file_names(name: str, modality: str, label: str, patient: str) -> None:
    assert parse_name(Path(name), modality) == (label, patient)


def test_unreadable_name_is_an_error() -> None:
    with pytest.raises(TriageError, match=r"holiday\.jpeg"):
        parse_name(Path("holiday.jpeg"), "oct")


@pytest.fixture(scope="module")
def cxr_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jpeg_dataset("cxr", tmp_path_factory.mktemp("cxr"), 12, seed=3)


def test_phantom_layout_matches_the_paper(cxr_phantoms: Path) -> None:
    assert cxr_phantoms.name == "chest_xray"
    samples = discover(cxr_phantoms.parent, "cxr", "cxr3")
    assert {s.label for s in samples} == {"BACTERIA", "NORMAL", "VIRUS"}
    assert {s.split for s in samples} == {"train", "test"}
    assert {p.name for p in (cxr_phantoms / "train").iterdir()} == {"NORMAL", "PNEUMONIA"}
    lesions = json.loads((cxr_phantoms / "lesions.json").read_text())
    assert len(lesions) == len(samples)
    for sample in samples:
        record = lesions[str(sample.path.relative_to(cxr_phantoms))]
        assert record["label"] == sample.label
        assert bool(record["boxes"]) == (sample.label != "NORMAL")


@pytest.mark.parametrize("seed", range(5))
def test_holdout_never_shares_a_patient(cxr_phantoms: Path, seed: int) -> None:
    samples = discover(cxr_phantoms, "cxr", "cxr3")
    train, holdout = split_by_patient(samples, 0.2, seed)
    assert train and holdout
    assert not {s.patient for s in train} & {s.patient for s in holdout}
    assert len(train) + len(holdout) == len(samples)


def test_limit_per_class(cxr_phantoms: Path) -> None:
    samples = discover(cxr_phantoms, "cxr", "cxr3")
    limited = limit_per_class(samples, 5, seed=0)
    counts = {label: sum(s.label == label for s in limited) for label in ("BACTERIA", "VIRUS")}
    assert counts == {"BACTERIA": 5, "VIRUS": 5}
    assert np.all([s in samples for s in limited])


def test_binary_and_pooled_tasks(cxr_phantoms: Path, tmp_path: Path) -> None:
    pooled = discover(cxr_phantoms, "cxr", "cxr-pneumonia")
    assert {s.label for s in pooled} == {"NORMAL", "PNEUMONIA"}
    bacterial_viral = discover(cxr_phantoms, "cxr", "cxr-bacterial-viral")
    assert {s.label for s in bacterial_viral} == {"BACTERIA", "VIRUS"}
    assert len(pooled) == len(discover(cxr_phantoms, "cxr", "cxr3"))
    oct_root = write_jpeg_dataset("oct", tmp_path, 4, seed=2)
    assert {s.label for s in discover(oct_root, "oct", "oct-binary-cnv")} == {"CNV", "NORMAL"}
    with pytest.raises(TriageError, match="not a task for"):
        discover(oct_root, "oct", "cxr3")
