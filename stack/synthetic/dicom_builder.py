"""Synthetic DICOM instances: the one builder behind the demo cohort, the PHI corpus and the benchmarks.

Three kinds of synthetic image are needed, and they differ only in what they put on top of a
plain radiograph: the demo's cohort (``cohort.py``) adds what a hospital's modality and RIS
write (institution, staff, exposure, a vendor's private block), the PHI corpus
(``phi_corpus.py``) plants an identifier in every place one can hide, and the de-identification
benchmark (``benchmarks/deid_bench.py``) adds a realistic header to one very large image. What
they share is here, written once:

- ``base_dataset``: a valid CR, DX or MR instance (SOP common, patient, study, series,
  equipment, image and, for DX, the DX image modules) with the identifiers it is given;
- pixel arrays: ``chest_pixels`` (a smooth picture that looks like a chest film) and
  ``pattern_pixels`` (a 12-bit ramp, cheap at any size); both keep every high byte at or below
  0x0F, so pixel data can never spell a planted text token;
- ``set_private``, ``code_item``: the two header shapes every builder adds;
- ``to_bytes``, ``write_file``: Part 10 output, encoded as the file meta says.

Identifiers are always passed in by the caller; nothing here invents one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
MR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
BASIC_TEXT_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.11")
GSPS_STORAGE = UID("1.2.840.10008.5.1.4.1.1.11.1")  # Grayscale Softcopy Presentation State
KEY_OBJECT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.59")
SOP_CLASS_BY_MODALITY = {"CR": CR_STORAGE, "DX": DX_STORAGE, "MR": MR_STORAGE}

# The private element that projects/chest-xray.yaml's Philips DigitalDiagnost override keeps.
EXAMPLE_CREATOR = "PIXL EXAMPLE EXPOSURE"
EXAMPLE_GROUP = 0x0021
EXAMPLE_OFFSET = 0x10

# Who wrote the files (file meta); a root of its own, used for nothing else.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.976.1"
IMPLEMENTATION_VERSION_NAME = "PIXL_SYNTHETIC"

DEFAULT_SIZE = 64
MAX_12_BIT = 4095


def base_dataset(
    *,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    modality: str = "CR",
    sop_class: UID | str | None = None,
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "PIXLTEST0001",
    birth_date: str = "",
    sex: str = "F",
    age: str = "045Y",
    accession: str = "ACC0001",
    study_id: str = "1",
    study_datetime: datetime = datetime(2023, 1, 5, 10, 15),
    series_datetime: datetime | None = None,
    study_description: str = "XR CHEST",
    series_description: str = "PA",
    view_position: str | None = "PA",
    series_number: int = 1,
    instance_number: int = 1,
    manufacturer: str = "Philips Medical Systems",
    model: str = "DigitalDiagnost",
    photometric: str = "MONOCHROME2",
    pixel_spacing: float | None = None,
    pixels: np.ndarray | None = None,
    rows: int = DEFAULT_SIZE,
    columns: int = DEFAULT_SIZE,
    pixel_seed: int = 1,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Dataset:
    """A valid chest instance of ``modality`` with the given identifiers, ready to extend.

    ``sop_class`` defaults to the modality's storage class (CR, DX, MR); any other class can be
    given to build an instance a project must refuse. ``series_datetime`` (series, content)
    defaults to two minutes after the study. ``view_position=None`` leaves out the view and the
    patient orientation (an MR slice has neither). Pixels: ``pixels`` if given (12 bits in 16),
    else ``pattern_pixels(rows, columns, pixel_seed)``.
    """
    sop_class = sop_class or SOP_CLASS_BY_MODALITY.get(modality, CR_STORAGE)
    series_datetime = series_datetime or study_datetime + timedelta(minutes=2)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_datetime.strftime("%Y%m%d")
    ds.SeriesDate = ds.ContentDate = series_datetime.strftime("%Y%m%d")
    ds.StudyTime = study_datetime.strftime("%H%M%S")
    ds.SeriesTime = ds.ContentTime = series_datetime.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    if view_position is not None:
        ds.ViewPosition = view_position
        ds.PatientOrientation = ["A", "F"] if view_position in ("LL", "RL") else ["L", "F"]
    if pixel_spacing is not None:
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        if modality != "MR":
            ds.ImagerPixelSpacing = [pixel_spacing, pixel_spacing]
    if modality == "DX":
        _dx_image(ds, photometric, pixel_spacing)
    set_pixels(
        ds, pattern_pixels(rows, columns, pixel_seed) if pixels is None else pixels, photometric
    )
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.file_meta = file_meta_for(ds, transfer_syntax)
    return ds


def _dx_image(ds: Dataset, photometric: str, pixel_spacing: float | None) -> None:
    """What the DX Image and DX Detector modules require on top of the general image."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    if pixel_spacing is None:
        ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.DetectorType = "SCINTILLATOR"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = Sequence()


def set_pixels(ds: Dataset, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    """The Image Pixel module for one frame of 12-bit grey values stored in 16 bits."""
    rows, columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.asarray(pixels, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"


def pattern_pixels(rows: int, columns: int, seed: int) -> np.ndarray:
    """A deterministic 12-bit ramp: the cheapest pixels of any size, different for each seed.

    Value ``i`` is ``(37 i + 101 seed) mod 4096``, so one period of 4096 values, repeated, is
    the whole image (no large temporary arrays for a 50 MB benchmark instance). Compressible,
    on purpose: a cut through a deflated file then always lands in real data.
    """
    period = (np.arange(MAX_12_BIT + 1) * 37 + seed * 101) % (MAX_12_BIT + 1)
    return np.resize(period.astype("<u2"), (rows, columns))


def chest_pixels(
    size: int, view: str, modality: str, photometric: str, seed: list[int]
) -> np.ndarray:
    """A smooth synthetic image, 12 bits in 16: body, two lungs, heart, spine (or an MR slice).

    Small and cheap to make, yet it looks like a chest film in a viewer, and it holds no text.
    ``view`` is the DICOM ViewPosition (``LL`` draws a lateral).
    """
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[-1.0 : 1.0 : size * 1j, -1.0 : 1.0 : size * 1j]

    def blob(cx: float, cy: float, rx: float, ry: float, power: float = 2.0) -> np.ndarray:
        return np.exp(-((((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) ** power))

    if modality == "MR":
        density = (
            0.7 * blob(0, 0, 0.8, 0.6, 3)
            - 0.4 * blob(-0.35, 0, 0.25, 0.35)
            - 0.4 * blob(0.35, 0, 0.25, 0.35)
        )
    elif view == "LL":
        body = blob(0, 0.05, 0.7, 0.9, 3)
        density = (
            0.7 * body - 0.35 * blob(0.05, -0.1, 0.45, 0.55) + 0.25 * blob(-0.2, 0.3, 0.3, 0.3)
        )
    else:
        body = blob(0, 0.05, 0.9, 0.95, 3)
        lungs = blob(-0.42, -0.1, 0.3, 0.6) + blob(0.42, -0.1, 0.3, 0.6)
        ribs = 0.03 * np.sin(v * 38.0) * lungs
        spine = np.exp(-((u / 0.07) ** 2)) * body
        density = 0.7 * body - 0.55 * lungs + ribs + 0.25 * blob(0.1, 0.3, 0.3, 0.25) + 0.15 * spine
    values = 300.0 + 3300.0 * np.clip(density, 0.0, 1.0) + rng.normal(0.0, 15.0, density.shape)
    values = np.clip(values, 0, MAX_12_BIT)
    if photometric == "MONOCHROME1":
        values = MAX_12_BIT - values
    return values.astype("<u2")


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def set_private(
    ds: Dataset, group: int, block: int, creator: str, offset: int, vr: str, value: object
) -> None:
    """Write ``creator`` at (group,00bb) and the value at (group,bbxx), at a chosen block.

    Unlike ``Dataset.private_block``, the block is the caller's choice, so a test can put a
    creator where another vendor's block usually is.
    """
    ds.add_new((group << 16) | block, "LO", creator)
    ds.add_new((group << 16) | (block << 8) | offset, vr, value)


def file_meta_for(ds: Dataset, transfer_syntax: UID = ExplicitVRLittleEndian) -> FileMetaDataset:
    """The file meta of ``ds``, to be encoded with ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 bytes of ``ds``, encoded as its file meta's transfer syntax says."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_file(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file; the caller names it (never after an identifier)."""
    ds.save_as(path, enforce_file_format=True)
    return path
