"""A synthetic PHI corpus: CR and DX instances with an identifier planted wherever one can hide.

Every planted value is a unique, recognisable token (``PHIX`` + letters/digits: never hex, so a
keyed hash can never reproduce one by chance), and every original UID comes from a root used
nowhere else. A de-identified output that contains any of them has leaked.

The instances are built on ``dicom_builder.base_dataset`` (the same base as the demo cohort's
and the benchmark's images), then planted here. Use it from tests and benchmarks
(``build_corpus(tmp_path)``) or on its own::

    python -m stack.synthetic.phi_corpus OUTDIR

which writes the instances under ``OUTDIR/input/`` and the planted values to
``OUTDIR/planted.json``.

Every instance carries the full set of plantings: the patient module and its relatives (name,
ID, birth date and name, address, phone, other IDs and names, mother's maiden name, ethnic
group, comments), physicians and operators, institution and department, station, device and
detector serials, study/request/procedure ids and comments, nested sequences (request
attributes, other patient IDs, referenced patient and study, a code two levels deep inside a
kept sequence), private blocks (a vendor block with text, PN, UI and a private sequence, one
inside a kept sequence item, one whose creator string is itself planted, one after Pixel Data),
overlays 6000 and 6002 (label, description, data), an icon image with text in its pixels,
trailing padding, the file meta (source and sending AE titles, private information) and the
128-byte preamble. The instances differ in (patients A, B and C; Philips DigitalDiagnost unless
noted, so the chest-xray manufacturer override applies):

- ``cr_explicit``: patient A, study 1, CR, explicit VR little endian; the ``PIXL EXAMPLE
  EXPOSURE`` private block at block 0x10.
- ``dx_explicit``: patient A, study 1 (second series, same frame of reference), DX. References
  ``cr_explicit`` by SOP Instance UID; the ``PIXL EXAMPLE EXPOSURE`` block at block 0x11
  (another creator holds block 0x10, with a value at the same offset).
- ``cr_implicit``: patient B, implicit VR little endian (private values arrive as UN).
- ``dx_jpeg``: patient C, encapsulated JPEG baseline transfer syntax (fake fragments), GE.
- ``dx_deflated``: patient C, deflated explicit VR little endian.
- ``dx_private_text``: patient C, the override's kept private slot (0021,xx10), declared DS,
  written as LO holding text: an engine that trusts the VR lets it through.

Input file names carry the patient's MRN and the accession number, as files exported from a
PACS often do.
"""

from __future__ import annotations

import json
import random
import secrets
import string
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from stack.synthetic.dicom_builder import (
    CR_STORAGE,
    DX_STORAGE,
    EXAMPLE_CREATOR,
    EXAMPLE_GROUP,
    EXAMPLE_OFFSET,
    base_dataset,
    code_item,
    set_private,
    to_bytes,
)

# The key the tests de-identify the corpus with: drawn afresh for each test run (no key, not
# even a test one, is written in the repository; a run passes it to the processes it starts).
TEST_HASH_KEY = secrets.token_hex(24)

# Original UIDs come from this root only, so a scan can also look for the root itself.
UID_ROOT = "1.2.826.0.1.3680043.10.977."

_TOKEN_ALPHABET = "GHJKLMNPQRSTUVWXYZ" + string.digits  # no A-F: a token is never hex


class Planter:
    """Hands out unique tokens and UIDs and remembers each under a label."""

    def __init__(self, seed: int = 20240501) -> None:
        self._random = random.Random(seed)
        self.planted: dict[str, str] = {}
        self.uids: dict[str, str] = {}

    def token(self, label: str, length: int = 12) -> str:
        """A value unique in the corpus, e.g. ``PHIXQ7M2K9TZ`` (fits SH, AE, CS)."""
        while True:
            body = "".join(self._random.choice(_TOKEN_ALPHABET) for _ in range(length - 4))
            value = "PHIX" + body
            if value not in self.planted.values():
                break
        self._remember(label, value)
        return value

    def name(self, label: str) -> str:
        """A person name ``SURNAME^GIVEN``; both components are planted on their own too."""
        family = self.token(f"{label}.family")
        given = self.token(f"{label}.given")
        value = f"{family}^{given}"
        self._remember(label, value)
        return value

    def date(self, label: str, year: int) -> str:
        value = f"{year:04d}{self._random.randint(1, 12):02d}{self._random.randint(1, 28):02d}"
        self._remember(label, value)
        return value

    def digits(self, label: str, count: int) -> str:
        value = str(self._random.randint(10 ** (count - 1), 10**count - 1))
        self._remember(label, value)
        return value

    def uid(self, label: str) -> str:
        value = UID_ROOT + str(self._random.randint(10**20, 10**21 - 1))
        if label in self.uids:
            raise ValueError(f"UID label used twice: {label}")
        self.uids[label] = value
        return value

    def _remember(self, label: str, value: str) -> None:
        if label in self.planted:
            raise ValueError(f"label used twice: {label}")
        if value in self.planted.values():
            raise ValueError(f"value planted twice: {label}")
        self.planted[label] = value


@dataclass
class Patient:
    key: str
    name: str
    mrn: str
    birth_date: str
    other_id: str
    nhs_number: str


@dataclass
class Corpus:
    """What ``build_corpus`` wrote and what must never come out again."""

    root: Path
    files: dict[str, Path]  # instance name -> input path
    planted: dict[str, str]  # label -> planted value
    uids: dict[str, str]  # label -> original UID
    accession_numbers: dict[str, str] = field(default_factory=dict)  # instance -> accession
    patient_ids: dict[str, str] = field(default_factory=dict)  # instance -> PatientID

    @property
    def planted_values(self) -> list[str]:
        return list(self.planted.values())

    @property
    def original_uids(self) -> list[str]:
        return list(self.uids.values())

    def needles(self) -> dict[str, str]:
        """Everything a scan must not find, by label: planted values, UIDs and the UID root."""
        found = {f"planted {k}": v for k, v in self.planted.items()}
        found.update({f"uid {k}": v for k, v in self.uids.items()})
        found["uid root"] = UID_ROOT.rstrip(".")
        return found


def new_patient(planter: Planter, key: str) -> Patient:
    return Patient(
        key=key,
        name=planter.name(f"{key}.PatientName"),
        mrn=planter.token(f"{key}.PatientID (MRN)"),
        birth_date=planter.date(f"{key}.PatientBirthDate", 1931 + len(key)),
        other_id=planter.token(f"{key}.OtherPatientIDs"),
        nhs_number=planter.digits(f"{key}.NHS number", 10),
    )


def readable_bytes(data: bytes) -> bytes:
    """``data``, followed by the inflated data set if the file is deflated (so a scan sees it)."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return data
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    if DeflatedExplicitVRLittleEndian.encode() not in data[:meta_end]:
        return data
    try:
        return data + zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[meta_end:])
    except zlib.error:
        return data


def plant_identifiers(
    ds: Dataset, planter: Planter, name: str, patient: Patient, *, accession: str
) -> None:
    """Put an identifying value everywhere identifiers hide in a radiograph's header."""

    def t(label: str, length: int = 12) -> str:
        return planter.token(f"{name}.{label}", length)

    # Patient module and its relatives.
    ds.PatientName = patient.name
    ds.PatientID = patient.mrn
    ds.PatientBirthDate = patient.birth_date
    ds.IssuerOfPatientID = t("IssuerOfPatientID")
    ds.OtherPatientIDs = [patient.other_id, patient.nhs_number]
    ds.OtherPatientNames = planter.name(f"{name}.OtherPatientNames")
    ds.PatientBirthName = planter.name(f"{name}.PatientBirthName")
    ds.PatientMotherBirthName = planter.name(f"{name}.PatientMotherBirthName")
    ds.PatientAddress = t("PatientAddress", 40)
    ds.PatientTelephoneNumbers = t("PatientTelephoneNumbers", 16)
    ds.EthnicGroup = t("EthnicGroup", 16)
    ds.EthnicGroupCodeSequence = Sequence([code_item("X1", "99PHI", t("EthnicGroupCode"))])
    ds.PatientComments = t("PatientComments", 40)
    ds.AdditionalPatientHistory = t("AdditionalPatientHistory", 40)
    ds.MilitaryRank = t("MilitaryRank")
    other_id = Dataset()
    other_id.PatientID = planter.token(f"{name}.OtherPatientIDsSequence.PatientID")
    other_id.IssuerOfPatientID = t("OtherPatientIDsSequence.Issuer")
    other_id.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other_id])
    referenced_patient = Dataset()
    referenced_patient.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    referenced_patient.ReferencedSOPInstanceUID = planter.uid(
        f"{name}.ReferencedPatientSequence.ReferencedSOPInstanceUID"
    )
    ds.ReferencedPatientSequence = Sequence([referenced_patient])

    # People.
    ds.ReferringPhysicianName = planter.name(f"{name}.ReferringPhysicianName")
    ds.ReferringPhysicianAddress = t("ReferringPhysicianAddress", 40)
    ds.PerformingPhysicianName = planter.name(f"{name}.PerformingPhysicianName")
    ds.NameOfPhysiciansReadingStudy = planter.name(f"{name}.NameOfPhysiciansReadingStudy")
    ds.OperatorsName = [
        planter.name(f"{name}.OperatorsName.1"),
        planter.name(f"{name}.OperatorsName.2"),
    ]
    ds.RequestingPhysician = planter.name(f"{name}.RequestingPhysician")
    ds.PhysiciansOfRecord = planter.name(f"{name}.PhysiciansOfRecord")

    # Place and device.
    ds.InstitutionName = t("InstitutionName", 30)
    ds.InstitutionAddress = t("InstitutionAddress", 40)
    ds.InstitutionalDepartmentName = t("InstitutionalDepartmentName", 30)
    ds.StationName = t("StationName", 16)
    ds.DeviceSerialNumber = t("DeviceSerialNumber", 16)
    ds.DetectorID = t("DetectorID", 16)
    ds.PlateID = t("PlateID", 16)

    # Study, request and procedure identifiers.
    ds.AccessionNumber = accession
    ds.StudyID = t("StudyID", 16)
    ds.RequestedProcedureID = t("RequestedProcedureID", 16)
    ds.PerformedProcedureStepID = t("PerformedProcedureStepID", 16)
    ds.PerformedProcedureStepDescription = t("PerformedProcedureStepDescription", 40)
    ds.ProtocolName = t("ProtocolName", 40)
    ds.AcquisitionDateTime = planter.date(f"{name}.AcquisitionDateTime", 1901) + "101112"
    ds.ImageComments = t("ImageComments", 40)
    ds.StudyComments = t("StudyComments", 40)
    ds.DerivationDescription = t("DerivationDescription", 40)
    request = Dataset()
    request.RequestedProcedureID = t("RequestAttributesSequence.RequestedProcedureID", 16)
    request.ScheduledProcedureStepID = t("RequestAttributesSequence.ScheduledProcedureStepID", 16)
    request.AccessionNumber = t("RequestAttributesSequence.AccessionNumber", 16)
    request.RequestedProcedureDescription = t("RequestAttributesSequence.Description", 40)
    request.ScheduledProtocolCodeSequence = Sequence(
        [code_item("P1", "99PHI", t("RequestAttributesSequence.ProtocolCode.CodeMeaning", 40))]
    )
    request.StudyInstanceUID = planter.uid(f"{name}.RequestAttributesSequence.StudyInstanceUID")
    ds.RequestAttributesSequence = Sequence([request])
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    referenced_study.ReferencedSOPInstanceUID = planter.uid(
        f"{name}.ReferencedStudySequence.ReferencedSOPInstanceUID"
    )
    ds.ReferencedStudySequence = Sequence([referenced_study])

    # Kept sequences (chest-xray keeps ViewCodeSequence and AnatomicRegionSequence items'
    # codes): what they do not list must still go, two levels deep and in private blocks.
    view = code_item("R-10214", "SRT", "postero-anterior")
    view.CodingSchemeVersion = t("ViewCodeSequence.CodingSchemeVersion", 16)
    view.ViewModifierCodeSequence = Sequence(
        [code_item("X2", "99PHI", t("ViewCodeSequence.ViewModifier.CodeMeaning", 40))]
    )
    deep = code_item("X3", "99PHI", t("ViewCodeSequence.ViewModifier.deep", 40))
    view.ViewModifierCodeSequence[0].EquivalentCodeSequence = Sequence([deep])
    set_private(view, 0x0029, 0x10, "PHI ITEM VENDOR", 0x01, "LO", t("ViewCodeSequence.private"))
    set_private(
        view, EXAMPLE_GROUP, 0x10, EXAMPLE_CREATOR, 0x11, "LO", t("ViewCodeSequence.example+11")
    )
    ds.ViewCodeSequence = Sequence([view])
    region = code_item("T-D3000", "SRT", "Chest")
    region.AnatomicRegionModifierSequence = Sequence(
        [code_item("X4", "99PHI", t("AnatomicRegionSequence.Modifier.CodeMeaning", 40))]
    )
    ds.AnatomicRegionSequence = Sequence([region])

    # Private blocks at top level: a vendor block with text, a nested private sequence, and
    # text next to the override's kept slot (same creator, another offset).
    set_private(ds, 0x0009, 0x10, planter.token(f"{name}.private creator", 16), 0x01, "LO", "1")
    set_private(ds, 0x0019, 0x10, "PHI TOP VENDOR", 0x01, "LO", t("private 0019 LO", 40))
    ds.add_new(0x00191002, "PN", planter.name(f"{name}.private 0019 PN"))
    ds.add_new(0x00191003, "UI", planter.uid(f"{name}.private 0019 UI"))
    inner = Dataset()
    inner.add_new(0x00100010, "PN", planter.name(f"{name}.private sequence PatientName"))
    ds.add_new(0x00191004, "SQ", Sequence([inner]))
    # (0021,1011): offset 0x11 of block 0x10, whoever owns that block in this file (the override's
    # creator, another vendor, or nobody: a private element without a creator).
    ds.add_new(0x00211011, "LO", t("example creator +11 LO", 40))

    # Overlays (repeating groups 6000 and 6002): text labels and burned-in text in the bits.
    for group, suffix in ((0x6000, "6000"), (0x6002, "6002")):
        tag = group << 16
        ds.add_new(tag | 0x0010, "US", 8)
        ds.add_new(tag | 0x0011, "US", 16)
        ds.add_new(tag | 0x0040, "CS", "G")
        ds.add_new(tag | 0x0050, "SS", [1, 1])
        ds.add_new(tag | 0x0100, "US", 1)
        ds.add_new(tag | 0x0102, "US", 0)
        ds.add_new(tag | 0x0022, "LO", t(f"OverlayDescription {suffix}", 40))
        ds.add_new(tag | 0x1500, "LO", t(f"OverlayLabel {suffix}", 16))
        ds.add_new(tag | 0x3000, "OW", t(f"OverlayData {suffix}", 16).encode())

    # Icon image with text burned into its pixels.
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 4
    icon.Columns = 8
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = t("IconImageSequence.PixelData", 32).encode()
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = Sequence([icon])

    # After Pixel Data: a private block and trailing padding (never part of the copied pixels).
    set_private(ds, 0x7FE1, 0x10, "PHI TRAILING VENDOR", 0x01, "LO", t("private after pixels", 40))
    ds.DataSetTrailingPadding = t("DataSetTrailingPadding", 32).encode()

    # File meta and preamble.
    ds.file_meta.SourceApplicationEntityTitle = t("SourceApplicationEntityTitle", 16)
    ds.file_meta.SendingApplicationEntityTitle = t("SendingApplicationEntityTitle", 16)
    ds.file_meta.PrivateInformationCreatorUID = planter.uid(f"{name}.PrivateInformationCreatorUID")
    ds.file_meta.PrivateInformation = t("PrivateInformation", 32).encode()
    ds.preamble = t("preamble", 64).encode().ljust(128, b"\0")


def build_corpus(outdir: Path, seed: int = 20240501) -> Corpus:
    """Write the corpus under ``outdir/input/`` and return what was planted."""
    planter = Planter(seed)
    input_dir = Path(outdir) / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    patients = {key: new_patient(planter, key) for key in ("A", "B", "C")}
    study_1 = planter.uid("study 1")
    files: dict[str, Path] = {}
    accessions: dict[str, str] = {}
    patient_ids: dict[str, str] = {}

    def add(
        name: str,
        patient: Patient,
        *,
        modality: str,
        sop_class: UID,
        study_uid: str,
        accession: str,
        transfer_syntax: UID = ExplicitVRLittleEndian,
        manufacturer: str = "Philips Medical Systems",
        model: str = "DigitalDiagnost",
        example_block: int | None = 0x10,
        series_number: int = 1,
        frame_of_reference: str | None = None,
    ) -> Dataset:
        ds = base_dataset(
            modality=modality,
            sop_class=sop_class,
            sop_uid=planter.uid(f"{name}.SOPInstanceUID"),
            study_uid=study_uid,
            series_uid=planter.uid(f"{name}.SeriesInstanceUID"),
            manufacturer=manufacturer,
            model=model,
            series_number=series_number,
            transfer_syntax=transfer_syntax,
            pixel_seed=len(files) + 1,
        )
        ds.FrameOfReferenceUID = frame_of_reference or planter.uid(f"{name}.FrameOfReferenceUID")
        ds.PositionReferenceIndicator = ""
        plant_identifiers(ds, planter, name, patient, accession=accession)
        if example_block is not None:
            if example_block != 0x10:  # another vendor's block sits where ours usually does
                set_private(ds, EXAMPLE_GROUP, 0x10, "PHI OTHER VENDOR", 0x10, "DS", "99.5")
            set_private(
                ds, EXAMPLE_GROUP, example_block, EXAMPLE_CREATOR, EXAMPLE_OFFSET, "DS", "412.5"
            )
        accessions[name] = accession
        patient_ids[name] = patient.mrn
        return ds

    def write(name: str, ds: Dataset, patient: Patient) -> None:
        path = input_dir / f"{patient.mrn}_{ds.AccessionNumber}_{name}.dcm"
        path.write_bytes(to_bytes(ds))
        files[name] = path

    a, b, c = patients["A"], patients["B"], patients["C"]
    accession_1 = planter.token("study 1.AccessionNumber", 16)

    cr = add(
        "cr_explicit",
        a,
        modality="CR",
        sop_class=CR_STORAGE,
        study_uid=study_1,
        accession=accession_1,
    )
    write("cr_explicit", cr, a)

    dx = add(
        "dx_explicit",
        a,
        modality="DX",
        sop_class=DX_STORAGE,
        study_uid=study_1,
        accession=accession_1,
        example_block=0x11,
        series_number=2,
        frame_of_reference=cr.FrameOfReferenceUID,  # one frame of reference for the study
    )
    source = Dataset()
    source.ReferencedSOPClassUID = CR_STORAGE
    source.ReferencedSOPInstanceUID = cr.SOPInstanceUID
    dx.SourceImageSequence = Sequence([source])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = CR_STORAGE
    referenced.ReferencedSOPInstanceUID = cr.SOPInstanceUID
    dx.ReferencedImageSequence = Sequence([referenced])
    write("dx_explicit", dx, a)

    implicit = add(
        "cr_implicit",
        b,
        modality="CR",
        sop_class=CR_STORAGE,
        study_uid=planter.uid("study 2"),
        accession=planter.token("study 2.AccessionNumber", 16),
        transfer_syntax=ImplicitVRLittleEndian,
    )
    write("cr_implicit", implicit, b)

    jpeg = add(
        "dx_jpeg",
        c,
        modality="DX",
        sop_class=DX_STORAGE,
        study_uid=planter.uid("study 3"),
        accession=planter.token("study 3.AccessionNumber", 16),
        transfer_syntax=JPEGBaseline8Bit,
        manufacturer="GE Healthcare",
        model="Definium 8000",
        example_block=None,
    )
    jpeg.BitsAllocated = jpeg.BitsStored = 8
    jpeg.HighBit = 7
    jpeg.LossyImageCompression = "01"
    jpeg.PixelData = encapsulate([fake_jpeg_frame(7)])
    jpeg["PixelData"].VR = "OB"
    write("dx_jpeg", jpeg, c)

    deflated = add(
        "dx_deflated",
        c,
        modality="DX",
        sop_class=DX_STORAGE,
        study_uid=planter.uid("study 4"),
        accession=planter.token("study 4.AccessionNumber", 16),
        transfer_syntax=DeflatedExplicitVRLittleEndian,
    )
    write("dx_deflated", deflated, c)

    private_text = add(
        "dx_private_text",
        c,
        modality="DX",
        sop_class=DX_STORAGE,
        study_uid=planter.uid("study 5"),
        accession=planter.token("study 5.AccessionNumber", 16),
        example_block=None,
    )
    set_private(
        private_text,
        EXAMPLE_GROUP,
        0x10,
        EXAMPLE_CREATOR,
        EXAMPLE_OFFSET,
        "LO",
        planter.token("dx_private_text.example slot as LO", 40),
    )
    write("dx_private_text", private_text, c)

    return Corpus(
        root=Path(outdir),
        files=files,
        planted=dict(planter.planted),
        uids=dict(planter.uids),
        accession_numbers=accessions,
        patient_ids=patient_ids,
    )


def fake_jpeg_frame(seed: int, size: int = 512) -> bytes:
    """Bytes shaped like a JPEG stream (SOI ... EOI); never decoded by the engine."""
    rng = random.Random(seed)
    body = bytes(rng.randrange(0, 16) for _ in range(size))
    frame = b"\xff\xd8\xff\xdb" + body + b"\xff\xd9"
    return frame if len(frame) % 2 == 0 else frame + b"\x00"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m stack.synthetic.phi_corpus OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(args[0])
    corpus = build_corpus(outdir)
    summary = {
        "files": {name: str(path) for name, path in corpus.files.items()},
        "planted": corpus.planted,
        "uids": corpus.uids,
    }
    (outdir / "planted.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {len(corpus.files)} instances to {outdir / 'input'} "
        f"({len(corpus.planted)} planted values, {len(corpus.uids)} UIDs)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
