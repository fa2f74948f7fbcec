"""Read the paper's data set layouts and split them by patient.

``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENT-N.jpeg`` and
``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/...`` where a pneumonia file name
says ``bacteria`` or ``virus`` (``person1_bacteria_1.jpeg``) and a normal one
carries the patient as ``IM-0115-0001.jpeg`` or ``NORMAL2-IM-1427-0001.jpeg``.
The phantoms of ``triage phantoms --format jpeg`` use the same layout.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from domain.errors import TriageError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_OCT_NAME = re.compile(r"^(?P<label>CNV|DME|DRUSEN|NORMAL)-(?P<patient>\d+)-\d+$", re.I)
_CXR_PNEUMONIA = re.compile(r"^person(?P<patient>\d+)_(?P<kind>bacteria|virus)_\d+$", re.I)
_CXR_NORMAL = re.compile(r"^(?:NORMAL\d*-)?IM-(?P<patient>\d+)-\d+$", re.I)

TASK_LABELS: dict[str, tuple[str, ...]] = {
    "oct4": ("CNV", "DME", "DRUSEN", "NORMAL"),
    "oct-binary-cnv": ("CNV", "NORMAL"),
    "oct-binary-dme": ("DME", "NORMAL"),
    "oct-binary-drusen": ("DRUSEN", "NORMAL"),
    "cxr3": ("BACTERIA", "NORMAL", "VIRUS"),
    "cxr-pneumonia": ("NORMAL", "PNEUMONIA"),
    "cxr-bacterial-viral": ("BACTERIA", "VIRUS"),
}
TASK_MODALITY = {task: task[:3] for task in TASK_LABELS}
DEFAULT_TASK = {"oct": "oct4", "cxr": "cxr3"}
# Labels of a task that pool file labels: pneumonia is bacterial or viral.
_POOLED = {"cxr-pneumonia": {"BACTERIA": "PNEUMONIA", "VIRUS": "PNEUMONIA"}}


def task_label(task: str, file_label: str) -> str | None:
    """The task's label for an image of ``file_label``, or None if not in the task."""
    label = _POOLED.get(task, {}).get(file_label, file_label)
    return label if label in TASK_LABELS[task] else None


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    patient: str
    split: str  # "train" or "test", as the folder says


def dataset_root(data: Path, modality: str) -> Path:
    """Accept the data set folder itself or the folder that holds it."""
    name = "OCT2017" if modality == "oct" else "chest_xray"
    return data / name if (data / name).is_dir() else data


def parse_name(path: Path, modality: str) -> tuple[str, str]:
    """Return (label, patient) from a file name of the paper's data sets."""
    stem = path.stem
    if modality == "oct":
        match = _OCT_NAME.match(stem)
        if match:
            return match["label"].upper(), f"oct-{match['patient']}"
    else:
        match = _CXR_PNEUMONIA.match(stem)
        if match:
            kind = match["kind"].lower()
            return ("BACTERIA" if kind == "bacteria" else "VIRUS"), f"person{match['patient']}"
        match = _CXR_NORMAL.match(stem)
        if match:
            return "NORMAL", f"IM-{int(match['patient'])}"
    raise TriageError(f"Cannot read a label and patient from the file name {path.name!r}.")


def discover(data: Path, modality: str, task: str) -> list[Sample]:
    """List every image of ``task`` under ``data``, in a stable order."""
    if TASK_MODALITY.get(task) != modality:
        raise TriageError(f"Task {task} is not a task for {modality}.")
    root = dataset_root(Path(data), modality)
    samples = []
    for split in ("train", "test"):
        for path in sorted((root / split).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label, patient = parse_name(path, modality)
            if modality == "oct" and path.parent.name.upper() != label:
                raise TriageError(f"{path} is in folder {path.parent.name} but named {label}.")
            mapped = task_label(task, label)
            if mapped is not None:
                samples.append(Sample(path, mapped, patient, split))
    if not samples:
        raise TriageError(f"No images of task {task} found under {root}/{{train,test}}.")
    return samples


def limit_per_class(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """The paper's "limited model": at most ``limit`` training images per class."""
    if limit is None:
        return list(samples)
    rng = np.random.default_rng(seed)
    kept: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        of_label = [s for s in samples if s.label == label]
        order = rng.permutation(len(of_label))[:limit]
        kept.extend(of_label[i] for i in sorted(order))
    return kept


def split_by_patient(
    samples: Sequence[Sample], holdout_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, holdout) so that no patient is on both sides."""
    if not 0 < holdout_fraction < 1:
        raise ValueError('Argument "holdout_fraction" must be between 0 and 1.')
    patients = sorted({s.patient for s in samples})
    rng = np.random.default_rng(seed)
    count = max(1, round(len(patients) * holdout_fraction))
    holdout_patients = set(rng.permutation(np.array(patients, dtype=object))[:count])
    train = [s for s in samples if s.patient not in holdout_patients]
    holdout = [s for s in samples if s.patient in holdout_patients]
    return train, holdout


def describe_counts(named: dict[str, Sequence[Sample]]) -> str:
    """A small table of images per class and split, for the training log."""
    labels = sorted({s.label for group in named.values() for s in group})
    header = "split".ljust(10) + "".join(label.rjust(10) for label in labels) + "patients".rjust(10)
    lines = [header]
    for name, group in named.items():
        counts = Counter(s.label for s in group)
        patients = len({s.patient for s in group})
        lines.append(
            name.ljust(10)
            + "".join(str(counts.get(label, 0)).rjust(10) for label in labels)
            + str(patients).rjust(10)
        )
    return "\n".join(lines)
