"""A traffic generator with the shapes of real traffic, and the invariants it checks.

Used by ``tests/test_traffic.py`` at a small size and by ``bench/traffic.py``
at a larger one. It drives the real daemon process with dcmtk's storescu:

- multi-image studies (OCT volumes in several series, chest PA plus
  lateral), patients with several studies, images without a Patient ID;
- simulated scanners, each sending a study's images over several
  associations at the same moment;
- late images after a study's report, and duplicates.

Then it checks what a hospital relies on (``check_invariants``): every
acknowledged image is stored and appears in its study's latest SR; every
study's latest SR reached every destination; nobody appears under someone
else's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.peers import DatabaseView, Orthanc, TriageDaemon, run_tool


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str


@dataclasses.dataclass
class PlannedStudy:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    images: list[PlannedImage]


def plan_studies(
    pool: Sequence[Path],
    out: Path,
    *,
    studies: int,
    images_per_study: int,
    series_per_study: int = 2,
    studies_per_patient: int = 2,
    empty_patient_id_every: int = 3,
    views: Sequence[str] = (),
    seed: int = 0,
) -> list[PlannedStudy]:
    """Compose multi-image studies from single-image phantoms.

    Each study takes ``images_per_study`` images of the pool, spread over
    ``series_per_study`` series, with fresh UIDs. Patients have up to
    ``studies_per_patient`` studies; every ``empty_patient_id_every``-th
    study comes from a device that sends no Patient ID (a different person
    each time). ``views`` gives each series a View Position (a chest PA
    and lateral: ``("PA", "LL")``).
    """
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    planned: list[PlannedStudy] = []
    patient: tuple[str, str] = ("", "")
    for number in range(studies):
        if empty_patient_id_every and number % empty_patient_id_every == empty_patient_id_every - 1:
            patient_id, name = "", f"NOID^PERSON{number:03d}"
        else:
            if number % studies_per_patient == 0 or not patient[0]:
                patient = (f"TR{seed:02d}{number:05d}", f"TRAFFIC^PATIENT{number:03d}")
            patient_id, name = patient
        study_uid = generate_uid()
        series_uids = [generate_uid() for _ in range(series_per_study)]
        accession = f"TA{seed:02d}{number:06d}"
        images = []
        for index in range(images_per_study):
            dataset = dcmread(rng.choice(list(pool)))
            dataset.PatientID = patient_id
            dataset.PatientName = name
            dataset.StudyInstanceUID = study_uid
            dataset.AccessionNumber = accession
            dataset.StudyID = str(number)
            series = index % series_per_study
            dataset.SeriesInstanceUID = series_uids[series]
            dataset.SeriesNumber = series + 1
            if views:
                dataset.ViewPosition = views[series % len(views)]
                dataset.SeriesDescription = dataset.ViewPosition
            dataset.InstanceNumber = index // series_per_study + 1
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            path = out / f"study{number:04d}" / f"image{index:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            images.append(PlannedImage(path, str(dataset.SOPInstanceUID), study_uid))
        planned.append(PlannedStudy(study_uid, patient_id, name, images))
    return planned


def add_late_image(study: PlannedStudy, out: Path) -> PlannedImage:
    """One more image of ``study`` (a copy of its first with a new SOP Instance UID).

    Sent after the study's SR, it must lead to a newer SR that includes it.
    """
    dataset = dcmread(study.images[0].path)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.InstanceNumber = len(study.images) + 1
    path = out / f"late-{dataset.SOPInstanceUID}.dcm"
    out.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    image = PlannedImage(path, str(dataset.SOPInstanceUID), study.study_instance_uid)
    study.images.append(image)
    return image


def acknowledged_files(output: str) -> list[str]:
    """Files that storescu saw acknowledged with success or a warning, from its -v log."""
    acknowledged, current = [], None
    for line in output.splitlines():
        sending = re.search(r"Sending file: (\S+)", line)
        if sending:
            current = sending.group(1)
        elif re.search(r"Received Store Response \((Success|Warning)", line) and current:
            acknowledged.append(current)
            current = None
    return acknowledged


def send_in_parallel(
    daemon: TriageDaemon,
    batches: Sequence[Sequence[PlannedImage]],
    ae_title: str = "SCANNER",
    parallel: int = 8,
) -> set[str]:
    """Send each batch over its own association, ``parallel`` at a time.

    Returns the SOP Instance UIDs that were acknowledged.
    """
    uid_of = {str(image.path): image.sop_instance_uid for batch in batches for image in batch}

    def send(batch: Sequence[PlannedImage]) -> list[str]:
        command = daemon.storescu_command([image.path for image in batch], "-v")
        command[command.index("SCANNER")] = ae_title
        result = run_tool(command, timeout=300)
        output = result.stdout + result.stderr
        sent = acknowledged_files(output)
        if len(sent) < len(batch):
            # Kept in the test's captured output: why a sender got fewer answers.
            print(f"storescu: {len(sent)} of {len(batch)} acknowledged:\n{output[-3000:]}")
        return sent

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return {uid_of[path] for sent in pool.map(send, batches) for path in sent}


def send_like_a_scanner(
    daemon: TriageDaemon,
    batches: Sequence[Sequence[PlannedImage]],
    ae_title: str = "SCANNER",
    parallel: int = 8,
    retries: int = 3,
    pause: float = 2.0,
) -> tuple[set[str], int]:
    """Send, then send again what was not acknowledged, as a modality's queue does.

    Returns (acknowledged SOP Instance UIDs, how many the first round left
    unacknowledged: refused, or the association rejected).
    """
    acknowledged = send_in_parallel(daemon, batches, ae_title, parallel)
    first_round_missing = sum(len(b) for b in batches) - len(acknowledged)
    for _ in range(retries):
        left = [[i for i in b if i.sop_instance_uid not in acknowledged] for b in batches]
        left = [b for b in left if b]
        if not left:
            break
        time.sleep(pause)
        acknowledged |= send_in_parallel(daemon, left, ae_title, parallel)
    return acknowledged, first_round_missing


def study_batches(
    studies: Sequence[PlannedStudy], per_image: bool = True
) -> list[list[PlannedImage]]:
    """One association per image (``per_image``) or per study, studies interleaved."""
    if not per_image:
        return [list(study.images) for study in studies]
    batches: list[list[PlannedImage]] = []
    longest = max(len(study.images) for study in studies)
    for index in range(longest):
        batches += [[s.images[index]] for s in studies if index < len(s.images)]
    return batches


@dataclasses.dataclass
class Findings:
    """What each invariant found; empty lists everywhere means it held."""

    acknowledged: int = 0
    studies: int = 0
    reports: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    missing_from_latest_sr: list[str] = dataclasses.field(default_factory=list)
    latest_sr_not_delivered: list[str] = dataclasses.field(default_factory=list)
    latest_sr_not_in_pacs: list[str] = dataclasses.field(default_factory=list)
    wrong_name: list[str] = dataclasses.field(default_factory=list)

    @property
    def held(self) -> bool:
        return not (
            self.lost
            or self.missing_from_latest_sr
            or self.latest_sr_not_delivered
            or self.latest_sr_not_in_pacs
            or self.wrong_name
        )

    def summary(self) -> str:
        return (
            f"acknowledged {self.acknowledged} images of {self.studies} studies, "
            f"{self.reports} SRs; lost {len(self.lost)}, missing from latest SR "
            f"{len(self.missing_from_latest_sr)}, latest SR undelivered "
            f"{len(self.latest_sr_not_delivered)}, not in PACS {len(self.latest_sr_not_in_pacs)}, "
            f"wrong name {len(self.wrong_name)}"
        )


def _sr_references(content: bytes) -> tuple[set[str], str]:
    """(SOP Instance UIDs an SR references as evidence, its Patient's Name)."""
    sr = dcmread(BytesIO(content))
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for evidence in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    return referenced, str(sr.get("PatientName", ""))


def latest_reports(database: DatabaseView) -> dict[str, tuple[int, bytes]]:
    """Study Instance UID -> (report id, SR bytes) of its newest report."""
    rows = database.execute(
        "select s.study_instance_uid, r.id, r.content from reports r "
        "join studies s on s.id = r.study_fk order by r.id"
    ).fetchall()
    return {uid: (report_id, bytes(content)) for uid, report_id, content in rows}


def check_invariants(
    daemon: TriageDaemon,
    studies: Sequence[PlannedStudy],
    acknowledged: set[str],
    pacs: Orthanc | None = None,
) -> Findings:
    database = daemon.database()
    planned_study = {image.sop_instance_uid: study for study in studies for image in study.images}
    findings = Findings(acknowledged=len(acknowledged))
    stored = {uid for (uid,) in database.execute("select sop_instance_uid from instances")}
    findings.lost = sorted(acknowledged - stored)
    by_study: dict[str, set[str]] = defaultdict(set)
    for uid in acknowledged:
        by_study[planned_study[uid].study_instance_uid].add(uid)
    findings.studies = len(by_study)
    latest = latest_reports(database)
    findings.reports = int(database.execute("select count(*) from reports").fetchall()[0][0])
    names = {s.study_instance_uid: s.patient_name for s in studies}
    delivered = {
        report_id
        for (report_id,) in database.execute(
            "select report_fk from deliveries where report_fk is not null "
            "group by report_fk having min(state) = 'delivered' and max(state) = 'delivered'"
        )
    }
    in_pacs = (
        {str(item["MainDicomTags"]["SOPInstanceUID"]) for item in pacs.structured_reports()}
        if pacs is not None
        else set()
    )
    for study_uid, expected in sorted(by_study.items()):
        if study_uid not in latest:
            findings.missing_from_latest_sr += sorted(expected)
            continue
        report_id, content = latest[study_uid]
        referenced, sr_name = _sr_references(content)
        findings.missing_from_latest_sr += sorted(expected - referenced)
        if sr_name != names[study_uid]:
            findings.wrong_name.append(f"SR of {study_uid}: {sr_name!r}")
        if report_id not in delivered:
            findings.latest_sr_not_delivered.append(study_uid)
        if pacs is not None:
            sop = str(dcmread(BytesIO(content), stop_before_pixels=True).SOPInstanceUID)
            if sop not in in_pacs:
                findings.latest_sr_not_in_pacs.append(study_uid)
    for entry in worklist(daemon):
        study_uid = entry["study_instance_uid"]
        if study_uid in names and entry["patient_name"] != names[study_uid]:
            findings.wrong_name.append(f"worklist item of {study_uid}: {entry['patient_name']!r}")
    return findings


def worklist(daemon: TriageDaemon) -> list[dict[str, Any]]:
    result = daemon.triage("worklist", "--urgent", "--json")
    return list(json.loads(result.stdout))


def wait_until_reported(
    daemon: TriageDaemon,
    studies: Sequence[PlannedStudy],
    acknowledged: set[str],
    pacs: Orthanc | None = None,
    timeout: float = 180,
) -> Findings:
    """Wait until every invariant holds or ``timeout`` passes; return the findings."""
    deadline = time.monotonic() + timeout
    findings = check_invariants(daemon, studies, acknowledged, pacs)
    while not findings.held and time.monotonic() < deadline:
        time.sleep(1.0)
        findings = check_invariants(daemon, studies, acknowledged, pacs)
    return findings


def phantom_pool(out: Path, modality: str, per_class: int, seed: int) -> list[Path]:
    from phantoms.files import write_dicom_studies

    return sorted(write_dicom_studies(modality, out, per_class, seed=seed).rglob("*.dcm"))


# Type 2 attributes (present, possibly empty) that sloppy devices leave out.
TYPE2_LEFT_OUT = (
    "PatientBirthDate",
    "PatientSex",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
)


def leave_out(study: PlannedStudy, keywords: Sequence[str] = TYPE2_LEFT_OUT) -> None:
    """Rewrite a study's files without ``keywords``, as a sloppy device sends them."""
    for image in study.images:
        dataset = dcmread(image.path)
        for keyword in keywords:
            if keyword in dataset:
                del dataset[keyword]
        dataset.save_as(image.path, enforce_file_format=True)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path | None]:
    """A real filesystem that fills up: a tmpfs of ``size``, or None without root."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` until about ``leave_bytes`` are free; remove the file to free it."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as handle:
        handle.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = max(free - leave_bytes, 0)
        while remaining > 0:
            remaining -= handle.write(chunk[: min(len(chunk), remaining)])
    return filler
