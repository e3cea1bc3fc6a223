"""The synthetic cohort behind ``make demo`` and the system tests.

A real export needs three sources that agree with each other: the images in the VNA, the OMOP
ES extract that names the cohort, and the reports in EMAP. This module invents all three for a
small set of fake UK patients, deterministically from a seed, so that a run can be checked end
to end: every study knows what should happen to it (``expected_outcome``), and every identifying
string planted anywhere is listed (``Cohort.identifiers()``) so that a scan of the DSH can prove
none of them arrived.

What ``generate_cohort(out_dir)`` writes::

    out_dir/dicom/0001.dcm …                 the VNA's content (names are counters, never ids)
    out_dir/extract/                         OMOP ES extract for the project (written by
                                             omop_es.py; cli/pixl_cli/extract_reader.py reads it)
    out_dir/extract-<second_project>/        OMOP ES extract for the second project
    out_dir/reports.jsonl                    one report per study (EMAP's content)

Special cases planted on purpose in the project's extract (positions are fixed so that tests
can name them; every other study is an ordinary CR or DX chest radiograph):

- ``missing_from_vna``: listed in the extract, never written to ``dicom/`` → ``not_found``;
- ``wrong_modality``: an MR study in a CR/DX project → ``refused``;
- ``duplicated_row``: the same procedure twice in the public and the links parquet;
- ``shared``: also asked for by the second project (which has one more study of its own,
  ``second_project_only``); the VNA must be asked for it once per project;
- ``scout_series``: a good study with an extra series described as "SCOUT", which the
  project's series filter drops (the study is still exported, without that series);
- ``no_report``: a good study with no report in EMAP (absent from ``reports.jsonl``);
- ``name_in_description``: a good study whose StudyDescription carries the patient's surname
  ("XR CHEST SMITH", as a radiographer types it): it must arrive with the description empty.

Every identity is fake: names come from small built-in lists, phone numbers from Ofcom's ranges
reserved for drama, NHS numbers are random but carry a valid modulus-11 check digit (so the
checker's NHS-number pattern has something real to find), addresses are invented streets.

Run on its own::

    python -m stack.synthetic.cohort OUT_DIR [--studies N] [--seed S] [--vna-url URL]

``--vna-url`` also uploads the DICOM files to that Orthanc (basic auth from ``PIXL_VNA_USER``
and ``PIXL_VNA_PASSWORD`` when set). The command prints counts and paths only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pixl_core.text.checker import (
    ADDRESS,
    DATE_OF_BIRTH,
    MRN,
    NAME,
    NHS_NUMBER,
    PHONE,
    POSTCODE,
    PatientIdentifiers,
    nhs_number_is_valid,
)
from stack.synthetic.dicom_builder import (
    EXAMPLE_CREATOR,
    EXAMPLE_GROUP,
    EXAMPLE_OFFSET,
    SOP_CLASS_BY_MODALITY,
    base_dataset,
    chest_pixels,
    set_private,
    write_file,
)
from stack.synthetic.omop_es import (
    CHEST_XRAY_CONCEPT,
    UNMAPPED_CONCEPT,
    Person,
    Procedure,
    extract_summary,
    write_extract,
)
from stack.synthetic.reports import ReportContent, Sentence, write_report

# --- constants --------------------------------------------------------------------------------

EXPORTED = "exported"
NOT_FOUND = "not_found"
REFUSED = "refused"
OUTCOMES = (EXPORTED, NOT_FOUND, REFUSED)

# Roles of the special studies, by their position in the project's extract.
NORMAL = "normal"
MISSING_FROM_VNA = "missing_from_vna"
WRONG_MODALITY = "wrong_modality"
DUPLICATED_ROW = "duplicated_row"
SHARED = "shared"
SCOUT_SERIES = "scout_series"
NO_REPORT = "no_report"
SECOND_PROJECT_ONLY = "second_project_only"
NAME_IN_DESCRIPTION = "name_in_description"
SPECIAL_ROLES = {
    1: MISSING_FROM_VNA,
    2: WRONG_MODALITY,
    3: DUPLICATED_ROW,
    4: SHARED,
    5: SCOUT_SERIES,
    6: NO_REPORT,
    7: NAME_IN_DESCRIPTION,
}
MIN_STUDIES = max(SPECIAL_ROLES) + 1

# Every identifier listed by Cohort.identifiers() is at least this long, so a scan for it
# cannot match ordinary words or numbers by chance.
MIN_IDENTIFIER_LENGTH = 5

_UID_NAMESPACE = "pixl-synthetic-cohort"

# --- fake identities (every component at least MIN_IDENTIFIER_LENGTH letters) ----------------

_SURNAMES = (
    "Whitfield", "Okonkwo", "Pemberton", "Fairbairn", "Harrington", "Ashworth", "Chaudhry",
    "Lindqvist", "Babatunde", "Thornbury", "Kowalczyk", "Abernethy", "Pendlebury", "Rasmussen",
    "Fitzgerald", "Ramaswamy", "Delacroix", "Nakamura", "Hollingsworth", "Achterberg",
    "Blackwood", "Cavendish", "Evershed", "Gallagher", "Hathaway", "Jankowski", "Llewellyn",
    "Montgomery", "Nwachukwu", "Ostrowski", "Pritchard", "Quinlan",
)  # fmt: skip
_GIVEN_MALE = (
    "Desmond", "Bartholomew", "Tobias", "Oluwaseun", "Alistair", "Cornelius", "Fergus",
    "Horatio", "Ignatius", "Lachlan", "Mohammed", "Nikolai", "Percival", "Rashid", "Sebastian",
    "Thaddeus", "Wilfred",
)  # fmt: skip
_GIVEN_FEMALE = (
    "Margaret", "Harriet", "Priyanka", "Winifred", "Eleanor", "Philippa", "Rosalind", "Beatrix",
    "Clementine", "Dorothea", "Gwendolyn", "Henrietta", "Imelda", "Josephine", "Lavinia",
    "Ngozi", "Ottilie",
)  # fmt: skip
_STREETS = (
    "Larkspur Gardens", "Thistlewood Road", "Marlowe Crescent", "Quenby Avenue",
    "Birchanger Lane", "Foxglove Close", "Ravensbourne Terrace", "Wyndham Mews",
    "Cobbold Street", "Amberley Way", "Kestrel Rise", "Wisteria Grove",
)  # fmt: skip
# (town, postcode districts that belong to it)
_TOWNS = (
    ("London", ("NW1", "NW3", "NW5", "N7", "N19", "WC1E", "E8", "SE15")),
    ("Barnet", ("EN4", "EN5")),
    ("Enfield", ("EN1", "EN2")),
    ("Edgware", ("HA8",)),
    ("Watford", ("WD17", "WD24")),
)
_POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the letters allowed in a postcode's inward code

# Staff: referring clinicians, reporting radiologists, radiographers (DICOM OperatorsName).
_REFERRERS = (
    ("Rupert", "Oyelaran", "GP"),
    ("Fiona", "Strachan", "Respiratory Registrar"),
    ("Kwame", "Asante", "ICU Consultant"),
    ("Helena", "Marchetti", "Oncology Consultant"),
    ("Gideon", "Blackmore", "Emergency Department Consultant"),
)
_RADIOLOGISTS = (
    ("Imogen", "Castellano"),
    ("Tarquin", "Ellsworth"),
    ("Anjali", "Raghunathan"),
    ("Marcus", "Featherstone"),
)
_RADIOGRAPHERS = (("Bethany", "Colquhoun"), ("Delroy", "Whitaker"), ("Saoirse", "Callaghan"))

_INSTITUTION = "Northbrook General Hospital"
_INSTITUTION_ADDRESS = "Northbrook Road, London NW1 9QX"
_DEPARTMENT = "Radiology"


@dataclass(frozen=True)
class _Device:
    """An X-ray (or MR) system as it writes its DICOM headers."""

    manufacturer: str
    model: str
    modality: str
    software: str
    photometric: str
    detector_mm: float
    station: str
    serial: str
    portable: bool = False


_PHILIPS = _Device(
    "Philips Medical Systems", "DigitalDiagnost", "DX", "4.3.2", "MONOCHROME2", 430.0,
    "NGHXR01", "DDG14527",
)  # fmt: skip
_GE = _Device(
    "GE Healthcare", "Definium 8000", "DX", "DM_Platform_Release_Version 11.4", "MONOCHROME1",
    410.0, "NGHXR02", "GEDEF88213",
)  # fmt: skip
_FUJI = _Device(
    "FUJIFILM Corporation", "FCR PROFECT CS", "CR", "A07-08", "MONOCHROME1", 350.0,
    "NGHCR01", "FCRPR40671",
)  # fmt: skip
_AGFA = _Device(
    "Agfa", "CR 85-X", "CR", "NX 3.0.9300", "MONOCHROME2", 350.0, "NGHCR02", "AGFA85X7712"
)
_CARESTREAM = _Device(
    "Carestream Health", "DRX-Revolution", "DX", "5.7.412", "MONOCHROME2", 430.0,
    "NGHMOBILE3", "CSDRXR30958", portable=True,
)  # fmt: skip
_SIEMENS_MR = _Device(
    "SIEMENS", "Avanto", "MR", "syngo MR B19", "MONOCHROME2", 400.0, "NGHMR01", "AVT26671"
)
_FIXED_DEVICES = (_PHILIPS, _GE, _FUJI, _AGFA)

# --- report texts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    clinical: str
    findings: str
    impression: str
    portable: bool = False
    addendum: str | None = None


# Position matters: study i gets finding i (mod 10). The MR study (2) and the study without a
# report (6) get the least interesting ones; the Philips studies (0, 4) get non-portable ones.
_FINDINGS = (
    _Finding(
        "Cough for three weeks. ?infection.",
        "The heart size is normal (CTR 0.46). The lungs are clear. No pleural effusion or "
        "pneumothorax. The mediastinal contours and hila are unremarkable. No acute bony "
        "abnormality.",
        "Normal chest radiograph.",
    ),
    _Finding(
        "Right shoulder pain radiating down the arm, weight loss. 40 pack-year smoker.",
        "There is a 38 mm soft tissue mass at the right lung apex with destruction of the "
        "posterior aspect of the right second rib. The remainder of the lungs are clear. Heart "
        "size is normal.",
        "Right apical mass with rib destruction, highly suspicious for a Pancoast (superior "
        "sulcus) tumour. Urgent CT chest recommended.",
        addendum="Referred on the lung cancer two-week-wait pathway. CT chest booked.",
    ),
    _Finding(
        "Haemoptysis.",
        "There is a 12 mm well-defined nodule in the left mid zone. No hilar enlargement. No "
        "pleural effusion. Heart size normal (CTR 0.48).",
        "12 mm left mid zone nodule. CT chest recommended.",
    ),
    _Finding(
        "Fever, productive cough, raised CRP. ?pneumonia.",
        "There is patchy airspace consolidation in the right lower zone with air bronchograms, "
        "obscuring the medial right hemidiaphragm. Small right pleural effusion blunting the "
        "costophrenic angle. Heart size is normal. No pneumothorax.",
        "Right lower lobe consolidation in keeping with pneumonia, with a small parapneumonic "
        "effusion. Suggest a follow-up radiograph in 6 weeks to confirm resolution.",
    ),
    _Finding(
        "Increasing breathlessness and bilateral ankle oedema.",
        "The heart is enlarged (CTR 0.55). There is upper lobe venous diversion with septal "
        "(Kerley B) lines at both bases, perihilar haziness and small bilateral pleural "
        "effusions.",
        "Cardiomegaly with features of pulmonary oedema, in keeping with congestive cardiac "
        "failure.",
    ),
    _Finding(
        "Sudden onset left-sided pleuritic chest pain. Smoker.",
        "There is a left apical pneumothorax with a 5 mm rim of air at the apex and a visible "
        "lung edge. No mediastinal shift to suggest tension. The right lung is clear.",
        "Small left apical pneumothorax (5 mm at the apex). No features of tension.",
    ),
    _Finding(
        "Exacerbation of COPD.",
        "The lungs are hyperexpanded with flattened hemidiaphragms (11 posterior ribs visible). "
        "Bullous change at the right apex. No consolidation, effusion or pneumothorax.",
        "Hyperexpanded lungs in keeping with COPD. No acute change.",
    ),
    _Finding(
        "ICU. Swan-Ganz catheter inserted. ?position.",
        "Endotracheal tube tip lies 4 cm above the carina. Right internal jugular central "
        "venous catheter tip projects over the SVC. A Swan-Ganz catheter has been inserted via "
        "the left subclavian vein with its tip over the right interlobar pulmonary artery, "
        "approximately 2 cm beyond the hilum. Nasogastric tube tip is below the left "
        "hemidiaphragm. Bibasal atelectasis. No pneumothorax.",
        "Swan-Ganz catheter tip is peripherally sited: consider withdrawing by 2 cm. Other "
        "lines and tubes are satisfactorily positioned.",
        portable=True,
    ),
    _Finding(
        "Day 3 post CABG.",
        "Median sternotomy wires are intact. Mild cardiomegaly (CTR 0.52). Left basal "
        "atelectasis and a small left pleural effusion. The left chest drain has been removed "
        "with no pneumothorax.",
        "Expected post-operative appearances with a small left pleural effusion.",
        portable=True,
    ),
    _Finding(
        "Known breast carcinoma. Increasing breathlessness.",
        "Large left pleural effusion occupying the lower two thirds of the left hemithorax "
        "with a meniscus and mild mediastinal shift to the right. The right lung is clear.",
        "Large left pleural effusion. Consider ultrasound-guided aspiration for cytology.",
    ),
)
_MR_FINDING = _Finding(
    "Palpable right chest wall lump. ?lipoma.",
    "Coronal T2 HASTE and axial T1 VIBE sequences. There is a 24 mm well-circumscribed lesion "
    "in the right lateral chest wall following fat signal on all sequences, with no "
    "enhancement or soft tissue component. The visualised lung bases are clear.",
    "Simple chest wall lipoma. No further imaging required.",
)

# --- public data classes ----------------------------------------------------------------------


@dataclass
class SyntheticSeries:
    """One series of a study (one image each: enough to exercise every path, and fast)."""

    series_uid: str
    series_number: int
    description: str
    view_position: str
    sop_instance_uids: list[str]
    files: list[Path] = field(default_factory=list)
    filtered: bool = False  # the project's series filter drops it (a scout)


@dataclass
class SyntheticStudy:
    """One study, with the identity of its patient and what the pipeline should do with it."""

    index: int
    role: str
    # the patient
    mrn: str
    nhs_number: str
    family_name: str
    given_name: str
    sex: str  # "M" or "F"
    title: str  # "Mr", "Mrs", "Ms"
    dob: date
    address: str  # street line, town and postcode, as in PatientAddress
    street: str  # house number and street
    postcode: str
    phone: str
    # the study
    accession_number: str
    study_id: str
    study_uid: str
    study_datetime: datetime
    modality: str
    sop_class_uid: str
    study_description: str
    manufacturer: str
    model: str
    series: list[SyntheticSeries]
    # what should happen
    in_vna: bool
    expected_outcome: str
    projects: list[str]
    procedure_ids: dict[str, int]  # per project: its OMOP ES procedure_occurrence_id
    has_report: bool
    report_identifiers: list[str]  # identifying strings written into this study's report
    referrer: str  # "Given Family"
    radiologist: str
    operator: str

    @property
    def patient_name(self) -> str:
        """The name as DICOM writes it: ``FAMILY^Given``."""
        return f"{self.family_name.upper()}^{self.given_name}"

    @property
    def nhs_number_spaced(self) -> str:
        """The NHS number as printed on letters: ``943 476 5919``."""
        n = self.nhs_number
        return f"{n[:3]} {n[3:6]} {n[6:]}"

    @property
    def series_uids(self) -> list[str]:
        return [s.series_uid for s in self.series]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [uid for s in self.series for uid in s.sop_instance_uids]

    @property
    def files(self) -> list[Path]:
        return [path for s in self.series for path in s.files]

    @property
    def expected_instances(self) -> int:
        """How many instances of this study should reach the DSH."""
        if self.expected_outcome != EXPORTED:
            return 0
        return sum(len(s.sop_instance_uids) for s in self.series if not s.filtered)

    def checker_identifiers(self) -> dict[str, str]:
        """The patient's identifiers in the input format of ``pixl reports check``."""
        return {
            "name": f"{self.given_name} {self.family_name}",
            "given_name": self.given_name,
            "family_name": self.family_name,
            "mrn": self.mrn,
            "nhs_number": self.nhs_number,
            "date_of_birth": self.dob.isoformat(),
            "address": self.address,
            "postcode": self.postcode,
            "phone": self.phone,
        }

    def patient_identifiers(self) -> set[str]:
        """Every form in which this study's patient and study identifiers were planted."""
        family, given = self.family_name, self.given_name
        values = {
            self.mrn,
            self.accession_number,
            self.study_id,
            self.nhs_number,
            self.nhs_number_spaced,
            family,
            family.upper(),
            given,
            given.upper(),
            self.patient_name,
            f"{given} {family}",
            f"{family.upper()}, {given}",
            f"{given[0]}. {family}",
            f"{self.title} {family.upper()}",
            *_date_forms(self.dob),
            self.address,
            self.street,
            self.postcode,
            self.postcode.replace(" ", ""),
            self.phone,
            self.phone.replace(" ", ""),
            self.study_uid,
            *self.series_uids,
            *self.sop_instance_uids,
            *self.report_identifiers,
        }
        return values

    def staff_identifiers(self) -> set[str]:
        """The clinicians' names, in the forms written to DICOM and to the report."""
        values: set[str] = set()
        for full in (self.referrer, self.radiologist, self.operator):
            given, family = full.split(" ", 1)
            values |= {full, given, family, family.upper(), f"{family.upper()}^{given}"}
        return values


@dataclass
class Cohort:
    """What ``generate_cohort`` wrote, and what each study should become."""

    out_dir: Path
    seed: int
    project_name: str
    second_project: str | None
    studies: list[SyntheticStudy]
    extract_dirs: dict[str, Path]
    site_identifiers: set[str] = field(default_factory=set)

    @property
    def dicom_dir(self) -> Path:
        return self.out_dir / "dicom"

    @property
    def extract_dir(self) -> Path:
        """The project's extract (``out_dir/extract``)."""
        return self.extract_dirs[self.project_name]

    @property
    def reports_path(self) -> Path:
        return self.out_dir / "reports.jsonl"

    @property
    def projects(self) -> list[str]:
        return list(self.extract_dirs)

    def studies_for(self, project: str) -> list[SyntheticStudy]:
        """The distinct studies the project's extract asks for (duplicates counted once)."""
        return [s for s in self.studies if project in s.projects]

    def expected_counts(self, project: str) -> dict[str, int]:
        """How many of the project's studies should end in each outcome."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for study in self.studies_for(project):
            counts[study.expected_outcome] += 1
        return counts

    def by_role(self, role: str) -> SyntheticStudy:
        """The (first) study with a special role, e.g. ``by_role(WRONG_MODALITY)``."""
        return next(s for s in self.studies if s.role == role)

    def dicom_files(self) -> list[Path]:
        return sorted(self.dicom_dir.glob("*.dcm"))

    def identifiers(self, include_staff: bool = True, include_site: bool = True) -> set[str]:
        """Every identifying string planted, for a scan of what reached the DSH.

        Patient and study identifiers are always included (MRNs, accession numbers, StudyIDs,
        NHS numbers with and without spaces, names and their parts in upper and original case,
        dates of birth in DICOM and report formats, addresses, postcodes, phones, original
        UIDs). Staff names and site values (institution, station, device serial) are optional
        because a different de-identification policy might legitimately keep them. Values
        shorter than MIN_IDENTIFIER_LENGTH are left out: they would match by chance.
        """
        values: set[str] = set()
        for study in self.studies:
            values |= study.patient_identifiers()
            if include_staff:
                values |= study.staff_identifiers()
        if include_site:
            values |= self.site_identifiers
        return {v for v in values if len(v) >= MIN_IDENTIFIER_LENGTH}


# --- identity helpers -------------------------------------------------------------------------


def _date_forms(day: date) -> list[str]:
    """A date of birth as DICOM, ISO and UK reports write it."""
    return [
        day.strftime("%Y%m%d"),
        day.isoformat(),
        day.strftime("%d/%m/%Y"),
        f"{day.day} {day.strftime('%b %Y')}",
        f"{day.day} {day.strftime('%B %Y')}",
    ]


@dataclass
class _Patient:
    mrn: str
    nhs_number: str
    family_name: str
    given_name: str
    sex: str
    title: str
    dob: date
    street: str
    town: str
    postcode: str
    phone: str
    last_study: datetime | None = None

    @property
    def address(self) -> str:
        return f"{self.street}, {self.town} {self.postcode}"


class _Identities:
    """Hands out unique fake identities and study numbers from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._used: set[str] = set()
        self._names: set[tuple[str, str]] = set()

    def _unique(self, make: Callable[[], str]) -> str:
        while True:
            value = make()
            if value not in self._used:
                self._used.add(value)
                return value

    def mrn(self) -> str:
        return self._unique(lambda: f"40{self.rng.randrange(10**6):06d}")

    def accession(self) -> str:
        return self._unique(lambda: f"RRV{self.rng.randrange(10**8):08d}")

    def study_id(self) -> str:
        return self._unique(lambda: f"NGH{self.rng.randrange(10**7):07d}")

    def nhs_number(self) -> str:
        def make() -> str:
            while True:
                first = str(self.rng.choice((4, 6, 7)))  # England's issued ranges
                nine = first + f"{self.rng.randrange(10**8):08d}"
                # at most one check digit passes; none does when the check value would be 10
                for digit in "0123456789":
                    if nhs_number_is_valid(nine + digit):
                        return nine + digit

        return self._unique(make)

    def phone(self) -> str:
        # Ofcom reserves 020 7946 0000-0999 and 07700 900000-900999 for drama: never real.
        def make() -> str:
            if self.rng.random() < 0.5:
                return f"020 7946 0{self.rng.randrange(1000):03d}"
            return f"07700 900{self.rng.randrange(1000):03d}"

        return self._unique(make)

    def patient(self) -> _Patient:
        rng = self.rng
        sex = rng.choice("MF")
        for _ in range(1000):
            given = rng.choice(_GIVEN_MALE if sex == "M" else _GIVEN_FEMALE)
            family = rng.choice(_SURNAMES)
            if (given, family) not in self._names:
                break
        self._names.add((given, family))
        title = "Mr" if sex == "M" else rng.choice(("Mrs", "Ms"))
        dob = date(1935, 1, 1) + timedelta(days=rng.randrange(365 * 60))
        town, districts = rng.choice(_TOWNS)
        postcode = (
            f"{rng.choice(districts)} {rng.randrange(1, 10)}"
            f"{rng.choice(_POSTCODE_LETTERS)}{rng.choice(_POSTCODE_LETTERS)}"
        )
        street = self._unique(lambda: f"{rng.randrange(2, 180)} {rng.choice(_STREETS)}")
        return _Patient(
            mrn=self.mrn(),
            nhs_number=self.nhs_number(),
            family_name=family,
            given_name=given,
            sex=sex,
            title=title,
            dob=dob,
            street=street,
            town=town,
            postcode=postcode,
            phone=self.phone(),
        )


def _uid(seed: int, *parts: object) -> str:
    """A UID that depends only on the seed and its role, so reruns give the same cohort."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, str(seed), *map(str, parts)]))


def _full(given: str, family: str) -> str:
    return f"{given} {family}"


def _dicom_name(full: str, prefix: str = "") -> str:
    given, family = full.split(" ", 1)
    return f"{family.upper()}^{given}^^{prefix}" if prefix else f"{family.upper()}^{given}"


# --- planning the studies ---------------------------------------------------------------------


@dataclass
class _Plan:
    """What a study will be, before UIDs and files are made."""

    index: int
    role: str
    patient: _Patient
    projects: list[str]
    in_vna: bool
    expected_outcome: str
    device: _Device
    views: list[str]  # series descriptions, in series order
    finding: _Finding
    study_datetime: datetime
    accession: str
    study_id: str
    referrer: tuple[str, str, str]
    radiologist: tuple[str, str]
    operator: tuple[str, str]


_VIEW_POSITION = {"PA": "PA", "AP": "AP", "AP PORTABLE": "AP", "LATERAL": "LL", "SCOUT": "PA"}


def _study_datetime(rng: random.Random, patient: _Patient) -> datetime:
    if patient.last_study is None:
        day = date(2023, 1, 2) + timedelta(days=rng.randrange(390))
    else:
        day = patient.last_study.date() + timedelta(days=rng.randrange(20, 120))
    moment = datetime.combine(day, time(rng.randrange(8, 20), rng.randrange(60), rng.randrange(60)))
    patient.last_study = moment
    return moment


def _plan_studies(
    rng: random.Random,
    ids: _Identities,
    n_studies: int,
    project_name: str,
    second_project: str | None,
) -> list[_Plan]:
    """Decide every study before writing anything, so that all draws come from one generator."""
    patients: list[_Patient] = []
    plans: list[_Plan] = []
    total = n_studies + (1 if second_project else 0)
    for index in range(total):
        if index < n_studies:
            role = SPECIAL_ROLES.get(index, NORMAL)
            projects = [project_name]
            if role == SHARED and second_project:
                projects.append(second_project)
        else:
            role, projects = SECOND_PROJECT_ONLY, [second_project or ""]
        # Some patients come back: every fourth ordinary study is a follow-up of an earlier one.
        if role == NORMAL and index >= MIN_STUDIES and index % 4 == 3:
            patient = patients[index - MIN_STUDIES]
        else:
            patient = ids.patient()
        patients.append(patient)

        if role == WRONG_MODALITY:
            device, views, finding = _SIEMENS_MR, ["t2_haste_cor", "t1_vibe_tra"], _MR_FINDING
        else:
            finding = _FINDINGS[index % len(_FINDINGS)]
            if finding.portable:
                device = _CARESTREAM
                views = ["AP PORTABLE"]
            else:
                # The first study and the shared one come from the Philips DigitalDiagnost, so
                # both projects exercise the manufacturer override.
                device = _PHILIPS if index == 0 or role == SHARED else rng.choice(_FIXED_DEVICES)
                views = ["PA", "LATERAL"] if rng.random() < 0.5 else ["PA"]
            if role == SCOUT_SERIES:
                views = ["SCOUT", "PA", "LATERAL"]
        in_vna = role != MISSING_FROM_VNA
        outcome = NOT_FOUND if not in_vna else REFUSED if role == WRONG_MODALITY else EXPORTED
        plans.append(
            _Plan(
                index=index,
                role=role,
                patient=patient,
                projects=projects,
                in_vna=in_vna,
                expected_outcome=outcome,
                device=device,
                views=views,
                finding=finding,
                study_datetime=_study_datetime(rng, patient),
                accession=ids.accession(),
                study_id=ids.study_id(),
                referrer=rng.choice(_REFERRERS),
                radiologist=rng.choice(_RADIOLOGISTS),
                operator=rng.choice(_RADIOGRAPHERS),
            )
        )
    return plans


# --- DICOM ------------------------------------------------------------------------------------


def _study_description(device: _Device) -> str:
    if device.modality == "MR":
        return "MR THORAX"
    return "XR CHEST PORTABLE" if device.portable else "XR CHEST"


def _instance(
    plan: _Plan,
    study: SyntheticStudy,
    series: SyntheticSeries,
    sop_uid: str,
    size: int,
    seed: int,
    counter: int,
) -> Dataset:
    """One instance with identifiers wherever a hospital's modality and RIS put them.

    The shared ``base_dataset`` plus what this site writes: institution, staff, the NHS number
    as another patient id, address and phone, the request, exposure (or MR) parameters, and the
    Philips private element the project's override keeps. ``counter`` (the file's number)
    varies the exposure values and the pixel noise.
    """
    patient, device = plan.patient, plan.device
    is_mr = device.modality == "MR"
    when = plan.study_datetime
    age = (
        when.year
        - patient.dob.year
        - ((when.month, when.day) < (patient.dob.month, patient.dob.day))
    )
    ds = base_dataset(
        sop_uid=sop_uid,
        study_uid=study.study_uid,
        series_uid=series.series_uid,
        modality=device.modality,
        patient_name=f"{patient.family_name.upper()}^{patient.given_name}^^{patient.title}",
        patient_id=patient.mrn,
        birth_date=patient.dob.strftime("%Y%m%d"),
        sex=patient.sex,
        age=f"{age:03d}Y",
        accession=plan.accession,
        study_id=plan.study_id,
        study_datetime=when,
        series_datetime=when + timedelta(minutes=series.series_number),
        study_description=study.study_description,
        series_description=series.description,
        view_position=None if is_mr else series.view_position,
        series_number=series.series_number,
        manufacturer=device.manufacturer,
        model=device.model,
        photometric=device.photometric,
        pixel_spacing=round(device.detector_mm / size, 4),
        pixels=chest_pixels(
            size, series.view_position, device.modality, device.photometric, [seed, counter]
        ),
    )
    ds.AcquisitionDate = ds.SeriesDate
    ds.AcquisitionTime = ds.SeriesTime
    ds.InstitutionName = _INSTITUTION
    ds.InstitutionAddress = _INSTITUTION_ADDRESS
    ds.InstitutionalDepartmentName = _DEPARTMENT
    ds.ReferringPhysicianName = _dicom_name(_full(*plan.referrer[:2]), "Dr")
    ds.NameOfPhysiciansReadingStudy = _dicom_name(_full(*plan.radiologist), "Dr")
    ds.OperatorsName = _dicom_name(_full(*plan.operator))
    ds.StationName = device.station
    ds.DeviceSerialNumber = device.serial
    ds.SoftwareVersions = device.software
    ds.IssuerOfPatientID = "NGH"
    ds.OtherPatientIDs = patient.nhs_number
    other = Dataset()
    other.PatientID = patient.nhs_number
    other.IssuerOfPatientID = "NHS"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    request = Dataset()
    request.AccessionNumber = plan.accession
    request.RequestedProcedureID = plan.accession
    request.ScheduledProcedureStepID = plan.accession
    request.RequestedProcedureDescription = ds.StudyDescription
    ds.RequestAttributesSequence = DicomSequence([request])

    if is_mr:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = "6"
        ds.RepetitionTime = "1400" if series.series_number == 1 else "4.2"
        ds.EchoTime = "92" if series.series_number == 1 else "1.9"
        ds.MagneticFieldStrength = "1.5"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference", study.study_uid)
        ds.ImagePositionPatient = [-200, -200, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0] if series.series_number == 2 else [
            1, 0, 0, 0, 0, -1,
        ]  # fmt: skip
        return ds
    portable = device.portable
    ds.KVP = "90" if portable else "125"
    ds.DistanceSourceToDetector = "1000" if portable else "1800"
    ds.ExposureTime = str(8 + counter % 13)
    ds.XRayTubeCurrent = str(200 + (counter * 37) % 250)
    ds.Exposure = str(max(1, int(ds.XRayTubeCurrent) * int(ds.ExposureTime) // 1000))
    if device is _PHILIPS:
        lateral = series.view_position == "LL"
        ds.AcquisitionDeviceProcessingDescription = "Thorax lat" if lateral else "Thorax pa"
        set_private(
            ds,
            EXAMPLE_GROUP,
            0x10,
            EXAMPLE_CREATOR,
            EXAMPLE_OFFSET,
            "DS",
            f"{250 + counter % 300}.5",
        )
    return ds


def _build_study(plan: _Plan, seed: int) -> SyntheticStudy:
    patient = plan.patient
    study_uid = _uid(seed, "study", plan.index)
    series: list[SyntheticSeries] = []
    for number, description in enumerate(plan.views, start=1):
        view = "" if plan.device.modality == "MR" else _VIEW_POSITION[description]
        series.append(
            SyntheticSeries(
                series_uid=_uid(seed, "series", plan.index, number),
                series_number=number,
                description=description,
                view_position=view,
                sop_instance_uids=[_uid(seed, "instance", plan.index, number, 1)],
                filtered=description == "SCOUT",
            )
        )
    device = plan.device
    return SyntheticStudy(
        index=plan.index,
        role=plan.role,
        mrn=patient.mrn,
        nhs_number=patient.nhs_number,
        family_name=patient.family_name,
        given_name=patient.given_name,
        sex=patient.sex,
        title=patient.title,
        dob=patient.dob,
        address=patient.address,
        street=patient.street,
        postcode=patient.postcode,
        phone=patient.phone,
        accession_number=plan.accession,
        study_id=plan.study_id,
        study_uid=study_uid,
        study_datetime=plan.study_datetime,
        modality=device.modality,
        sop_class_uid=str(SOP_CLASS_BY_MODALITY[device.modality]),
        study_description=_study_description(device)
        + (f" {patient.family_name.upper()}" if plan.role == NAME_IN_DESCRIPTION else ""),
        manufacturer=device.manufacturer,
        model=device.model,
        series=series,
        in_vna=plan.in_vna,
        expected_outcome=plan.expected_outcome,
        projects=list(plan.projects),
        procedure_ids={},
        has_report=plan.role != NO_REPORT,
        report_identifiers=[],
        referrer=_full(*plan.referrer[:2]),
        radiologist=_full(*plan.radiologist),
        operator=_full(*plan.operator),
    )


def _write_dicom(
    plans: list[_Plan], studies: list[SyntheticStudy], dicom_dir: Path, size: int, seed: int
) -> None:
    """Write the VNA's files, named by a counter: a file name never carries an identifier."""
    counter = 0
    for plan, study in zip(plans, studies, strict=True):
        if not plan.in_vna:
            continue  # listed in the extract, but the VNA never had it
        for series in study.series:
            for sop_uid in series.sop_instance_uids:
                counter += 1
                ds = _instance(plan, study, series, sop_uid, size, seed, counter)
                series.files.append(write_file(ds, dicom_dir / f"{counter:04d}.dcm"))


# --- OMOP ES extract --------------------------------------------------------------------------


def _write_extract(
    extract_dir: Path,
    project: str,
    studies: list[SyntheticStudy],
    seed: int,
    extracted_at: datetime,
) -> None:
    """An OMOP ES extract for ``project``: its own sequential person and procedure ids."""
    persons: dict[str, Person] = {}
    procedures: list[Procedure] = []
    for study in studies:
        if study.mrn not in persons:
            persons[study.mrn] = Person(
                person_id=len(persons) + 1,
                mrn=study.mrn,
                year_of_birth=study.dob.year,
                sex=study.sex,
                nhs_number=study.nhs_number,
                given_name=study.given_name,
                family_name=study.family_name,
                date_of_birth=study.dob,
                postcode=study.postcode,
            )
        procedure_id = len(procedures) + 1
        study.procedure_ids[project] = procedure_id
        is_mr = study.modality == "MR"  # a local code OMOP ES cannot map
        procedures.append(
            Procedure(
                procedure_occurrence_id=procedure_id,
                person_id=persons[study.mrn].person_id,
                accession_number=study.accession_number,
                procedure_date=study.study_datetime.date(),
                procedure_datetime=study.study_datetime,
                concept_id=UNMAPPED_CONCEPT if is_mr else CHEST_XRAY_CONCEPT,
                source_value="MCHES" if is_mr else "XCHES",
            )
        )
    # The duplicated row: OMOP ES wrote the same procedure twice, in both files.
    duplicated = {s.procedure_ids[project] for s in studies if s.role == DUPLICATED_ROW}
    procedures += [p for p in procedures if p.procedure_occurrence_id in duplicated]
    digest = hashlib.sha1(f"omop-es:{seed}:{project}".encode()).hexdigest()
    write_extract(
        extract_dir,
        list(persons.values()),
        procedures,
        extract_summary(project, extracted_at, digest),
    )


# --- reports ----------------------------------------------------------------------------------


def _report(study: SyntheticStudy, plan: _Plan) -> dict[str, object]:
    """A UK-style report; some carry the patient's identifiers in the ways real ones do.

    Which identifiers are planted rotates with the study's position, so that across the cohort
    every kind and format appears, and some reports are clean apart from the signature. The
    report is written by the one generator (``reports.write_report``); what it planted is kept
    in ``study.report_identifiers``, and EMAP's record is returned.
    """
    finding = plan.finding
    family, given = study.family_name, study.given_name
    referrer_given, referrer_family, referrer_role = plan.referrer
    referrer = f"Dr {referrer_given} {referrer_family}"
    dob_uk = study.dob.strftime("%d/%m/%Y")
    dob_long = f"{study.dob.day} {study.dob.strftime('%b %Y')}"
    when = study.study_datetime
    # The report names the examination, never the surname a description was typed with.
    base_description = study.study_description.removesuffix(f" {family.upper()}")
    exam = {
        "XR CHEST": "XR CHEST PA" if len(study.series) == 1 else "XR CHEST PA AND LATERAL",
        "XR CHEST PORTABLE": "XR CHEST (MOBILE AP)",
        "MR THORAX": "MRI THORAX",
    }.get(base_description, base_description)

    header: list[Sentence] = []
    findings: list[Sentence] = [[finding.findings]]
    impression: Sentence = [finding.impression]
    addenda: list[Sentence] = []
    variant = study.index % 5
    if variant == 1:
        header.append(
            [
                "Patient: ",
                (NAME, f"{study.title} {family.upper()}"),
                "   DOB: ",
                (DATE_OF_BIRTH, dob_uk),
                "   NHS No: ",
                (NHS_NUMBER, study.nhs_number_spaced),
            ]
        )
    elif variant == 2:
        findings.append(
            [
                (NAME, f"{given[0]}. {family}"),
                " (MRN ",
                (MRN, study.mrn),
                ", born ",
                (DATE_OF_BIRTH, dob_long),
                ") attended as an outpatient.",
            ]
        )
        addenda.append(
            [
                f"ADDENDUM: Result telephoned to {referrer} on ",
                (PHONE, study.phone),
                f" at {(when + timedelta(hours=2)).strftime('%H:%M')}.",
            ]
        )
    elif variant == 3:
        addenda.append(
            [
                "ADDENDUM: ",
                (NAME, f"{family.upper()}, {given}"),
                " (NHS ",
                (NHS_NUMBER, study.nhs_number),
                ") of ",
                (ADDRESS, study.address),
                " to be recalled for CT; letter sent to ",
                (POSTCODE, study.postcode),
                ".",
            ]
        )
    elif variant == 4:
        impression.append(f" Findings discussed with {referrer}, {referrer_role}.")
        findings.append(
            [
                "Comparison is made with ",
                (NAME, f"{given} {family}"),
                f"'s previous film of {(when - timedelta(days=400)).strftime('%d/%m/%Y')}.",
            ]
        )
    if finding.addendum:
        addenda.append([f"ADDENDUM: {finding.addendum} Dr {study.radiologist}."])

    report = write_report(
        ReportContent(
            exam=exam,
            clinical=finding.clinical,
            findings=findings,
            impression=impression,
            radiologist=study.radiologist,
            reported_at=when + timedelta(hours=3),
            header=header,
            addenda=addenda,
        ),
        PatientIdentifiers(**study.checker_identifiers()),
    )
    study.report_identifiers = [report.text[start:end] for _kind, start, end in report.planted]
    return {
        "mrn": study.mrn,
        "accession_number": study.accession_number,
        "narrative": report.narrative,
        "impression": report.impression,
        "addenda": list(report.addenda),
    }


def _write_reports(path: Path, plans: list[_Plan], studies: list[SyntheticStudy]) -> None:
    lines = [
        json.dumps(_report(study, plan), ensure_ascii=False)
        for plan, study in zip(plans, studies, strict=True)
        if study.has_report
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --- public API -------------------------------------------------------------------------------


def generate_cohort(
    out_dir: Path,
    n_studies: int = 12,
    seed: int = 7,
    project_name: str = "chest-xray",
    second_project: str | None = "chest-xray-research",
    image_size: int = 256,
) -> Cohort:
    """Write the synthetic VNA content, OMOP ES extract(s) and reports under ``out_dir``.

    ``n_studies`` counts the studies in the project's extract (at least MIN_STUDIES, so that
    every special case fits); the second project adds one study of its own. The same seed
    gives the same cohort, byte for byte, so a rerun of the demo finds what it left.
    The folders this writes are replaced; nothing else under ``out_dir`` is touched.
    """
    if n_studies < MIN_STUDIES:
        raise ValueError(f"n_studies must be at least {MIN_STUDIES} to hold every special case")
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    if second_project == project_name:
        raise ValueError("second_project must differ from project_name")
    out_dir = Path(out_dir)
    dicom_dir = out_dir / "dicom"
    extract_dirs = {project_name: out_dir / "extract"}
    if second_project:
        extract_dirs[second_project] = out_dir / f"extract-{second_project}"
    for folder in (dicom_dir, *extract_dirs.values()):
        if folder.exists():
            shutil.rmtree(folder)
    dicom_dir.mkdir(parents=True)

    rng = random.Random(seed)
    plans = _plan_studies(rng, _Identities(rng), n_studies, project_name, second_project)
    studies = [_build_study(plan, seed) for plan in plans]
    _write_dicom(plans, studies, dicom_dir, image_size, seed)

    extracted_at = datetime(2024, 3, 1, 10, 15) + timedelta(minutes=seed % 100_000)
    for offset, (project, folder) in enumerate(extract_dirs.items()):
        _write_extract(
            folder,
            project,
            [s for s in studies if project in s.projects],
            seed,
            extracted_at + timedelta(days=offset),
        )
    _write_reports(out_dir / "reports.jsonl", plans, studies)

    devices = {plan.device for plan in plans}
    site = {_INSTITUTION, _INSTITUTION_ADDRESS}
    site |= {d.station for d in devices} | {d.serial for d in devices}
    return Cohort(
        out_dir=out_dir,
        seed=seed,
        project_name=project_name,
        second_project=second_project,
        studies=studies,
        extract_dirs=extract_dirs,
        site_identifiers=site,
    )


def load_into_vna(cohort: Cohort, vna_url: str, auth: tuple[str, str] | None = None) -> int:
    """Upload every file in ``out_dir/dicom`` to an Orthanc; return how many it holds now.

    Orthanc answers "AlreadyStored" for an instance it has, so this can run again safely.
    Errors name the file (a counter) and the HTTP status, never a value from the file.
    """
    url = vna_url.rstrip("/") + "/instances"
    count = 0
    with requests.Session() as session:
        session.auth = auth
        for path in cohort.dicom_files():
            response = session.post(
                url,
                data=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
                timeout=60,
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"VNA refused {path.name}: HTTP {response.status_code} from {url}"
                )
            status = response.json().get("Status")
            if status not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"VNA did not store {path.name}: status {status}")
            count += 1
    return count


def _summary(cohort: Cohort) -> str:
    lines = [
        f"synthetic cohort (seed {cohort.seed}) in {cohort.out_dir}",
        f"  DICOM files: {len(cohort.dicom_files())} in {cohort.dicom_dir}",
        f"  reports: {sum(s.has_report for s in cohort.studies)} in {cohort.reports_path}",
    ]
    for project, folder in cohort.extract_dirs.items():
        counts = cohort.expected_counts(project)
        expected = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines.append(f"  extract {project}: {folder} (expected: {expected})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stack.synthetic.cohort OUT_DIR``: prints counts and paths only, never identifiers."""
    parser = argparse.ArgumentParser(
        prog="python -m stack.synthetic.cohort",
        description="Write the synthetic cohort (VNA files, OMOP ES extracts, reports).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--studies", type=int, default=12, help="studies in the project extract")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=256, help="rows and columns")
    parser.add_argument("--project", default="chest-xray")
    parser.add_argument("--second-project", default="chest-xray-research")
    parser.add_argument("--no-second-project", action="store_true")
    parser.add_argument("--vna-url", help="also upload the DICOM files to this Orthanc")
    args = parser.parse_args(argv)
    try:
        cohort = generate_cohort(
            args.out_dir,
            n_studies=args.studies,
            seed=args.seed,
            project_name=args.project,
            second_project=None if args.no_second_project else args.second_project,
            image_size=args.image_size,
        )
    except ValueError as error:
        parser.error(str(error))
    print(_summary(cohort))
    if args.vna_url:
        user, password = os.environ.get("PIXL_VNA_USER"), os.environ.get("PIXL_VNA_PASSWORD")
        auth = (user, password) if user and password else None
        try:
            uploaded = load_into_vna(cohort, args.vna_url, auth)
        except (requests.RequestException, RuntimeError) as error:
            print(f"upload failed: {error}", file=sys.stderr)
            return 1
        print(f"  uploaded {uploaded} instance(s) to {args.vna_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
