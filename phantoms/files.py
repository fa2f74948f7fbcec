"""Write phantoms to disk: the paper's JPEG layout, or DICOM studies.

JPEG follows the Kermany et al. data set layout, with the patient in every
file name:

- ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENT-N.jpeg``
- ``chest_xray/{train,test}/NORMAL/IM-PATIENT-N.jpeg`` and
  ``chest_xray/{train,test}/PNEUMONIA/personPATIENT_{bacteria,virus}_N.jpeg``

DICOM writes one study per phantom patient: OCT as an Ophthalmic
Tomography multi-frame (Modality OPT) whose central B-scan holds the lesion,
CXR as a DX For Presentation image of the chest.

Each writer also writes ``lesions.json``: for every file, the label and the
bounding boxes of its lesions.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from phantoms.images import (
    OCT_SHAPE,
    Phantom,
    labels_for,
    render,
    render_cxr,
    render_oct,
    sample_retina,
)

OCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
DX_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
OCT_FRAMES = 5
TEST_FRACTION = 0.2
LESIONS_FILE = "lesions.json"


def _patients(count: int, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """Yield (patient number, images of that patient) until ``count`` images."""
    made, patient = 0, int(rng.integers(1000, 9000)) * 1000
    while made < count:
        patient += int(rng.integers(1, 40))
        images = min(int(rng.integers(1, 4)), count - made)
        made += images
        yield patient, images


def _jpeg_name(modality: str, label: str, patient: int, index: int) -> tuple[str, str]:
    """Return (class folder, file name) as the paper's data set names them."""
    if modality == "oct":
        return label, f"{label}-{patient}-{index}.jpeg"
    if label == "NORMAL":
        return "NORMAL", f"IM-{patient:07d}-{index:04d}.jpeg"
    kind = "bacteria" if label == "BACTERIA" else "virus"
    return "PNEUMONIA", f"person{patient}_{kind}_{index}.jpeg"


def write_jpeg_dataset(modality: str, out: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` images per class in the paper's layout; return its root."""
    rng = np.random.default_rng(seed)
    root = Path(out) / ("OCT2017" if modality == "oct" else "chest_xray")
    lesions: dict[str, dict[str, object]] = {}
    for label in labels_for(modality):
        for patient, images in _patients(count, rng):
            split = "test" if rng.random() < TEST_FRACTION else "train"
            for index in range(1, images + 1):
                phantom = render(modality, label, rng)
                folder, name = _jpeg_name(modality, label, patient, index)
                path = root / split / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_to_uint8(phantom.image)).save(path, quality=95)
                lesions[str(path.relative_to(root))] = _lesion_record(phantom)
    (root / LESIONS_FILE).write_text(json.dumps(lesions, indent=1, sort_keys=True))
    return root


def write_dicom_studies(modality: str, out: Path, count: int, seed: int = 0) -> Path:
    """Write ``count`` single-image studies per class as DICOM; return the folder."""
    rng = np.random.default_rng(seed)
    root = Path(out) / modality
    lesions: dict[str, dict[str, object]] = {}
    number = 0
    for label in labels_for(modality):
        for _ in range(count):
            number += 1
            if modality == "oct":
                dataset, phantom = _oct_dataset(label, rng, number)
            else:
                dataset, phantom = _cxr_dataset(label, rng, number)
            path = root / f"study-{number:04d}" / f"{dataset.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            record = _lesion_record(phantom)
            record.update(
                study_instance_uid=dataset.StudyInstanceUID,
                sop_instance_uid=dataset.SOPInstanceUID,
                accession_number=dataset.AccessionNumber,
                patient_id=dataset.PatientID,
                frame=(OCT_FRAMES // 2 + 1) if modality == "oct" else None,
            )
            lesions[str(path.relative_to(root))] = record
    (root / LESIONS_FILE).write_text(json.dumps(lesions, indent=1, sort_keys=True))
    return root


def _lesion_record(phantom: Phantom) -> dict[str, object]:
    return {"label": phantom.label, "boxes": [list(box) for box in phantom.boxes]}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _base_dataset(sop_class: str, number: int, rng: np.random.Generator) -> Dataset:
    """Patient, study, series and SOP common modules with fresh UIDs."""
    now = dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = f"PHANTOM^{number:04d}"
    ds.PatientID = f"PH{int(rng.integers(10**6, 10**7))}"
    ds.PatientBirthDate = f"{int(rng.integers(1940, 2000))}0101"
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = f"ACC{int(rng.integers(10**7, 10**8))}"
    ds.StudyID = str(number)
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "dicom-triage phantom"
    ds.ManufacturerModelName = "phantom"
    ds.PatientOrientation = ""
    return ds


def _oct_dataset(label: str, rng: np.random.Generator, number: int) -> tuple[Dataset, Phantom]:
    ds = _base_dataset(OCT_SOP_CLASS, number, rng)
    geometry = sample_retina(rng, OCT_SHAPE)
    centre = OCT_FRAMES // 2
    # Only the central (foveal) B-scan shows the lesion; its neighbours are
    # the same eye without it.
    scans = [
        render_oct(label if index == centre else "NORMAL", rng, geometry)
        for index in range(OCT_FRAMES)
    ]
    lesion = scans[centre]
    frames = [_to_uint8(scan.image) for scan in scans]
    ds.Modality = "OPT"
    ds.Laterality = "R"
    ds.ImageLaterality = "R"
    ds.StudyDescription = "OCT macula"
    ds.SeriesDescription = "Macular cube"
    ds.BodyPartExamined = "EYE"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = OCT_SHAPE
    ds.NumberOfFrames = OCT_FRAMES
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = ds.StudyDate + ds.StudyTime
    ds.PixelData = np.stack(frames).tobytes()
    return ds, lesion


def _cxr_dataset(label: str, rng: np.random.Generator, number: int) -> tuple[Dataset, Phantom]:
    ds = _base_dataset(DX_PRESENTATION_SOP_CLASS, number, rng)
    phantom = render_cxr(label, rng)
    ds.Modality = "DX"
    ds.StudyDescription = "Chest PA"
    ds.SeriesDescription = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.ImagerPixelSpacing = [0.7, 0.7]
    ds.DetectorType = "SCINTILLATOR"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.round(phantom.image * 4095).astype(np.uint16).tobytes()
    return ds, phantom
