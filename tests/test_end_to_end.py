"""The whole path against real processes: storescu -> triage serve -> Orthanc; findscu -W."""

from __future__ import annotations

import json
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.codes import FINDING_CODES, REFERRAL_CODES
from domain.triage import PAPER_REFERRALS, Referral
from phantoms.files import write_dicom_studies
from tests.peers import Orthanc, TriageDaemon

pytestmark = pytest.mark.network

STUDIES_PER_CLASS = 2
SR_TIMEOUT_SECONDS = 120


def _content_codes(dataset, concept_meaning: str) -> list[tuple[str, str]]:
    """(code value, scheme) of every CODE item named ``concept_meaning``, at any depth."""
    found = []
    for item in dataset.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "CODE" and name == concept_meaning:
            concept = item.ConceptCodeSequence[0]
            found.append((concept.CodeValue, concept.CodingSchemeDesignator))
        found.extend(_content_codes(item, concept_meaning))
    return found


def _referenced_sop_uids(dataset) -> set[str]:
    uids = set()
    for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            uids.update(ref.ReferencedSOPInstanceUID for ref in series.ReferencedSOPSequence)
    return uids


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, dict]:
    """Phantom studies of every class, keyed by file path, with their truth."""
    truth = {}
    for modality, seed in (("oct", 21), ("cxr", 22)):
        root = write_dicom_studies(modality, tmp_path / "scanner", STUDIES_PER_CLASS, seed=seed)
        for relative, record in json.loads((root / "lesions.json").read_text()).items():
            truth[str(root / relative)] = record
    return truth


def test_scanner_to_pacs_and_worklist(
    tmp_path: Path, model_dirs: dict[str, Path], orthanc: Orthanc, studies: dict[str, dict]
) -> None:
    daemon = TriageDaemon(tmp_path / "state", model_dirs)
    orthanc.stop()
    orthanc.start(triage_port=daemon.port)
    daemon.env["TRIAGE_DESTINATIONS"] = json.dumps(
        [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    )
    daemon.env["TRIAGE_OCCLUSION_SEND"] = "true"
    daemon.start()
    try:
        files = [Path(p) for p in studies]
        pushed_at = time.monotonic()
        sent = daemon.storescu(files)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        deadline = time.monotonic() + SR_TIMEOUT_SECONDS
        reports = []
        while time.monotonic() < deadline and len(reports) < len(studies):
            time.sleep(0.25)
            reports = orthanc.structured_reports()
        latency = time.monotonic() - pushed_at
        print(
            f"\nend-to-end latency, push of {len(files)} studies to last SR in Orthanc: "
            f"{latency:.2f} s (stable_seconds=1)"
        )
        assert len(reports) == len(studies), daemon.log

        by_study = {}
        for report in reports:
            sr = dcmread(BytesIO(orthanc.instance_file(report["ID"])))
            assert sr.StudyInstanceUID not in by_study, "more than one SR for a study"
            by_study[sr.StudyInstanceUID] = sr

        manifests = {
            m: json.loads((model_dirs[m] / "manifest.json").read_text()) for m in model_dirs
        }
        for path, truth in studies.items():
            sr = by_study[truth["study_instance_uid"]]
            source = dcmread(path, stop_before_pixels=True)
            assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
            assert sr.PatientID == source.PatientID
            assert sr.AccessionNumber == source.AccessionNumber
            assert sr.SeriesInstanceUID != source.SeriesInstanceUID
            assert _referenced_sop_uids(sr) == {truth["sop_instance_uid"]}
            label = truth["label"]
            finding = FINDING_CODES[label]
            assert (finding.value, finding.scheme_designator) in _content_codes(sr, "Finding")
            referral = REFERRAL_CODES[PAPER_REFERRALS[label]]
            assert (referral.value, referral.scheme_designator) in _content_codes(
                sr, "Recommendation"
            )
            manifest = manifests["oct" if source.Modality == "OPT" else "cxr"]
            algorithms = [
                item
                for item in sr.ContributingEquipmentSequence
                if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
            ]
            assert len(algorithms) == 1
            assert algorithms[0].ManufacturerModelName == manifest["name"]
            assert manifest["version"] in algorithms[0].SoftwareVersions

        database = daemon.database()
        rows = dict(
            database.execute(
                "select s.study_instance_uid, r.label from study_results r "
                "join studies s on s.id = r.study_fk"
            ).fetchall()
        )
        assert rows == {t["study_instance_uid"]: t["label"] for t in studies.values()}
        states = database.execute("select distinct state from instances").fetchall()
        assert states == [("triaged",)]
        # Orthanc holds each SR before the daemon commits its delivery's outcome.
        delivered_query = (
            "select count(*) from deliveries where state = 'delivered' and report_fk is not null"
        )
        deadline = time.monotonic() + 30
        while (
            database.execute(delivered_query).fetchone() != (len(studies),)
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert database.execute(delivered_query).fetchone() == (len(studies),), daemon.log

        urgent = {
            t["study_instance_uid"]
            for t in studies.values()
            if PAPER_REFERRALS[t["label"]] == Referral.URGENT
        }
        answers = tmp_path / "worklist"
        found = daemon.findscu_worklist(
            answers,
            "PatientName=",
            "PatientID=",
            "AccessionNumber=",
            "StudyInstanceUID=",
            "RequestedProcedurePriority=",
            "ScheduledProcedureStepSequence[0].Modality=",
        )
        assert found.returncode == 0, found.stderr
        responses = [dcmread(p) for p in sorted(answers.glob("rsp*.dcm"))]
        assert len(responses) == len(urgent)
        assert {r.StudyInstanceUID for r in responses} == urgent
        truth_by_study = {t["study_instance_uid"]: t for t in studies.values()}
        for response in responses:
            truth = truth_by_study[response.StudyInstanceUID]
            assert response.RequestedProcedurePriority == "STAT"
            assert response.PatientID == truth["patient_id"]
            assert response.AccessionNumber == truth["accession_number"]
            assert str(response.PatientName).startswith("PHANTOM^")

        only_oct = tmp_path / "worklist-oct"
        found = daemon.findscu_worklist(
            only_oct, "ScheduledProcedureStepSequence[0].Modality=OPT", "StudyInstanceUID="
        )
        assert found.returncode == 0, found.stderr
        oct_urgent = {
            t["study_instance_uid"] for t in studies.values() if t["label"] in ("CNV", "DME")
        }
        assert {dcmread(p).StudyInstanceUID for p in only_oct.glob("rsp*.dcm")} == oct_urgent

        listed = json.loads(daemon.triage("worklist", "--urgent", "--json").stdout)
        assert {row["study_instance_uid"] for row in listed} == urgent
        assert all(row["report_sent"] for row in listed)
        table = daemon.triage("worklist", "--urgent").stdout
        assert f"{len(urgent)} urgent referral(s)" in table

        # Occlusion maps: a Secondary Capture per urgent image, in SQL and in Orthanc.
        deadline = time.monotonic() + SR_TIMEOUT_SECONDS
        captures: dict[str, object] = {}
        while time.monotonic() < deadline and not urgent <= set(captures):
            time.sleep(0.5)
            found_sc = orthanc.post(
                "/tools/find", {"Level": "Instance", "Query": {"Modality": "OT"}, "Expand": True}
            )
            for item in found_sc:
                sc = dcmread(BytesIO(orthanc.instance_file(item["ID"])))
                captures[sc.StudyInstanceUID] = sc
        assert urgent <= set(captures), daemon.log
        by_study_truth = {t["study_instance_uid"]: t for t in studies.values()}
        for study_uid in urgent:
            sc = captures[study_uid]
            assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
            reference = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
            assert reference == by_study_truth[study_uid]["sop_instance_uid"]
        maps = database.execute(
            "select s.study_instance_uid, m.box_size, m.mode, m.forward_passes, m.compute_ms "
            "from occlusion_maps m join studies s on s.id = m.study_fk"
        ).fetchall()
        assert urgent <= {row[0] for row in maps}
        assert all(row[1] == 20 and row[2] == "fast" and row[3] > 1 and row[4] > 0 for row in maps)
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0, daemon.log
    for line in daemon.lines:
        if " DEBUG " not in line:
            assert "PHANTOM^" not in line, f"patient name logged above DEBUG: {line}"
