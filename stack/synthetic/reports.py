"""Synthetic UK chest X-ray reports with identifiers planted at known offsets: the one generator.

Two callers, one writer: ``generate`` (reports for the checker's tests and benchmark) and the
demo cohort (``cohort.py``, one report per study, about that study's patient) both describe a
report as ``ReportContent`` (sections whose sentences may carry planted identifiers) and lay it
out with ``write_report``, which returns the parts as EMAP holds them (narrative, impression,
addenda), the text the report worker builds from them, and the offset of every planted value.

The report checker is judged on two numbers: recall on identifiers that are really there, and
flags on reports that are clean. Real reports cannot be used for either outside the hospital, so
this module writes realistic ones instead: clinical details, technique, comparison, findings with
measurements, vertebral levels and eponyms (Kerley B lines, Swan-Ganz catheters, Pancoast
tumours, Hodgkin's lymphoma...), impressions, addenda and a radiologist's sign-off, with study
dates and accession numbers that are not identifiers of the patient.

A known fraction of reports get one to three identifiers planted, in the variants reports use
("Mr Parkinson", "PARKINSON, John", "J. Parkinson", "01.02.1950", "NW12AB", "+44 (0)20 7946
0123", ...), and every planted span is returned, so tests can measure recall exactly. The patients
include surnames that are eponyms (Parkinson, Hodgkin, Hampton, Kerley, Swan, Westermark...) or
common words (White, Field, Little...), whose reports mention the eponym or word, so a clean
report is a real test of false positives.

Every identity is fake: names from built-in lists, phone numbers from Ofcom's ranges for drama
(never allocated), postcodes built from real outward codes with random inward codes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

from pixl_core.text.checker import (
    ADDRESS,
    DATE_OF_BIRTH,
    EMAIL,
    MRN,
    NAME,
    NHS_NUMBER,
    NHS_NUMBER_PATTERN,
    NOT_NAMES_ALONE,
    PHONE,
    PHONE_PATTERN,
    POSTCODE,
    POSTCODE_PATTERN,
    PatientIdentifiers,
    nhs_number_is_valid,
)
from pixl_ehr.emap import PART_SEPARATOR

Planted = tuple[str, int, int]  # (kind, start, end)


class SyntheticReport(NamedTuple):
    """One report: its text, its patient's identifiers, where identifiers were planted, its parts.

    ``text`` is the parts joined as the report worker joins EMAP's sections; ``planted`` holds
    ``(kind, start, end)`` offsets into it.
    """

    text: str
    identifiers: PatientIdentifiers
    planted: list[Planted]
    narrative: str
    impression: str
    addenda: tuple[str, ...]


# --- identities -------------------------------------------------------------------------------

# Eponyms and common words first: they are the hard cases for a checker.
_SURNAMES = (
    "Parkinson", "Hodgkin", "Hampton", "Kerley", "Swan", "Westermark", "Pancoast", "White",
    "Field", "Little", "Young", "Bell", "Ward", "Marsh", "Wood", "Smith", "Jones", "Taylor",
    "Williams", "Davies", "Evans", "Thomas", "Johnson", "Roberts", "Wright", "Robinson",
    "Thompson", "Hughes", "Edwards", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Turner",
    "Martin", "Cooper", "Khan", "Ahmed", "Begum", "Okafor", "Nguyen", "Kowalski", "O'Brien",
    "Smith-Jones", "McDonald", "Singh", "Chen", "Hussain", "Murphy", "Kelly", "Campbell",
    "Morris", "Rees", "Owen", "Parry", "Ng", "Adeyemi", "Fernandes", "Novak",
)  # fmt: skip
_GIVEN_MALE = (
    "John", "James", "David", "Michael", "Robert", "Peter", "Paul", "Mohammed", "Oliver",
    "George", "Harry", "Jack", "Thomas", "William", "Daniel", "Kwame", "Wei", "Arjun", "Mark",
    "Will", "Jean-Paul", "Tomasz", "Chidi",
)  # fmt: skip
_GIVEN_FEMALE = (
    "Mary", "Margaret", "Susan", "Sarah", "Elizabeth", "Jane", "Emma", "Olivia", "Amelia",
    "Grace", "Hope", "May", "Priya", "Fatima", "Aisha", "Siobhan", "Joy", "Rose", "Mei",
    "Agnieszka", "Ngozi",
)  # fmt: skip
_MIDDLE = ("Anne", "Louise", "Edward", "Alexander", "Rahul", "Marie", "Patrick")

# Staff names, disjoint from the patients' so a clean report never names its patient by chance.
_RADIOLOGISTS = (
    ("Imogen", "Castellano"), ("Tarquin", "Ellsworth"), ("Anjali", "Raghunathan"),
    ("Marcus", "Featherstone"), ("Beatrix", "Lindqvist"), ("Osagie", "Nwachukwu"),
)  # fmt: skip

_STREETS = (
    "Acacia", "Larkspur", "Thistlewood", "Marlowe", "Quenby", "Birchanger", "Foxglove",
    "Ravensbourne", "Wyndham", "Cobbold", "Amberley", "Kestrel", "Wisteria", "Holloway",
    "Station", "High", "Church", "Elm", "Cedar", "Windsor",
)  # fmt: skip
_STREET_TYPES = (
    ("Road", "Rd"), ("Street", "St"), ("Avenue", "Ave"), ("Lane", "Ln"), ("Close", "Cl"),
    ("Gardens", "Gdns"), ("Crescent", "Cres"), ("Terrace", "Terr"), ("Way", "Way"),
    ("Grove", "Gr"),
)  # fmt: skip
_LOCALITIES = ("Camden", "Kentish Town", "Holloway", "Hackney", "Peckham", "Chorlton", "Headingley")
_TOWNS = (
    ("London", ("NW1", "NW3", "N7", "N19", "WC1E", "E8", "SE15", "SW1A", "W1T", "EC1A")),
    ("Manchester", ("M1", "M13", "M21")),
    ("Leeds", ("LS1", "LS6")),
    ("Bristol", ("BS8", "BS1")),
    ("Croydon", ("CR0", "CR2")),
    ("Barnet", ("EN4", "EN5")),
)
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_TITLES_MALE = ("Mr",)
_TITLES_FEMALE = ("Mrs", "Ms", "Miss")

# --- report text ------------------------------------------------------------------------------

_EXAMS = ("XR CHEST PA", "XR CHEST AP (MOBILE)", "XR CHEST PA AND LATERAL", "CHEST X-RAY")
_CLINICAL = (
    "Known Parkinson's disease, recurrent falls. ?aspiration pneumonia.",
    "Hodgkin's lymphoma, on chemotherapy. Fever and neutropenia.",
    "Non-Hodgkin lymphoma. Restaging.",
    "Right shoulder pain radiating down the arm, weight loss. ?Pancoast tumour.",
    "ICU. Swan-Ganz catheter inserted. ?position.",
    "Cough for three weeks. ?infection.",
    "Increasing breathlessness and bilateral ankle oedema. ?LVF.",
    "Day 3 post CABG.",
    "Haemoptysis. 40 pack-year smoker.",
    "Pleuritic chest pain, raised D-dimer. ?PE.",
    "Pyrexia of unknown origin. Previous TB.",
    "Exacerbation of COPD. SpO2 88% on air.",
    "Fever, productive cough, raised CRP (145). WCC 15.2.",
    "Pre-operative assessment.",
    "Known Parkinson disease. Dysphagia, ?aspiration.",
    "Fall on the ward. Left chest wall pain.",
)
_TECHNIQUE = (
    "PA erect radiograph, 120 kVp, 2.5 mAs.",
    "AP supine mobile radiograph, 90 kVp.",
    "Single AP erect view, rotated to the right.",
    "PA and left lateral views.",
    "AP semi-erect mobile film; limited inspiration.",
)
_FINDINGS = (
    "The heart size is normal (CTR 0.46).",
    "The heart is enlarged (CTR 0.55).",
    "Heart size at the upper limit of normal; CTR 0.50 on this AP film.",
    "There is a 12 mm well-defined nodule in the left mid zone.",
    "A 10 x 12 mm nodule projects over the right 4th anterior rib.",
    "There is upper lobe venous diversion with septal (Kerley B) lines at both bases.",
    "Kerley B lines are present at the costophrenic angles.",
    "A Swan-Ganz catheter has been inserted via the left subclavian vein with its tip over the "
    "right interlobar pulmonary artery.",
    "The Swan-Ganz catheter tip is approximately 2 cm beyond the right hilum.",
    "Wedge-shaped peripheral opacity at the right base, possibly a Hampton hump.",
    "Regional oligaemia in the left upper zone (Westermark sign).",
    "Calcified Ghon focus in the right mid zone, in keeping with old TB.",
    "A Morgagni hernia is seen at the right cardiophrenic angle.",
    "Small Bochdalek hernia at the left posterior costophrenic angle.",
    "Interposition of bowel between the liver and the right hemidiaphragm (Chilaiditi sign).",
    "Right apical 38 mm soft tissue mass with destruction of the posterior 2nd rib, suspicious "
    "for a Pancoast tumour.",
    "Mediastinal widening in keeping with the known Hodgkin's lymphoma.",
    "Bulky right paratracheal nodes, likely related to the non-Hodgkin lymphoma.",
    "Old healed fractures of the left 5th to 7th ribs.",
    "Wedge compression of T12 and L1, unchanged.",
    "Degenerative change in the thoracic spine, most marked at T8-T9.",
    "Cervical rib at C7 on the right.",
    "ETT tip 4 cm above the carina.",
    "NG tube tip is below the left hemidiaphragm.",
    "Right IJ CVC tip projects over the SVC.",
    "Left PICC tip at the cavoatrial junction.",
    "Dual-chamber pacemaker with leads in the right atrium and ventricle.",
    "Median sternotomy wires are intact.",
    "No pneumothorax.",
    "Small left pleural effusion blunting the costophrenic angle.",
    "Patchy consolidation in the right lower zone with air bronchograms.",
    "The lungs are hyperexpanded with flattened hemidiaphragms (11 posterior ribs visible).",
    "Bilateral perihilar airspace shadowing.",
    "Background emphysema with bullous change at the right apex.",
    "The mediastinal contours and hila are unremarkable.",
    "No acute bony abnormality.",
    "White cell count raised; appearances may represent early infection.",
    "Little change since the previous film.",
    "The lung fields are otherwise clear.",
    "Rounded 25 mm opacity at the left hilum.",
    "Calcified pleural plaques, in keeping with previous asbestos exposure.",
    "Mach band along the left heart border; this is not a pneumothorax.",
    "Calcified 5 mm granuloma in the left upper zone.",
    "Subsegmental atelectasis at the left base.",
    "Previous MRI thoracic spine (T2 weighted) noted; no correlate on this film.",
    "Left apical pneumothorax with a 5 mm rim of air and a visible lung edge.",
    "Marked cardiomegaly; the young age of the patient is noted.",
    "Skin fold projects over the right mid zone.",
)
_IMPRESSIONS = (
    "Normal chest radiograph.",
    "Right lower lobe consolidation in keeping with pneumonia. Suggest follow-up radiograph in "
    "6 weeks to confirm resolution.",
    "Features of pulmonary oedema, in keeping with congestive cardiac failure.",
    "12 mm left mid zone nodule. CT chest recommended.",
    "Lines and tubes satisfactorily positioned. No pneumothorax.",
    "Swan-Ganz catheter tip peripherally sited: consider withdrawing by 2 cm.",
    "Right apical mass, highly suspicious for a Pancoast (superior sulcus) tumour. Urgent CT.",
    "Hyperexpanded lungs in keeping with COPD. No acute change.",
    "Stable appearances of known Hodgkin's lymphoma.",
    "Possible pulmonary infarct (Hampton hump); CTPA advised.",
)
_ADDENDA = (
    "Referred on the lung cancer two-week-wait pathway. CT chest booked.",
    "CT chest reviewed: the nodule measures 10 x 12 mm. Fleischner guidance applies.",
    "Discussed with the ICU registrar at the time of reporting.",
    "Comparison with the outside film confirms stability over 2 years.",
)


def _ofcom_phone(rng: random.Random) -> str:
    """A number from Ofcom's drama ranges, never allocated to a real line."""
    kind = rng.randrange(4)
    tail = f"{rng.randrange(1000):03d}"
    if kind == 0:
        return f"020 7946 0{tail}"
    if kind == 1:
        return f"07700 900{tail}"
    if kind == 2:
        return f"0161 496 0{tail}"
    return f"0117 496 0{tail}"


def _nhs_number(rng: random.Random) -> str:
    while True:
        digits = str(rng.choice((4, 6, 7))) + f"{rng.randrange(10**9):09d}"
        if nhs_number_is_valid(digits):
            return digits


def _postcode(rng: random.Random, districts: tuple[str, ...]) -> str:
    inward = rng.choice(_INWARD_LETTERS) + rng.choice(_INWARD_LETTERS)
    return f"{rng.choice(districts)} {rng.randrange(1, 10)}{inward}"


class _Patient(NamedTuple):
    given: str
    middle: str | None
    family: str
    title: str
    dob: date
    mrn: str
    nhs: str
    house: int
    street: str
    street_type: tuple[str, str]
    locality: str | None
    town: str
    postcode: str
    phone: str

    @property
    def street_line(self) -> str:
        return f"{self.house} {self.street} {self.street_type[0]}"

    @property
    def address(self) -> str:
        lines = [self.street_line, *([self.locality] if self.locality else []), self.town]
        return ", ".join(lines) + f" {self.postcode}"


def _patient(rng: random.Random) -> _Patient:
    male = rng.random() < 0.5
    town, districts = rng.choice(_TOWNS)
    return _Patient(
        given=rng.choice(_GIVEN_MALE if male else _GIVEN_FEMALE),
        middle=rng.choice(_MIDDLE) if rng.random() < 0.3 else None,
        family=rng.choice(_SURNAMES),
        title=rng.choice(_TITLES_MALE if male else _TITLES_FEMALE),
        dob=date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 75)),
        mrn=f"40{rng.randrange(10**6):06d}",
        nhs=_nhs_number(rng),
        house=rng.randrange(1, 200),
        street=rng.choice(_STREETS),
        street_type=rng.choice(_STREET_TYPES),
        locality=rng.choice(_LOCALITIES) if rng.random() < 0.4 else None,
        town=town,
        postcode=_postcode(rng, districts),
        phone=_ofcom_phone(rng),
    )


def _identifiers(rng: random.Random, p: _Patient) -> PatientIdentifiers:
    """The EHR's record of the patient; some fields are missing, as they are in real records."""
    full = " ".join(x for x in (p.given, p.middle, p.family) if x)
    if rng.random() < 0.2:
        full = f"{p.family.upper()}, {p.given}"

    def maybe(value: str) -> str | None:
        return None if rng.random() < 0.05 else value

    return PatientIdentifiers(
        name=full,
        given_name=p.given,
        family_name=p.family,
        mrn=p.mrn,
        nhs_number=rng.choice((p.nhs, f"{p.nhs[:3]} {p.nhs[3:6]} {p.nhs[6:]}")),
        date_of_birth=p.dob.isoformat(),
        address=p.address,
        # The postcode is often only in the address; the checker must find it there too.
        postcode=p.postcode if rng.random() < 0.7 else None,
        phone=maybe(p.phone),
    )


# --- writing a report -------------------------------------------------------------------------

# A piece of a sentence is plain text, or ``(kind, value)``: a value planted on purpose, whose
# offsets the report records under the checker's ``kind``.
Piece = str | tuple[str, str]
Sentence = list[Piece]


@dataclass(frozen=True)
class ReportContent:
    """What one report says, section by section; any sentence may carry planted identifiers.

    ``write_report`` lays it out as EMAP holds a report: the narrative (``header`` lines, the
    examination, ``details``, clinical details, technique, comparison, findings and the
    radiologist's sign-off, one a line), the impression, then each addendum.
    """

    exam: str
    clinical: str
    findings: Sequence[Sentence]
    impression: Sentence
    radiologist: str  # "Given Family"
    reported_at: datetime
    header: Sequence[Sentence] = ()  # lines above the examination, e.g. a patient banner
    details: Sequence[str] = ()  # lines between the examination and the clinical details
    technique: str | None = None
    comparison: str | None = None
    addenda: Sequence[Sentence] = ()

    def narrative(self) -> list[Sentence]:
        """The narrative's lines, in reading order."""
        lines: list[Sentence] = [*self.header, [self.exam], *([d] for d in self.details)]
        lines.append([f"Clinical details: {self.clinical}"])
        if self.technique is not None:
            lines.append([f"Technique: {self.technique}"])
        if self.comparison is not None:
            lines.append([self.comparison])
        findings: Sentence = ["Findings: "]
        for number, sentence in enumerate(self.findings):
            findings += [" " if number else "", *sentence]
        lines.append(findings)
        lines.append(
            [
                f"Reported by Dr {self.radiologist}, Consultant Radiologist, "
                f"{self.reported_at:%d/%m/%Y %H:%M}."
            ]
        )
        return lines


class _Text:
    """A report being written: appends pieces and remembers where planted values went."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.length = 0
        self.planted: list[Planted] = []

    def add(self, piece: str) -> None:
        self.pieces.append(piece)
        self.length += len(piece)

    def part(self, lines: list[Sentence]) -> tuple[int, int]:
        """Write the lines of one part, one a line; return where the part starts and ends."""
        start = self.length
        for number, line in enumerate(lines):
            if number:
                self.add("\n")
            for piece in line:
                if isinstance(piece, tuple):
                    kind, value = piece
                    self.planted.append((kind, self.length, self.length + len(value)))
                    self.add(value)
                elif piece:
                    self.add(piece)
        return start, self.length


def write_report(content: ReportContent, identifiers: PatientIdentifiers) -> SyntheticReport:
    """Lay ``content`` out as EMAP's parts and record the offset of every planted value.

    The offsets are into ``SyntheticReport.text``, the parts joined as the report worker joins
    them (``pixl_ehr.emap.PART_SEPARATOR``), so they are exactly what the checker must find.
    """
    out = _Text()
    bounds = []
    for number, part in enumerate(
        [content.narrative(), [content.impression], *([a] for a in content.addenda)]
    ):
        if number:
            out.add(PART_SEPARATOR)
        bounds.append(out.part(part))
    text = "".join(out.pieces)
    narrative, impression, *addenda = (text[start:end] for start, end in bounds)
    return SyntheticReport(text, identifiers, out.planted, narrative, impression, tuple(addenda))


# --- planting ---------------------------------------------------------------------------------


def _name_variants(p: _Patient) -> list[tuple[str, str, str]]:
    """(before, planted, after) variants of the patient's name the checker must find."""
    g, f, initial = p.given, p.family, p.given[0]
    variants = [
        ("", f"{g} {f}", ""),
        (f"{p.title} ", f, ""),
        (f"{p.title.upper()} ", f.upper(), ""),
        ("", f"{f.upper()}, {g}", ""),
        ("", f"{f}, {initial}.", ""),
        ("", f"{initial}. {f}", ""),
        ("", f"{initial} {f}", ""),
        ("", f"{g.upper()} {f.upper()}", ""),
        (f"{p.title} ", f"{g} {f}", ""),
    ]
    if p.middle:
        variants.append(("", f"{g} {p.middle[0]}. {f}", ""))
    if len(f) >= 3 and f.lower() not in NOT_NAMES_ALONE and "-" not in f and "'" not in f:
        variants.append(("", f, ""))  # a distinctive surname on its own
    return variants


def _date_variants(day: date) -> list[str]:
    month, mon = day.strftime("%B"), day.strftime("%b")
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(day.day, "th")
    return [
        day.strftime("%d/%m/%Y"),
        f"{day.day}/{day.month}/{day.year}",
        day.strftime("%d-%m-%Y"),
        day.strftime("%d.%m.%Y"),
        f"{day.day} {mon} {day.year}",
        f"{day.day}{suffix} {month} {day.year}",
        f"{day.day:02d} {mon} {day.year}",
        f"{month} {day.day}, {day.year}",
        day.isoformat(),
        day.strftime("%Y%m%d"),
        f"{day.day:02d}-{mon}-{day.year}",
    ]


def _phone_variants(phone: str) -> list[str]:
    digits = phone.replace(" ", "")
    national = digits[1:]
    groups = phone.split(" ")
    return [
        phone,
        digits,
        "-".join(groups),
        f"+44 {' '.join([groups[0][1:], *groups[1:]])}",
        f"+44 (0){groups[0][1:]} {' '.join(groups[1:])}",
        f"+44{national}",
        f"({groups[0]}) {' '.join(groups[1:])}",
    ]


def _patient_sentence(rng: random.Random, kind: str, p: _Patient) -> Sentence:
    if kind == NAME:
        before, value, after = rng.choice(_name_variants(p))
        return rng.choice(
            (
                ["Patient: ", before, (NAME, value), after, "."],
                ["Comparison is made with ", before, (NAME, value), after, "'s previous film."],
                ["Result discussed with ", before, (NAME, value), after, " by telephone."],
                [before, (NAME, value), after, " attended for a repeat film."],
            )
        )
    if kind == MRN:
        return rng.choice((["MRN: ", (MRN, p.mrn), "."], ["Hospital number ", (MRN, p.mrn), "."]))
    if kind == NHS_NUMBER:
        n = p.nhs
        value = rng.choice((n, f"{n[:3]} {n[3:6]} {n[6:]}", f"{n[:3]}-{n[3:6]}-{n[6:]}"))
        return rng.choice(
            (["NHS number: ", (NHS_NUMBER, value), "."], ["NHS No ", (NHS_NUMBER, value)])
        )
    if kind == DATE_OF_BIRTH:
        value = rng.choice(_date_variants(p.dob))
        return rng.choice(
            (["DOB: ", (DATE_OF_BIRTH, value), "."], ["Born ", (DATE_OF_BIRTH, value), "."])
        )
    if kind == ADDRESS:
        street = rng.choice(
            (
                p.street_line,
                f"{p.house} {p.street} {p.street_type[1]}",
                p.street_line.upper(),
                f"{p.house}, {p.street} {p.street_type[0]}",
            )
        )
        if rng.random() < 0.5:
            return ["Home address: ", (ADDRESS, street), "."]
        town = f"{street}, {p.locality}, {p.town}" if p.locality else f"{street}, {p.town}"
        return ["Lives at ", (ADDRESS, town), " ", (POSTCODE, p.postcode), "."]
    if kind == POSTCODE:
        value = rng.choice((p.postcode, p.postcode.replace(" ", ""), p.postcode.lower()))
        return ["Postcode ", (POSTCODE, value), "."]
    if kind == PHONE:
        value = rng.choice(_phone_variants(p.phone))
        return rng.choice((["Contact ", (PHONE, value), "."], ["Tel: ", (PHONE, value)]))
    raise ValueError(kind)


def _pattern_sentence(rng: random.Random, kind: str, p: _Patient) -> Sentence:
    """Someone else's identifier: the generic patterns must find it."""
    if kind == NHS_NUMBER_PATTERN:
        other = p.nhs
        while other == p.nhs:
            other = _nhs_number(rng)
        value = rng.choice((other, f"{other[:3]} {other[3:6]} {other[6:]}"))
        return ["Next of kin NHS number ", (NHS_NUMBER_PATTERN, value), "."]
    if kind == POSTCODE_PATTERN:
        other = p.postcode
        while other.replace(" ", "") == p.postcode.replace(" ", ""):
            other = _postcode(rng, rng.choice(_TOWNS)[1])
        return ["GP surgery postcode ", (POSTCODE_PATTERN, other), "."]
    if kind == PHONE_PATTERN:
        other = p.phone
        while other == p.phone:
            other = _ofcom_phone(rng)
        return ["Call the referrer on ", (PHONE_PATTERN, other), "."]
    if kind == EMAIL:
        given, family = rng.choice(_RADIOLOGISTS)
        value = f"{given.lower()}.{family.lower()}@nhs.net"
        return ["Copy to ", (EMAIL, value), "."]
    raise ValueError(kind)


_PATIENT_PLANT = (NAME, NAME, NAME, MRN, NHS_NUMBER, DATE_OF_BIRTH, ADDRESS, POSTCODE, PHONE)
_PATTERN_PLANT = (NHS_NUMBER_PATTERN, POSTCODE_PATTERN, PHONE_PATTERN, EMAIL)


def _study_time(rng: random.Random) -> datetime:
    return datetime(2018, 1, 1, 8) + timedelta(minutes=rng.randrange(60 * 24 * 365 * 7))


def _random_content(rng: random.Random, planted_sentences: list[Sentence]) -> ReportContent:
    """A report drawn from the lists above, with ``planted_sentences`` among its findings."""
    when = _study_time(rng)
    radiologist = " ".join(rng.choice(_RADIOLOGISTS))
    exam = rng.choice(_EXAMS)
    examined = f"Examination date: {when:%d/%m/%Y %H:%M}. Accession: RRV{rng.randrange(10**8):08d}."
    clinical = rng.choice(_CLINICAL)
    technique = rng.choice(_TECHNIQUE)
    earlier = when - timedelta(days=rng.randrange(30, 900))
    comparison = rng.choice(
        (
            f"Comparison: {earlier:%d/%m/%Y}.",
            "No previous imaging available for comparison.",
            f"Comparison is made with the CT of {earlier:%d %b %Y}.",
            f"Comparison: {earlier:%Y-%m-%d}.",
        )
    )
    findings: list[Sentence] = [[s] for s in rng.sample(_FINDINGS, rng.randrange(4, 9))]
    for sentence in planted_sentences:
        # drawn as a position after the "Findings:" label, as it always has been
        findings.insert(rng.randrange(1, len(findings) + 2) - 1, sentence)
    impression = rng.choice(_IMPRESSIONS)
    addenda: list[Sentence] = []
    if rng.random() < 0.3:
        later = when + timedelta(hours=rng.randrange(2, 72))
        addenda.append([f"ADDENDUM {later:%d/%m/%Y %H:%M}: {rng.choice(_ADDENDA)}"])
    return ReportContent(
        exam=exam,
        clinical=clinical,
        findings=findings,
        impression=[impression],
        radiologist=radiologist,
        reported_at=when + timedelta(hours=3),
        details=[examined],
        technique=technique,
        comparison=comparison,
        addenda=addenda,
    )


def generate(
    n: int, seed: int = 0, *, planted_fraction: float = 0.3, pattern_fraction: float = 0.1
) -> list[SyntheticReport]:
    """``n`` reports from a seeded generator (same ``n`` and ``seed``, same reports).

    A ``planted_fraction`` of reports carry one to three of the patient's own identifiers; a
    further ``pattern_fraction`` carry someone else's (kinds ``*_pattern`` and ``email``). The
    rest are clean: no finding is expected in them.
    """
    rng = random.Random(seed)
    reports: list[SyntheticReport] = []
    for _ in range(n):
        patient = _patient(rng)
        identifiers = _identifiers(rng, patient)
        draw = rng.random()
        sentences: list[Sentence] = []
        if draw < planted_fraction:
            kinds = rng.sample(_PATIENT_PLANT, rng.randrange(1, 4))
            kinds = [k for k in kinds if _available(k, identifiers)] or [MRN]
            sentences = [_patient_sentence(rng, kind, patient) for kind in kinds]
        elif draw < planted_fraction + pattern_fraction:
            sentences = [_pattern_sentence(rng, rng.choice(_PATTERN_PLANT), patient)]
        reports.append(write_report(_random_content(rng, sentences), identifiers))
    return reports


def _available(kind: str, ids: PatientIdentifiers) -> bool:
    """Only plant what the checker is told about (a missing phone cannot be looked for)."""
    return kind != PHONE or ids.phone is not None
