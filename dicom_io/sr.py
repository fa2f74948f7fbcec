"""The triage Structured Report: a Comprehensive 3D SR with TID 1500 as root.

It follows IHE AI Results (AIR): the finding and the referral are coded
qualitative evaluations, each class probability is a measurement, the
algorithm is identified (TID 4019), and the Contributing Equipment Sequence
names the processing algorithm with a Device UID derived from the model's
hash. The SR joins the source study in a series of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.codes import (
    FINDING_CODES,
    PRIVATE_SCHEME,
    PROCEDURE_CODES,
    REFERRAL_CODES,
)
from dicom_io.source import with_type2_attributes
from domain.triage import Referral, TriageModality

REPORT_SERIES_DESCRIPTION = "AI triage report"
REPORT_SERIES_NUMBER = 9901
MANUFACTURER = "dicom-triage"
UNITLESS = Code("1", "UCUM", "no units")
# IHE AIR: Purpose of Reference of the processing algorithm.
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")


@dataclasses.dataclass(frozen=True)
class ImageTriage:
    """One classified image, with the header of its source instance."""

    source: Dataset
    label: str
    referral: Referral
    probabilities: dict[str, float]
    frame_number: int | None = None


@dataclasses.dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    version: str
    sha256: str
    software_version: str

    @property
    def device_uid(self) -> str:
        """A UID that changes whenever the model file changes (PS3.5 B.2: 2.25 root)."""
        return f"2.25.{int(self.sha256[:32], 16)}"


def probability_code(label: str) -> Code:
    return Code(f"P-{label}", PRIVATE_SCHEME, f"Probability of {FINDING_CODES[label].meaning}")


def build_triage_report(
    modality: TriageModality,
    study_label: str,
    study_referral: Referral,
    images: Sequence[ImageTriage],
    algorithm: AlgorithmInfo,
    previous: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for one study from the triage of its images.

    Parameters
    ----------
    study_label, study_referral
        The study's result: that of its most urgent image.
    images
        Every triaged image; each becomes a measurement group that
        references its source instance. Type 2 patient and study attributes
        a device left out are written empty (``with_type2_attributes``).
    previous
        The SR this one supersedes (images arrived after it was sent): the
        new SR joins its series with the next instance number and lists it
        in the Predecessor Documents Sequence (PS3.3 C.17.2.1).
    """
    if not images:
        raise ValueError('Argument "images" must hold at least one triaged image.')
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, manufacturer=MANUFACTURER
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name,
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier="Study triage"
            ),
            algorithm_id=algorithm_id,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(codes.DCM.Finding, FINDING_CODES[study_label]),
                hd.sr.QualitativeEvaluation(
                    codes.DCM.Recommendation, REFERRAL_CODES[study_referral]
                ),
            ],
        )
    ]
    for number, image in enumerate(images, start=1):
        frames = None if image.frame_number is None else [image.frame_number]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"Image {number} triage"
                ),
                algorithm_id=algorithm_id,
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup.from_source_image(image.source, frames)
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(codes.DCM.Finding, FINDING_CODES[image.label]),
                    hd.sr.QualitativeEvaluation(
                        codes.DCM.Recommendation, REFERRAL_CODES[image.referral]
                    ),
                ],
                measurements=[
                    hd.sr.Measurement(
                        name=probability_code(label),
                        value=round(probability, 6),
                        unit=UNITLESS,
                    )
                    for label, probability in image.probabilities.items()
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_CODES[modality],
        imaging_measurements=groups,
    )
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=[algorithm.software_version, algorithm.version],
        contribution_description=f"Model SHA-256 {algorithm.sha256}",
    )
    # highdicom allows only CID 7005 purposes; IHE AIR asks for its own
    # "Processing Algorithm" code, so it replaces the item highdicom built.
    equipment.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(PROCESSING_ALGORITHM)]
    sources = [with_type2_attributes(image.source) for image in images]
    series_instance_uid, instance_number = str(generate_uid()), 1
    if previous is not None:
        series_instance_uid = str(previous.SeriesInstanceUID)
        instance_number = int(previous.get("InstanceNumber", 0) or 0) + 1
    return hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        previous_versions=[previous] if previous is not None else None,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=REPORT_SERIES_DESCRIPTION,
        contributing_equipment=[equipment],
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="dicom-triage local codes",
                responsible_organization="dicom-triage",
            ),
            CodingSchemeIdentificationItem(
                designator="99IHE", name="IHE AI Results codes", responsible_organization="IHE"
            ),
        ],
    )
