"""The checker's variant corpus: identifiers written the way real reports, typists and OCR write
them, and clean texts that look like names but are not, each with an answer key.

The report generator (``reports.py``) plants identifiers in the forms a careful typist uses. The
identifier checker is now the gate for three doors (reports, DICOM descriptors, text read from
pixels), and two of them are noisy. This module writes what goes wrong in practice:

Identifiers that must be found (``VariantDoc.planted``: ``(kind, start, end)``):

- ``typo``: one letter of the surname substituted, dropped, doubled or two letters swapped
  ("Parkisnon", "Thompon"), after a title, a given name or an initial, or on its own when the
  surname is distinctive.
- ``ocr``: what OCR makes of a printed surname: 0/O, 1/l/I, 5/S, 8/B, rn/m, vv/w, cl/d, c/e.
- ``broken``: a surname broken across a line ("Parkin-\\nson", "PARKIN\\nSON") or hyphenated.
- ``nickname``: the given name as people call each other ("Bill Okafor" for William,
  "Peggy White" for Margaret), and the formal name when the record holds the short one.
- ``accents``: accents folded away ("Jose Nunez", "MUELLER" for Müller) or added ("Zoë" for a
  record that says Zoe).
- ``spelling``: a spelling variant of the same name ("Muhammad" for Mohammed, "MacDonald").
- ``mrn_grouped``: the MRN with spaces or dashes inside, or without its leading zero.
- ``nhs_grouped``: the NHS number with dots or other groupings (4-3-3, 5-5, 3-7).
- ``dob_spaced``: the date of birth with spaces around its separators (OCR, typed forms).
- ``birthday_with_age``: an age and the birthday without its year ("aged 74, birthday 1st
  February"): together they give the date of birth.
- ``descriptor``: a DICOM description carrying the surname, the MRN or the accession number
  ("CXR PA SMITH", "XR CHEST ACC1234567").
- ``ocr_banner``: the text burned into an image's corner, as OCR reads it.

Clean texts (no identifier; ``planted`` is empty) whose patient's surname is an eponym or a
common word used in its ordinary sense, sometimes one letter away from the patient's name:
"Graves' disease" for a patient called Graves, "the angle of Louis" for Louis, "tetralogy of
Fallot" for a patient called Fallon, "Chest wall" for Wall, "CHEST X RAY" for Ray; plus plain
examination names as descriptors and benign burned-in markers.

The generator shares no table with the checker (its own nicknames, spellings and confusions, from
how names are written and misread), so the scores are not the checker grading itself. Seeded:
same ``n`` and ``seed``, same corpus.

``score(docs, check)`` computes recall (a planted span counts as found when findings cover every
letter and digit of it) and the false-positive rate (clean texts with any finding).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pixl_core.text.checker import (
    ACCESSION_NUMBER,
    DATE_OF_BIRTH,
    MRN,
    NAME,
    NHS_NUMBER,
    NHS_NUMBER_PATTERN,
    CheckResult,
    PatientIdentifiers,
    nhs_number_is_valid,
)
from stack.synthetic.reports import Sentence, _random_content, write_report

Planted = tuple[str, int, int]


@dataclass(frozen=True)
class VariantDoc:
    """One text, its patient's identifiers, the answer key and what kind of case it is."""

    text: str
    identifiers: PatientIdentifiers
    planted: list[Planted]
    variant: str  # e.g. "typo", "clean_eponym"
    door: str  # "report", "descriptor" or "ocr"


# --- people -----------------------------------------------------------------------------------

# Formal given name -> what people are called (the generator's own list, from usage).
_NICKNAMES = {
    "William": ("Bill", "Billy", "Will", "Liam"),
    "Robert": ("Bob", "Rob", "Bobby", "Robbie"),
    "Margaret": ("Maggie", "Peggy", "Meg", "Marge"),
    "Elizabeth": ("Liz", "Beth", "Betty", "Lizzie"),
    "Richard": ("Dick", "Rick", "Rich", "Ricky"),
    "James": ("Jim", "Jimmy", "Jamie"),
    "Katherine": ("Kate", "Kathy", "Katie"),
    "Michael": ("Mike", "Mick", "Mickey"),
    "Jennifer": ("Jen", "Jenny"),
    "Anthony": ("Tony",),
    "Patricia": ("Pat", "Patsy", "Trish"),
    "Edward": ("Ted", "Eddie", "Ed", "Ned"),
    "Alexander": ("Alex", "Sandy", "Xander"),
    "Christopher": ("Chris", "Kit"),
    "Thomas": ("Tom", "Tommy"),
    "Deborah": ("Debbie", "Deb"),
    "Rebecca": ("Becky", "Becca"),
    "Jonathan": ("Jon", "Jonny"),
    "Susan": ("Sue", "Susie"),
    "Catherine": ("Cathy", "Kate", "Cat"),
}
_PLAIN_GIVEN = ("Chidi", "Priya", "Tomasz", "Aisha", "Kwame", "Ngozi", "Oliver", "Fatima")

_DISTINCTIVE = (
    "Okafor", "Kowalski", "Thompson", "Robinson", "Fernandes", "Harrington", "Castellanos",
    "Adeyemi", "Nwosu", "Lindqvist", "Ramaswamy", "Pemberton", "Whitfield", "Donaldson",
    "Richardson", "Oyelaran", "Blackwood", "Abernethy", "Mortimer", "Hutchinson", "Jankowski",
    "Schofield", "Merriweather", "Szymanski", "Chakraborty", "Smith", "Jones", "Patel",
)  # fmt: skip
# (record, how a text writes it): accents folded or added.
_ACCENTED = (
    (("Zoë", "Müller"), ("Zoe", "Muller")),
    (("José", "Núñez"), ("Jose", "Nunez")),
    (("François", "Lefèvre"), ("Francois", "Lefevre")),
    (("Søren", "Sørensen"), ("Soren", "Sorensen")),
    (("Antonín", "Dvořák"), ("Antonin", "Dvorak")),
    (("Zoran", "Kovačević"), ("Zoran", "Kovacevic")),
    (("Renee", "Gomez"), ("Renée", "Gómez")),
    (("Noel", "Celik"), ("Noël", "Çelik")),
    (("Jürgen", "Schröder"), ("Juergen", "Schroeder")),
    (("Ines", "Muller"), ("Inès", "Müller")),
)
# (record, text) spelling variants of one name.
_SPELLINGS = (
    ("Mohammed", "Muhammad"), ("Mohammed", "Mohamed"), ("Muhammad", "Mohammad"),
    ("McDonald", "MacDonald"), ("Macdonald", "McDonald"), ("Thomson", "Thompson"),
    ("Phillips", "Philips"), ("Stephen", "Steven"), ("Catherine", "Katherine"),
    ("Sean", "Shaun"), ("Smyth", "Smith"), ("Reid", "Reed"), ("Gray", "Grey"),
    ("Aleksander", "Alexander"), ("Yusuf", "Yousef"), ("Hussain", "Hussein"),
)  # fmt: skip

# Eponym surnames and clean sentences using the eponym (the patient has that surname).
_EPONYM_SENTENCES = {
    "Graves": ("Known Graves' disease with thyroid eye disease.", "Graves disease, treated."),
    "Louis": ("The carina lies at the level of the angle of Louis.",),
    "Willis": ("Known aneurysm of the circle of Willis on the previous CT head.",),
    "Douglas": ("Free fluid in the pouch of Douglas on the recent ultrasound.",),
    "Fallot": ("Repaired tetralogy of Fallot; sternotomy wires intact.",),
    "Barrett": ("Barrett's oesophagus under surveillance.", "Known Barrett oesophagus."),
    "Baker": ("Incidental Baker's cyst on the knee ultrasound.",),
    "Colles": ("Old Colles' fracture of the left wrist noted on the scout.",),
    "Paget": ("Paget's disease of the right hemipelvis, unchanged.",),
    "Crohn": ("Background of Crohn's disease.", "Crohn disease on biologics."),
    "Addison": ("Addison's disease on hydrocortisone.",),
    "Cushing": ("Known Cushing's syndrome.",),
    "Wilson": ("Wilson's disease, liver transplant 2010.",),
    "Parkinson": ("Wolff-Parkinson-White syndrome.", "Known Parkinson's disease."),
    "White": ("Wolff-Parkinson-White syndrome on the ECG.",),
    "Hodgkin": ("Non-Hodgkin lymphoma, restaging.", "Hodgkin's disease in remission."),
    "Kerley": ("Septal lines (Kerley B) at both bases.", "Kerley A lines in the upper zones."),
    "Pancoast": ("Right apical mass: ?Pancoast tumour.",),
    "Hampton": ("Peripheral wedge opacity, ?Hampton's hump.",),
    "Bell": ("Bell's palsy last year.",),
    "Meckel": ("Meckel's diverticulum resected as a child.",),
    "Hill": ("Old Hill-Sachs lesion of the left humeral head.",),
    "Down": ("Down syndrome; repaired AVSD.", "Down's syndrome."),
    "Swan": ("Swan-Ganz catheter tip in the right PA.",),
    "Harrington": ("Harrington rods in the thoracic spine, intact.",),
    "Foley": ("Foley catheter in situ.",),
    "Hickman": ("Hickman line tip at the cavoatrial junction.",),
}
# A patient whose name is one letter away from an eponym in the text.
_NEAR_EPONYMS = (
    ("Coles", "Colles"), ("Fallon", "Fallot"), ("Kerly", "Kerley"), ("Barratt", "Barrett"),
    ("Pagett", "Paget"), ("Bakker", "Baker"), ("Parkison", "Parkinson"), ("Wallis", "Willis"),
    ("Hamptom", "Hampton"), ("Pancost", "Pancoast"), ("Harington", "Harrington"),
    ("Hickmann", "Hickman"), ("Addisson", "Addison"), ("Cushings", "Cushing"),
)  # fmt: skip
# Common-word surnames and clean sentences using the word in its ordinary sense.
_COMMON_SENTENCES = {
    "Wall": ("Chest wall intact.", "Wall thickening of the oesophagus is noted."),
    "Cage": ("Rib cage intact.", "Cage appears normal."),
    "Swallow": ("Barium swallow advised.", "Swallow assessment is pending."),
    "Long": ("Long segment of collapse.", "Long lines in situ."),
    "Bone": ("Bone density is reduced.", "Bone islands in the humeral heads."),
    "Field": ("Lung fields clear.", "Field of view includes the upper abdomen."),
    "Little": ("Little change since the previous film.", "Little air in the stomach."),
    "Young": ("Young patient; consider infection.",),
    "Stone": ("Stone in the gallbladder incidentally noted.",),
    "Sharp": ("Sharp costophrenic angles.", "Sharp cardiac borders."),
    "Clear": ("Clear lungs.", "Clear costophrenic angles bilaterally."),
    "Lowe": ("Lower zone consolidation.", "Lower lobe collapse."),
    "Power": ("Power injector used for the contrast.",),
    "Best": ("Best seen on the lateral view.",),
    "Green": ("Green sputum for three days.",),
    "Brown": ("Brown sputum; ?infection.",),
    "Ray": ("Chest X Ray reviewed.", "X-Ray department film."),
    "Gray": ("Gray scale windowing adjusted.",),
    "Mass": ("Mass effect on the trachea.",),
    "Cross": ("Cross-sectional imaging is advised.",),
    "Hope": ("Hope for improvement on the repeat film.",),
    "Marsh": ("Marsh grade unknown.",),
    "Frost": ("Frosted glass appearance; ?ground glass.",),
    "Rose": ("Rose from 0.45 to 0.55.",),
}
_TITLES = ("Mr", "Mrs", "Ms", "Dr", "Miss")

# What OCR makes of printed letters (from tesseract and scanned-form errors).
_OCR_SINGLE = {
    "O": "0", "o": "0", "I": "1", "l": "1", "i": "1", "S": "5", "s": "5", "B": "8", "Z": "2",
    "e": "c", "c": "e", "G": "6", "g": "9",
}  # fmt: skip
_OCR_MULTI = {"m": "rn", "M": "RN", "w": "vv", "W": "VV", "d": "cl", "D": "CI", "h": "li"}

_EXAMS = (
    "XR CHEST PA", "CHEST AP SUPINE", "CHEST PA/LAT", "XR CHEST PORTABLE", "CHEST X RAY",
    "THORAX PA", "CHEST AP ERECT", "DX CHEST 1 VIEW", "CR CHEST PA 2 VIEWS", "CHEST LAT LEFT",
    "CXR PA", "CHEST AP MOBILE", "XR THORAX AP SEMI-ERECT", "Chest PA", "PA", "AP", "LATERAL",
    "CHEST PA INSP", "CHEST PA EXP", "THORAX AP BEDSIDE", "CHEST 2V", "XR CHEST (PA AND LAT)",
)  # fmt: skip
_MARKERS = ("L", "R", "PA ERECT", "AP SUPINE", "PORTABLE", "MOBILE", "INSP", "LT", "RT", "LAT")


@dataclass
class _Person:
    given: str
    family: str
    title: str
    dob: date
    mrn: str
    nhs: str
    accession: str
    record_given: str = ""
    record_family: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def identifiers(self, rng: random.Random) -> PatientIdentifiers:
        given = self.record_given or self.given
        family = self.record_family or self.family
        name = rng.choice((f"{given} {family}", f"{family.upper()}^{given}", f"{family}, {given}"))
        return PatientIdentifiers(
            name=name,
            given_name=given,
            family_name=family,
            mrn=self.mrn,
            nhs_number=self.nhs,
            date_of_birth=self.dob.isoformat(),
            accession_number=self.accession,
        )


def _nhs(rng: random.Random) -> str:
    while True:
        digits = str(rng.choice((4, 6, 7))) + f"{rng.randrange(10**9):09d}"
        if nhs_number_is_valid(digits):
            return digits


def _person(rng: random.Random, family: str, given: str | None = None) -> _Person:
    formal = rng.choice(list(_NICKNAMES) + list(_PLAIN_GIVEN))
    mrn = rng.choice((f"0{rng.randrange(10**7):07d}", f"40{rng.randrange(10**6):06d}"))
    return _Person(
        given=given or formal,
        family=family,
        title=rng.choice(_TITLES),
        dob=date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 75)),
        mrn=mrn,
        nhs=_nhs(rng),
        accession=rng.choice((f"ACC{rng.randrange(10**7):07d}", f"RRV{rng.randrange(10**8):08d}")),
    )


# --- name variants ----------------------------------------------------------------------------


def _typo(rng: random.Random, word: str) -> str:
    """One edit away: substitute, drop, double, or swap two neighbours (not the first letter)."""
    while True:
        i = rng.randrange(1, len(word))
        kind = rng.randrange(4)
        if kind == 0:
            letter = rng.choice("aeiounrstlm")
            out = word[:i] + (letter.upper() if word[i].isupper() else letter) + word[i + 1 :]
        elif kind == 1:
            out = word[:i] + word[i + 1 :]
        elif kind == 2:
            out = word[:i] + word[i] + word[i:]
        else:
            if i + 1 >= len(word):
                continue
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if out.lower() != word.lower():
            return out


def _ocr(rng: random.Random, word: str) -> str:
    """One or two OCR confusions."""
    out = word
    for _ in range(rng.choice((1, 1, 2))):
        spots = [i for i, ch in enumerate(out) if ch in _OCR_SINGLE or ch in _OCR_MULTI]
        if not spots:
            break
        i = rng.choice(spots)
        ch = out[i]
        new = _OCR_MULTI[ch] if ch in _OCR_MULTI and rng.random() < 0.6 else _OCR_SINGLE.get(ch)
        if new is None:
            new = _OCR_MULTI[ch]
        out = out[:i] + new + out[i + 1 :]
    return out


def _broken(rng: random.Random, word: str) -> str:
    cut = rng.randrange(2, len(word) - 1)
    joint = rng.choice(("-\n", "-\n", "\n", "- \n", "-"))
    return word[:cut] + joint + word[cut:]


def _with_context(
    rng: random.Random, person: _Person, surname: str, *, alone_ok: bool, given: str | None = None
) -> tuple[str, str, str]:
    """(before, planted, after): the surname with a title, a given name or initial, or alone."""
    given = given or person.given
    choices = [
        (f"{person.title} ", surname, ""),
        ("", f"{given} {surname}", ""),
        ("", f"{given[0]}. {surname}", ""),
        ("", f"{surname.upper()}, {given}", ""),
        (f"{person.title.upper()} ", surname.upper(), ""),
    ]
    if alone_ok:
        choices += [("", surname, ""), ("", surname.upper(), "")]
    return rng.choice(choices)


_REPORT_FRAMES = (
    ("Patient: ", "."),
    ("Comparison is made with ", "'s previous film."),
    ("Result discussed with ", " by telephone."),
    ("", " attended for a repeat film."),
    ("Film labelled ", " on the plate."),
)


def _report_doc(
    rng: random.Random, ids: PatientIdentifiers, sentences: list[Sentence], variant: str
) -> VariantDoc:
    report = write_report(_random_content(rng, sentences), ids)
    return VariantDoc(report.text, ids, list(report.planted), variant, "report")


def _name_sentence(before: str, value: str, after: str, rng: random.Random) -> Sentence:
    left, right = rng.choice(_REPORT_FRAMES)
    return [left, before, (NAME, value), after, right]


def _name_doc(rng: random.Random, variant: str) -> VariantDoc:
    if variant == "accents":
        (rg, rf), (tg, tf) = rng.choice(_ACCENTED)
        person = _person(rng, rf, rg)
        person.record_given, person.record_family = rg, rf
        before, value, after = _with_context(rng, person, tf, alone_ok=True, given=tg)
        if rng.random() < 0.3:
            value = value.upper()
    elif variant == "spelling":
        record, text = rng.choice(_SPELLINGS)
        if rng.random() < 0.5:  # a given name
            person = _person(rng, rng.choice(_DISTINCTIVE), record)
            before, value, after = "", f"{text} {person.family}", ""
        else:
            person = _person(rng, record)
            before, value, after = _with_context(rng, person, text, alone_ok=False)
    elif variant == "nickname":
        formal = rng.choice(list(_NICKNAMES))
        nick = rng.choice(_NICKNAMES[formal])
        family = rng.choice(_DISTINCTIVE + tuple(_COMMON_SENTENCES) + tuple(_EPONYM_SENTENCES))
        person = _person(rng, family, formal)
        if rng.random() < 0.25:  # the record holds the short name, the text the formal one
            person.record_given, nick = nick, formal
        before, value, after = rng.choice(
            (
                ("", f"{nick} {family}", ""),
                (f"{person.title} ", f"{nick} {family}", ""),
                ("", f"{family.upper()}, {nick}", ""),
                ("", f"{nick.upper()} {family.upper()}", ""),
            )
        )
    else:
        family = rng.choice(_DISTINCTIVE)
        person = _person(rng, family)
        if variant == "typo":
            word = _typo(rng, family)
            alone = len(family) >= 6
        elif variant == "ocr":
            word = _ocr(rng, family.upper() if rng.random() < 0.5 else family)
            alone = len(family) >= 5
        else:  # broken
            word = _broken(rng, family.upper() if rng.random() < 0.3 else family)
            alone = True
        before, value, after = _with_context(rng, person, word, alone_ok=alone)
    ids = person.identifiers(rng)
    return _report_doc(rng, ids, [_name_sentence(before, value, after, rng)], variant)


# --- numbers and dates ------------------------------------------------------------------------


def _group(digits: str, sizes: Iterable[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(digits[i : i + size])
        i += size
    return sep.join(out)


def _number_doc(rng: random.Random, variant: str) -> VariantDoc:
    person = _person(rng, rng.choice(_DISTINCTIVE))
    ids = person.identifiers(rng)
    if variant == "mrn_grouped":
        mrn = person.mrn
        value = rng.choice(
            (
                _group(mrn, (4, 4), " "),
                _group(mrn, (2, 3, 3), " "),
                _group(mrn, (3, 5), "-"),
                mrn.lstrip("0") if mrn.startswith("0") else _group(mrn, (4, 4), "-"),
                _group(mrn.lstrip("0"), (3, len(mrn.lstrip("0")) - 3), " "),
            )
        )
        label = rng.choice(("MRN: ", "Hospital number ", "Hosp no. ", "ID "))
        sentence: Sentence = [label, (MRN, value), "."]
    elif variant == "nhs_grouped":
        n = person.nhs
        value = rng.choice(
            (
                _group(n, (3, 3, 4), "."),
                _group(n, (4, 3, 3), " "),
                _group(n, (5, 5), " "),
                _group(n, (3, 7), " "),
                _group(n, (3, 3, 4), "  "),
                _group(n, (3, 3, 4), " - "),
            )
        )
        sentence = [rng.choice(("NHS number: ", "NHS No ", "NHS# ")), (NHS_NUMBER, value), "."]
    elif variant == "nhs_pattern_dots":
        other = _nhs(rng)
        sentence = [
            "Next of kin NHS number ",
            (NHS_NUMBER_PATTERN, _group(other, (3, 3, 4), ".")),
            ".",
        ]
    elif variant == "dob_spaced":
        d = person.dob
        value = rng.choice(
            (
                f"{d.day:02d} / {d.month:02d} / {d.year}",
                f"{d.day:02d} . {d.month:02d} . {d.year}",
                f"{d.day:02d} - {d.month:02d} - {d.year}",
                f"{d.day:02d}/ {d.month:02d}/ {d.year}",
            )
        )
        sentence = [rng.choice(("DOB: ", "D.O.B. ", "Born ")), (DATE_OF_BIRTH, value), "."]
    else:  # birthday_with_age
        d = person.dob
        age = rng.randrange(18, 95)
        month, mon = d.strftime("%B"), d.strftime("%b")
        birthday = rng.choice(
            (f"{d.day} {month}", f"{d.day} {mon}", f"{month} {d.day}", f"{d.day}th of {month}")
        )
        sentence = rng.choice(
            (
                [f"Aged {age}; birthday ", (DATE_OF_BIRTH, birthday), "."],
                [f"{age}-year-old, born on ", (DATE_OF_BIRTH, birthday), "."],
                [f"{age} yo male (birthday ", (DATE_OF_BIRTH, birthday), ")."],
                ["Born ", (DATE_OF_BIRTH, birthday), f", now {age} years old."],
            )
        )
    return _report_doc(rng, ids, [sentence], variant)


# --- descriptors and burned-in text -----------------------------------------------------------


def _descriptor_doc(rng: random.Random) -> VariantDoc:
    person = _person(rng, rng.choice(_DISTINCTIVE))
    ids = person.identifiers(rng)
    exam = rng.choice(_EXAMS[:12]).upper()
    pick = rng.randrange(6)
    if pick == 0:
        value, kind = person.family.upper(), NAME
    elif pick == 1:
        value, kind = _ocr(rng, person.family.upper()), NAME
    elif pick == 2:
        value, kind = _typo(rng, person.family).upper(), NAME
    elif pick == 3:
        value, kind = person.accession, ACCESSION_NUMBER
    elif pick == 4:
        value, kind = _group(person.mrn, (4, 4), " "), MRN
    else:
        value, kind = f"{person.family.upper()} {person.given[0]}", NAME
    text = f"{exam} {value}" if rng.random() < 0.7 else f"{value} {exam}"
    start = text.index(value)
    return VariantDoc(text, ids, [(kind, start, start + len(value))], "descriptor", "descriptor")


def _ocr_banner_doc(rng: random.Random) -> VariantDoc:
    person = _person(rng, rng.choice(_DISTINCTIVE))
    ids = person.identifiers(rng)
    lines: list[str | tuple[str, str]] = []
    family = person.family.upper()
    name = rng.choice((family, _ocr(rng, family), _broken(rng, family)))
    lines.append((NAME, f"{name}^{person.given.upper()}" if "\n" not in name else name))
    d = person.dob
    lines.append("DOB ")
    lines.append((DATE_OF_BIRTH, rng.choice((f"{d:%d.%m.%Y}", f"{d:%d/%m/%Y}", f"{d:%d %b %Y}"))))
    lines.append("\nID ")
    lines.append((MRN, rng.choice((person.mrn, _group(person.mrn, (4, 4), " ")))))
    lines.append("\n" + rng.choice(_MARKERS))
    text, planted = "", []
    for piece in lines:
        if isinstance(piece, tuple):
            kind, value = piece
            planted.append((kind, len(text), len(text) + len(value)))
            text += value
        else:
            text += piece
        if piece is lines[0]:
            text += "\n"
    return VariantDoc(text, ids, planted, "ocr_banner", "ocr")


# --- clean texts ------------------------------------------------------------------------------


def _clean_doc(rng: random.Random, variant: str) -> VariantDoc:
    if variant == "clean_eponym":
        family = rng.choice(list(_EPONYM_SENTENCES))
        sentences = _EPONYM_SENTENCES[family]
    elif variant == "clean_near_eponym":
        family, eponym = rng.choice(_NEAR_EPONYMS)
        sentences = _EPONYM_SENTENCES.get(eponym) or (f"Known {eponym}'s disease.",)
    else:
        family = rng.choice(list(_COMMON_SENTENCES))
        sentences = _COMMON_SENTENCES[family]
    person = _person(rng, family)
    ids = person.identifiers(rng)
    if variant == "clean_descriptor":
        text = rng.choice(_EXAMS)
        return VariantDoc(text, ids, [], variant, "descriptor")
    if variant == "clean_ocr":
        text = "\n".join(rng.sample(_MARKERS, rng.randrange(1, 4)))
        return VariantDoc(text, ids, [], variant, "ocr")
    chosen = [[s] for s in rng.sample(sentences, min(len(sentences), rng.randrange(1, 3)))]
    return _report_doc(rng, ids, chosen, variant)


# --- the corpus -------------------------------------------------------------------------------

# Variant -> weight. Roughly half the texts carry an identifier, half are clean.
_MIX = {
    "typo": 8, "ocr": 8, "broken": 6, "nickname": 6, "accents": 6, "spelling": 5,
    "mrn_grouped": 5, "nhs_grouped": 5, "nhs_pattern_dots": 2, "dob_spaced": 3,
    "birthday_with_age": 4, "descriptor": 6, "ocr_banner": 4,
    "clean_eponym": 14, "clean_near_eponym": 10, "clean_common": 14, "clean_descriptor": 8,
    "clean_ocr": 4,
}  # fmt: skip


def generate(n: int, seed: int = 0) -> list[VariantDoc]:
    """``n`` texts drawn from ``_MIX`` with a seeded generator."""
    rng = random.Random(seed)
    names, weights = list(_MIX), list(_MIX.values())
    docs = []
    for _ in range(n):
        variant = rng.choices(names, weights)[0]
        if variant in ("typo", "ocr", "broken", "nickname", "accents", "spelling"):
            docs.append(_name_doc(rng, variant))
        elif variant.startswith("clean_"):
            docs.append(_clean_doc(rng, variant))
        elif variant == "descriptor":
            docs.append(_descriptor_doc(rng))
        elif variant == "ocr_banner":
            docs.append(_ocr_banner_doc(rng))
        else:
            docs.append(_number_doc(rng, variant))
    return docs


# --- the scorer -------------------------------------------------------------------------------


@dataclass
class Score:
    """Recall over planted spans and the false-positive rate over clean texts."""

    planted: int = 0
    found: int = 0
    clean: int = 0
    clean_flagged: int = 0
    missed_by_variant: dict[str, int] = field(default_factory=dict)
    flagged_by_variant: dict[str, int] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.found / self.planted if self.planted else 1.0

    @property
    def false_positive_rate(self) -> float:
        return self.clean_flagged / self.clean if self.clean else 0.0


def covered(text: str, start: int, end: int, result: CheckResult) -> bool:
    """Every letter and digit of ``text[start:end]`` lies inside some finding."""
    spans = [(f.start, f.end) for f in result.findings if f.start < end and start < f.end]
    return all(any(s <= i < e for s, e in spans) for i in range(start, end) if text[i].isalnum())


def score(
    docs: Iterable[VariantDoc], check: Callable[[str, PatientIdentifiers], CheckResult]
) -> Score:
    """Run ``check`` over ``docs`` and compare with the answer key."""
    result = Score()
    for doc in docs:
        verdict = check(doc.text, doc.identifiers)
        if not doc.planted:
            result.clean += 1
            if verdict.flagged:
                result.clean_flagged += 1
                result.flagged_by_variant[doc.variant] = (
                    result.flagged_by_variant.get(doc.variant, 0) + 1
                )
            continue
        for _, start, end in doc.planted:
            result.planted += 1
            if covered(doc.text, start, end, verdict):
                result.found += 1
            else:
                result.missed_by_variant[doc.variant] = (
                    result.missed_by_variant.get(doc.variant, 0) + 1
                )
    return result
