"""The report checker: the second, independent method that looks for identifiers in a report.

A radiology report leaves the hospital only after the Cogstack de-identification service has
redacted it *and* this checker has found nothing in the result. The two must fail differently, so
this module shares no code with the de-identification client: it is a set of pure functions over
the report text and the patient's own identifiers, with no I/O.

What it looks for (the ``kind`` of each ``Finding``):

Patient-specific (the identifiers of the report's own patient, in the variants reports use):

- ``name``: the full name; given name(s) and/or initials followed by the family name
  ("John Smith", "J. Smith", "J M Smith", "john smith"); the family or given name after a title
  ("Mr Smith", "DR SMITH", "Mrs Jane Smith": the span starts after the title, which identifies
  nobody); the "SURNAME, Given" / "Surname, G." form. Case-insensitive, word-bounded; hyphens
  and apostrophes inside a name are optional ("O'Brien", "OBrien"); each part of a
  double-barrelled name counts too. A family or given name on its own (no title, initial, given
  name or comma form) is flagged only when it is at least three letters long and not in
  ``NOT_NAMES_ALONE`` (common English words, report vocabulary, medical eponyms): "Okafor" alone
  is flagged, "white cell count" is not for a patient called White, but "Mrs White" is. A name
  that is a common word must also be capitalised to count next to an initial, a given name that
  is a common word too, or a comma ("A Field" counts, "a field" does not, "may white" does not).
- ``mrn``: the MRN as a whole token (case-insensitive; a numeric MRN may touch letters, as in
  "MRN40012345", but not digits).
- ``nhs_number``: the NHS number as 10 digits, or 3-3-4 with spaces or dashes, whether or not it
  passes the modulus-11 check.
- ``date_of_birth``: the date of birth as 01/02/1950, 1/2/1950, 01-02-1950, 01.02.1950,
  01/02/50, 1950-02-01, 19500201, 01021950, 1 Feb 1950, 1st February 1950, 01-Feb-1950,
  February 1, 1950 or Feb 1st 1950. Numeric day/month dates also match with day and month
  swapped (a US-order date of birth is still the date of birth); other dates (the study's) are
  not flagged.
- ``address``: lines of the address, case-insensitive, ignoring punctuation and spacing, with
  common street-type abbreviations ("Rd", "Ave", ...). The street line (house number and street,
  or a house name) is flagged wherever it appears; the other lines (locality, town) are flagged
  only when they adjoin a flagged line, because "London" alone identifies nobody.
- ``postcode``: the postcode with or without its space, in any case.
- ``phone``: the phone number with its digits normalised: spaces, dashes, brackets, and the
  +44 / 0044 / (0) / 0 prefixes do not matter.

Generic patterns (anyone's identifiers):

- ``nhs_number_pattern``: 10 digits (or 3-3-4) that pass the NHS modulus-11 check.
- ``postcode_pattern``: a string in the shape of a UK postcode (the official outward and inward
  letter rules, so "T2 5MM" or "L1 2CM" are not postcodes), word-bounded, any case; an inward code
  that reads as a lower-case ordinal ("T5 6th") is skipped.
- ``phone_pattern``: a UK number: 0 then 9 or 10 digits, starting 01, 02, 03 or 07, or the same
  in +44 form, with spaces, dashes or brackets.
- ``email``: an e-mail address.

A span that is the patient's own identifier is reported with the patient-specific kind only, and
an NHS-number shape inside a phone number ("+44 161 496 0704") is the phone number only.

Medical eponyms: "Parkinson's disease", "Swan-Ganz catheter", "Kerley B lines", "non-Hodgkin
lymphoma", "Pancoast tumour" are not names, even when the patient is called Parkinson. The rule:
eponyms are in ``NOT_NAMES_ALONE``, so they are never flagged on their own; and a name written
with only initials ("B Hodgkin lymphoma") or on its own is not flagged when it is followed (after
an optional possessive or hyphenated partner name) by a medical word ("disease", "catheter",
"lines", ...). A title, a given name or the "SURNAME, Given" form always makes it a name:
"Mr Parkinson" is flagged. The cost, stated plainly: a bare surname that is also an eponym or a
common word ("Parkinson was reviewed") is not caught by this method.

Findings carry offsets only, never the matched text, so that results can be logged and stored
without re-creating the leak they describe.

Speed: the generic patterns are compiled once; the patient's names are found with ``str.find``
(compiling a pattern per patient would cost more than the whole check), and only an address
whose street appears in the report gets a pattern of its own. About 0.15-0.2 ms for a typical
report on one core (``benchmarks/checker_bench.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

# Recorded with each check run's metrics, so a change in flag rates can be traced to a change
# here. Bump it whenever what is flagged changes.
CHECKER_VERSION = "1"

# --- kinds ------------------------------------------------------------------------------------

NAME = "name"
MRN = "mrn"
NHS_NUMBER = "nhs_number"
DATE_OF_BIRTH = "date_of_birth"
ADDRESS = "address"
POSTCODE = "postcode"
PHONE = "phone"
NHS_NUMBER_PATTERN = "nhs_number_pattern"
POSTCODE_PATTERN = "postcode_pattern"
PHONE_PATTERN = "phone_pattern"
EMAIL = "email"

PATIENT_KINDS = (NAME, MRN, NHS_NUMBER, DATE_OF_BIRTH, ADDRESS, POSTCODE, PHONE)
PATTERN_KINDS = (NHS_NUMBER_PATTERN, POSTCODE_PATTERN, PHONE_PATTERN, EMAIL)
KINDS = PATIENT_KINDS + PATTERN_KINDS


@dataclass(frozen=True, slots=True)
class PatientIdentifiers:
    """The patient's own identifiers, as the EHR holds them; any may be missing.

    ``date_of_birth`` is ``YYYY-MM-DD``. ``name`` is the full name in any usual order
    ("John Smith", "SMITH, John", DICOM "SMITH^John"); ``given_name`` and ``family_name`` are
    used as well when present.
    """

    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    mrn: str | None = None
    nhs_number: str | None = None
    date_of_birth: str | None = None
    address: str | None = None
    postcode: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """Where something identifying was found: ``text[start:end]``. Never the text itself."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``flagged`` is true when there is at least one finding; findings are sorted by offset."""

    flagged: bool
    findings: list[Finding] = field(default_factory=list)


# --- word lists -------------------------------------------------------------------------------


def _word_set(words: str) -> frozenset[str]:
    """A set from whitespace-separated words (kept as prose so the lists stay readable)."""
    return frozenset(words.split())


# Medical eponyms seen in chest radiology reports. Never a name on their own.
EPONYMS = _word_set(
    """
    hodgkin parkinson swan ganz pancoast kerley chilaiditi morgagni bochdalek ghon westermark
    hampton fleischner felson rigler kartagener horner wegener hamman lofgren caplan macleod
    swyer mach luftsichel mounier kuhn erdheim castleman kaposi virchow sjogren raynaud marfan
    ehlers danlos pott crohn hashimoto guillain barre wilms ewing askin langerhans tietze mondor
    boerhaave zenker schatzki killian laimer heimlich sengstaken blakemore seldinger hickman
    groshong broviac portacath mediport amplatzer ravitch nuss dressler lemierre loeffler churg
    strauss goodpasture behcet takayasu kawasaki fallot eisenmenger ebstein osler rendu meigs
    klinefelter noonan
    """
)

# Words after a name that make it an eponym rather than a person.
MEDICAL_WORDS = (
    "disease", "diseases", "syndrome", "syndromes", "sign", "signs", "line", "lines",
    "lymphoma", "lymphomas", "tumour", "tumours", "tumor", "tumors", "catheter", "catheters",
    "hernia", "hernias", "focus", "foci", "complex", "hump", "sarcoma", "cell", "cells", "node",
    "nodes", "classification", "criteria", "score", "view", "views", "position", "manoeuvre",
    "maneuver", "effect", "phenomenon", "fracture", "fractures", "lesion", "lesions", "triangle",
    "sulcus", "foramen", "space", "procedure", "operation", "tube", "tubes", "valve", "shunt",
    "drain", "angle", "zone", "band", "bands", "body", "bodies", "nodule", "nodules", "cyst",
    "cysts", "aneurysm", "ulcer", "granuloma", "infarct", "plaque", "artery", "stent", "filter",
    "device", "law", "ratio", "index", "test", "pneumonia", "anomaly", "deformity", "repair",
    "bar", "pectus", "reflex", "phenomena", "spot", "spots", "granulomatosis", "vasculitis",
    "palsy", "tetralogy", "membrane", "layer", "muscle", "ligament", "fascia", "gland",
    "carcinoma", "neoplasm", "mass", "shadow", "stripe", "appearance", "appearances", "pattern",
    "type", "stage", "grade", "symptoms", "symptom", "sequence", "sequences",
)  # fmt: skip

# Common English words and report vocabulary that are also names ("White", "Hope", "Field",
# "May", "Mark"...). A name on its own is flagged only if it is not one of these; with a title,
# an initial, a given name or in "SURNAME, Given" form it is flagged all the same.
NOT_NAMES_ALONE = EPONYMS | _word_set(
    """
    a about above across after again against all almost alone along already also although always
    am among an and another any are area around as at away back be because been before behind
    being below best better between both but by came can case change clear close come could day
    days did do does done down due during each early either else end enough even ever every few
    final first five for four from full further general given go good great had half has have he
    her here high him his how however if in into is it its just keep known large last late least
    left less like little long low made main make many may me might more most much must my near
    need never new next no none nor not now number of off often old on once one only open or
    other our out over own part past per place plus point possible present previous prior quite
    rather right same see seen several shall she short should side since six small so some still
    such take than that the their them then there these they this those three through thus time
    to today too two under until up upon us use used very was way we well were what when where
    which while who whole why will with within without would yet you young your
    black white brown green grey gray gold silver rose red blue pink amber ruby pearl jade
    bell bird bishop bone bond brook brooks bush chance church clay cross dean duke fair faith
    field fields fish ford forest fox frank free frost gay gentle gift glass grant grove hall
    hand hands hardy hart head heart hill hills holiday hope horn house hunt king knight lamb
    lane law lord love lucky major minor mark marks marsh mason mill mills moon moss north page
    park parks peace pike pool power price prince rich rice ring rivers rock rush salt sandy
    savage sharp snow spark spring stone strong summer swift tall temple tower wall ward warren
    waters wells west east south wild wise wolf wood woods walker wing winter storm rain ray
    miles wade reed rod nick drew dale glen heath dawn eve joy grace patience constance
    prudence mercy charity lily ivy violet iris holly hazel heather daisy poppy crystal autumn
    sky bill pat sue art rob don guy max jack sunny chase hunter angel penny carol kit gene
    june april august will worth noble earl baron queen van von der den de la le du di da
    chest lung lungs heart cardiac rib ribs spine neck abdomen bowel stomach liver spleen kidney
    breast skin soft tissue tissues fluid air gas tube tubes wire wires clip clips lead leads
    port valve stent drain line lines film films view views zone zones lobe lobes base bases apex
    hilum hila hilar mass masses lesion nodule cyst cavity bulla scar collapse shadow shadows
    opacity lucency effusion oedema edema haze pattern sign signs fold folds upper lower middle
    central lateral medial basal dome arch knuckle angle size width level normal stable fine mild
    marked dense faint patchy round wide broad mobile portable erect supine lying sitting ward
    bay bed theatre unit clinic hospital trust team doctor nurse consultant registrar patient
    male female man woman lady sir master gentleman age year years smoker query review repeat
    urgent routine acute chronic unchanged improved worse resolving resolved persistent interval
    cough fever pain fall trauma injury fracture surgery operation post pre op week weeks month
    months hours hour minutes date report reported addendum clinical details history indication
    technique comparison findings impression comment comments exam examination study image
    images radiograph pacemaker device loop recorder graft carina trachea bronchus mediastinum
    aorta artery vein vessels pleura pleural diaphragm fissure airspace cancer carcinoma tumour
    infection pneumonia sepsis sinus node nodes gland glands pain mark marker markers
    ng ngt cvc picc ett icd ij svc ivc ctr pa ap
    """
)

# Words that say nothing about where someone lives when they stand alone in an address line.
_ADDRESS_GENERIC = _word_set(
    """
    flat apartment apt unit house floor block room suite the and of at on no number building
    ground first second third top basement
    """
)

# Street types and their usual abbreviations: "12 Acacia Ave." is "12 Acacia Avenue".
_STREET_TYPE_GROUPS = (
    ("road", "rd"),
    ("street", "st", "str"),
    ("avenue", "ave", "av"),
    ("lane", "ln"),
    ("drive", "dr", "drv"),
    ("close", "cl"),
    ("court", "ct"),
    ("crescent", "cres", "cresc", "cr"),
    ("place", "pl"),
    ("gardens", "gdns", "gardns"),
    ("terrace", "terr", "ter", "tce"),
    ("square", "sq"),
    ("grove", "gr", "gro"),
    ("park", "pk"),
    ("mews",),
    ("way",),
    ("rise",),
    ("walk", "wlk"),
    ("row",),
    ("hill",),
    ("parade", "pde"),
    ("boulevard", "blvd"),
    ("mount", "mt"),
    ("green", "grn"),
)
_STREET_TYPES = {word: group for group in _STREET_TYPE_GROUPS for word in group}

_TITLES = (
    r"mrs|mr|ms|miss|mx|dr|prof(?:essor)?|master|sir|dame|rev(?:d|erend)?|lady|lord|father|sister"
)

# --- precompiled patterns ---------------------------------------------------------------------

_L = r"[^\W\d_]"  # one letter, in any script
_LETTER_RUNS = re.compile(_L + r"+")
_ADDRESS_TOKENS = re.compile(r"\d+|[^\W\d_]+")
_ADDRESS_SPLIT = re.compile(r"[,;\n\r]+")
_SEPARATORS_ONLY = re.compile(r"[\s,.;:/\-]{0,6}")
_DOB_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME_JOINT = re.compile(r"[\s'\u2019\-]?")  # inside a name: O'Brien, Smith-Jones
_TITLE_BEFORE = re.compile(r"(?<!" + _L + r")(?:" + _TITLES + r")(?:\.\s*|\s+)\Z", re.IGNORECASE)
_INITIAL_BEFORE = re.compile(r"(?<!" + _L + r")[A-Z]\.?\s*\Z")  # "J. " right before a name
_INITIAL_AT = re.compile(r"[A-Z](?!" + _L + r")\.?")
_COMMA = re.compile(r"\s*,\s*")
_SPACES_AND_DOTS = re.compile(r"[.\s]*")
_SPACES = re.compile(r"\s*")
_WORD_NEXT = re.compile(r"\s+[0-9a-z]")  # lower case or a number next: not part of a name

_MEDICAL_AFTER = re.compile(
    r"(?:[-\u2013]" + _L + r"+)*"  # hyphenated partner: Swan-Ganz
    r"(?:['\u2019]s|s['\u2019])?"  # possessive: Parkinson's, Parkinsons'
    r"\s*\(?\s*(?:(?-i:[A-Z])\s+)?"  # "Kerley B lines", "(Kerley B) lines" is caught as bare
    r"(?:" + "|".join(sorted(set(MEDICAL_WORDS), key=len, reverse=True)) + r")(?!" + _L + ")",
    re.IGNORECASE,
)

# NHS number: 10 digits, optionally as 3-3-4 with single spaces or dashes between the groups.
_NHS_RE = re.compile(r"(?<![\d])\d{3}[ \t]?-?[ \t]?\d{3}[ \t]?-?[ \t]?\d{4}(?!\d)")

# Postcode, loose shape (for the patient's own, compared after normalising) ...
_POSTCODE_LOOSE = re.compile(
    r"(?<![^\W_])[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}(?![^\W_])", re.IGNORECASE
)
# ... and the official rules (for anyone's): letters allowed in each position of outward and
# inward codes, which rules out "T2 5MM", "L1 2CM", "C7 1CM".
_POSTCODE_STRICT = re.compile(
    r"(?:[A-PR-UWYZ](?:\d{1,2}|[A-HK-Y]\d{1,2}|\d[A-HJKPSTUW]|[A-HK-Y]\d[ABEHMNPRV-Y])"
    r"[ \t]?\d[ABD-HJLNP-UW-Z]{2}|GIR[ \t]?0AA)",
    re.IGNORECASE,
)
_ORDINAL_INWARD = re.compile(r"(?:1st|2nd|3rd|[04-9]th)\Z")
_POSTCODE_TRAILING = re.compile(
    r"(?:^|\s)([A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2})\s*\Z", re.IGNORECASE
)

# Phone: +44 / 0044 (optionally "(0)") or a leading 0 (optionally in brackets), then digit groups
# separated by one space, dash or a closing bracket. A national number's first group has 3+
# digits (area codes do) and later groups 2+, so dates ("01-02-1950") and a trailing "5 mm" are
# not read as parts of a phone number.
_PHONE_RE = re.compile(
    r"(?<![\w+(])"
    r"(?:(?P<intl>(?:\+|00)[ \t]?44)[ \t]?(?:\(0\)[ \t]?)?|\(?(?=0\d\d))"
    r"(?P<num>\d{2,}(?:(?:[ \t\-]|\)[ \t]?)\d{2,})*)"
    r"(?!\w)"
)
_DIGIT_RUNS = re.compile(r"\d+")

_EMAIL_RE = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![\w\-])"
)

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip
_MONTH = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DATE_RE = re.compile(
    r"(?<![\w/.\-])(?:"
    r"(?P<iy>\d{4})(?P<isep>[-/.])(?P<im>\d{1,2})(?P=isep)(?P<id>\d{1,2})"
    r"|(?P<nd>\d{1,2})(?P<nsep>[-/.])(?P<nm>\d{1,2})(?P=nsep)(?P<ny>\d{4}|\d{2})"
    r"|(?P<compact>\d{8})"
    r"|(?P<td>\d{1,2})(?:st|nd|rd|th)?[\s\-/.]*(?:of\s+)?(?P<tm>" + _MONTH + r")(?![a-z])\.?"
    r"[\s\-/.,]*(?P<ty>\d{4}|\d{2})"
    r"|(?P<um>" + _MONTH + r")(?![a-z])\.?\s*(?P<ud>\d{1,2})(?:st|nd|rd|th)?,?\s*(?P<uy>\d{4})"
    r")(?![\w/\-]|\.\d)",
    re.IGNORECASE,
)


# --- the check --------------------------------------------------------------------------------


def check_report(text: str, identifiers: PatientIdentifiers) -> CheckResult:
    """Look for the patient's identifiers and generic identifier patterns in ``text``.

    Raises ``ValueError`` (naming the field, never its value) when an identifier is unusable,
    e.g. a date of birth that is not ``YYYY-MM-DD``: checking against a value we cannot read
    would silently check nothing.
    """
    findings: list[Finding] = []
    lowered = text.lower()
    if len(lowered) != len(text):  # a few Unicode letters change length when lower-cased
        lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    _find_names(text, lowered, identifiers, findings)
    if identifiers.mrn and identifiers.mrn.strip():
        _find_mrn(text, lowered, identifiers.mrn.strip(), findings)
    _find_nhs_numbers(text, _nhs_digits(identifiers.nhs_number), findings)
    if identifiers.date_of_birth:
        _find_date_of_birth(text, _parse_dob(identifiers.date_of_birth), findings)
    address_postcodes: set[str] = set()
    if identifiers.address and identifiers.address.strip():
        _find_address(text, lowered, identifiers.address, findings, address_postcodes)
    _find_postcodes(text, _patient_postcodes(identifiers.postcode, address_postcodes), findings)
    _find_phones(text, _phone_digits(identifiers.phone), findings)
    if "@" in text:
        findings.extend(Finding(EMAIL, m.start(), m.end()) for m in _EMAIL_RE.finditer(text))
    merged = merge_findings(_drop_nhs_shapes_in_phones(findings))
    return CheckResult(flagged=bool(merged), findings=merged)


def validate_identifiers(identifiers: PatientIdentifiers) -> None:
    """Raise ``ValueError`` (naming the field and the rule, never the value) for an identifier
    the checker could not use; ``check_report`` would raise the same."""
    _nhs_digits(identifiers.nhs_number)
    if identifiers.date_of_birth:
        _parse_dob(identifiers.date_of_birth)
    _patient_postcodes(identifiers.postcode, set())
    _phone_digits(identifiers.phone)


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Sort by offset and merge overlapping or touching findings of the same kind."""
    by_kind: dict[str, list[Finding]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    merged: list[Finding] = []
    for kind, items in by_kind.items():
        items.sort(key=lambda f: (f.start, f.end))
        start, end = items[0].start, items[0].end
        for item in items[1:]:
            if item.start <= end:
                end = max(end, item.end)
            else:
                merged.append(Finding(kind, start, end))
                start, end = item.start, item.end
        merged.append(Finding(kind, start, end))
    merged.sort(key=lambda f: (f.start, f.end, f.kind))
    return merged


def _drop_nhs_shapes_in_phones(findings: list[Finding]) -> list[Finding]:
    """ "+44 161 496 0704" ends in a 3-3-4 group that may pass modulus 11: it is a phone number."""
    phones = [f for f in findings if f.kind in (PHONE, PHONE_PATTERN)]
    if not phones:
        return findings
    return [
        f
        for f in findings
        if f.kind != NHS_NUMBER_PATTERN
        or not any(p.start <= f.start and f.end <= p.end for p in phones)
    ]


def nhs_number_is_valid(digits: str) -> bool:
    """The NHS modulus-11 check: weights 10..2 on the first nine digits give the tenth.

    ``digits`` is exactly ten digits. A check value of 10 means the number was never issued.
    """
    if len(digits) != 10 or not digits.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


# --- names ------------------------------------------------------------------------------------


def _letter_tokens(value: str) -> list[str]:
    return [t.lower() for t in _LETTER_RUNS.findall(value)]


def _name_phrases(ids: PatientIdentifiers) -> tuple[list[list[str]], list[list[str]]]:
    """Family and given names of the patient, each as a list of lower-case letter runs."""
    families: list[list[str]] = []
    givens: list[list[str]] = []
    if ids.family_name and ids.family_name.strip():
        families.append(_letter_tokens(ids.family_name))
    if ids.given_name and ids.given_name.strip():
        givens.append(_letter_tokens(ids.given_name))
    name = (ids.name or "").strip()
    if name:
        if "^" in name:  # DICOM PN: FAMILY^Given^Middle^Prefix^Suffix
            parts = name.split("^")
            families.append(_letter_tokens(parts[0]))
            givens.extend(_letter_tokens(p) for p in parts[1:3])
        elif "," in name:  # "SMITH, John"
            family, _, given = name.partition(",")
            families.append(_letter_tokens(family))
            givens.append([t for t in _letter_tokens(given) if not re.fullmatch(_TITLES, t)])
        else:  # "John Michael Smith", possibly with a title
            words = [w for w in name.split() if not re.fullmatch(_TITLES + r"\.?", w.lower())]
            known = [" ".join(f) for f in families]
            joined = " ".join(" ".join(_letter_tokens(w)) for w in words)
            for family in known:  # family name given separately: the rest is given names
                if family and joined.endswith(family):
                    givens.append(joined[: -len(family)].split())
                    break
            else:
                if words:
                    families.append(_letter_tokens(words[-1]))
                    givens.append(_letter_tokens(" ".join(words[:-1])))
    # Each given name on its own, and each part of a double-barrelled family name (not
    # particles such as "van" or "de"), as well as the whole.
    family_set: list[list[str]] = []
    for phrase in families:
        if sum(map(len, phrase)) >= 2 and phrase not in family_set:
            family_set.append(phrase)
        for token in phrase if len(phrase) > 1 else ():
            if len(token) >= 3 and [token] not in family_set and token not in NOT_NAMES_ALONE:
                family_set.append([token])
    given_set: list[list[str]] = []
    for phrase in givens:
        phrase = [t for t in phrase if len(t) >= 2]
        if phrase and phrase not in given_set:
            given_set.append(phrase)
        for token in phrase if len(phrase) > 1 else ():
            if [token] not in given_set:
                given_set.append([token])
    given_set = [g for g in given_set if g not in family_set]
    return family_set, given_set


class _Occurrence(NamedTuple):
    """One place where one of the patient's names is written, as a whole word."""

    start: int
    end: int
    common: bool  # the name is also a common word ("May", "White"): needs a capital to count


def _occurrences(lowered: str, phrases: list[list[str]]) -> list[_Occurrence]:
    """Every whole-word occurrence of the phrases, longest first where they overlap.

    Found with ``str.find`` rather than a regex compiled for this patient: compiling costs more
    than checking the report, and most reports do not contain the name at all.
    """
    found: list[_Occurrence] = []
    for phrase in phrases:
        first = phrase[0]
        common = len(phrase) == 1 and first in NOT_NAMES_ALONE
        position = lowered.find(first)
        while position != -1:
            end = position + len(first)
            if position == 0 or not lowered[position - 1].isalpha():
                for token in phrase[1:]:  # "smith-jones", "o'brien", "smith jones"
                    joint = _NAME_JOINT.match(lowered, end).end()
                    if not lowered.startswith(token, joint):
                        end = -1
                        break
                    end = joint + len(token)
                if end != -1 and (end == len(lowered) or not lowered[end].isalpha()):
                    found.append(_Occurrence(position, end, common))
            position = lowered.find(first, position + 1)
    found.sort(key=lambda o: (o.start, -o.end))
    kept: list[_Occurrence] = []
    for occurrence in found:
        if not kept or occurrence.start >= kept[-1].end:
            kept.append(occurrence)
    return kept


def _find_names(text: str, lowered: str, ids: PatientIdentifiers, findings: list[Finding]) -> None:
    families, givens = _name_phrases(ids)
    family_hits = _occurrences(lowered, families)
    given_hits = [
        g
        for g in _occurrences(lowered, givens)
        if not any(f.start < g.end and g.start < f.end for f in family_hits)
    ]
    if not family_hits and not given_hits:
        return
    distinctive = {
        "".join(p)
        for p in families + givens
        if sum(map(len, p)) >= 3 and not (len(p) == 1 and p[0] in NOT_NAMES_ALONE)
    }
    given_by_end = {g.end: g for g in given_hits}
    given_by_start = {g.start: g for g in given_hits}
    family_starts = {f.start for f in family_hits}
    first = len(findings)

    def capitalised(hit: _Occurrence) -> bool:
        return not hit.common or text[hit.start].isupper()

    for hit in family_hits:
        # Walk back over given names and initials: "John Michael Smith", "J. M. Smith".
        start, has_given, has_initial, plain_given = hit.start, False, False, False
        while True:
            j = start
            while j > 0 and text[j - 1].isspace():
                j -= 1
            given = given_by_end.get(j) if j < start else None
            if given is not None and capitalised(given):
                start, has_given = given.start, True
                plain_given = plain_given or not given.common
                continue
            initial = _INITIAL_BEFORE.search(text, max(0, start - 8), start)
            if initial is None:
                break
            start, has_initial = initial.start(), True
        if _TITLE_BEFORE.search(text, max(0, start - 16), start):
            findings.append(Finding(NAME, start, hit.end))  # "Mr Smith": the title is no name
            continue
        # A common-word surname needs a capital, unless a given name that is no common word
        # comes first ("john white" is a name, "may white" is not).
        if not capitalised(hit) and not plain_given:
            continue
        if has_given:
            findings.append(Finding(NAME, start, hit.end))
            continue
        # "SMITH, John", "Smith, J. M.": given names and initials after a comma, separated by
        # spaces only (a full stop and a space end the sentence: "Smith, J. A 10 mm nodule").
        comma = _COMMA.match(text, hit.end)
        end, words = hit.end, 0
        position = comma.end() if comma else -1
        while position != -1:
            given = given_by_start.get(position)
            if given is not None and capitalised(given):
                end, words = given.end, words + 1
            else:
                initial = _INITIAL_AT.match(text, position)
                if initial is None:
                    break
                if not initial.group().endswith(".") and _WORD_NEXT.match(text, initial.end()):
                    break  # "A 10 mm", "A small": an article, not an initial
                after = _SPACES_AND_DOTS.match(text, initial.end()).end()
                if end > hit.end and after in family_starts:
                    break  # "Smith, J. J. Smith": the second initial is the next name's
                end = initial.end()
            position = _SPACES.match(text, end).end()
        if end > hit.end:
            if words or not _MEDICAL_AFTER.match(text, end):
                findings.append(Finding(NAME, start, end))
            continue
        if has_initial:
            if not _MEDICAL_AFTER.match(text, hit.end):
                findings.append(Finding(NAME, start, hit.end))
            continue
        key = "".join(_letter_tokens(lowered[hit.start : hit.end]))
        if key in distinctive and not _MEDICAL_AFTER.match(text, hit.end):
            findings.append(Finding(NAME, hit.start, hit.end))

    # Given names not already part of a full name found above.
    full_names = findings[first:]
    for hit in given_hits:
        if any(f.start <= hit.start and hit.end <= f.end for f in full_names):
            continue
        if _TITLE_BEFORE.search(text, max(0, hit.start - 16), hit.start):
            findings.append(Finding(NAME, hit.start, hit.end))
            continue
        key = "".join(_letter_tokens(lowered[hit.start : hit.end]))
        if key in distinctive and not _MEDICAL_AFTER.match(text, hit.end):
            findings.append(Finding(NAME, hit.start, hit.end))


# --- MRN --------------------------------------------------------------------------------------


def _find_mrn(text: str, lowered: str, mrn: str, findings: list[Finding]) -> None:
    """The MRN as a whole token: no letter or digit may continue it on either side.

    A numeric MRN may touch letters ("MRN40012345"); an alphanumeric one may not.
    """
    needle = mrn.lower()
    first_digit, last_digit = needle[0].isdigit(), needle[-1].isdigit()
    position = lowered.find(needle)
    while position != -1:
        end = position + len(needle)
        before = lowered[position - 1] if position else ""
        after = lowered[end] if end < len(lowered) else ""
        ok_before = not before or (not before.isdigit() if first_digit else not before.isalnum())
        ok_after = not after or (not after.isdigit() if last_digit else not after.isalnum())
        if last_digit and after in ".," and lowered[end + 1 : end + 2].isdigit():
            ok_after = False  # "40012345.5" is another number
        if first_digit and before in ".," and lowered[position - 2 : position - 1].isdigit():
            ok_before = False
        if ok_before and ok_after:
            findings.append(Finding(MRN, position, end))
        position = lowered.find(needle, position + 1)


# --- NHS number -------------------------------------------------------------------------------


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _nhs_digits(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    digits = _digits(value)
    if len(digits) != 10 or re.search(r"[^\d\s\-]", value):
        raise ValueError("nhs_number must be 10 digits (spaces or dashes allowed)")
    return digits


def _find_nhs_numbers(text: str, patient: str | None, findings: list[Finding]) -> None:
    for match in _NHS_RE.finditer(text):
        digits = _digits(match.group())
        if digits == patient:
            findings.append(Finding(NHS_NUMBER, match.start(), match.end()))
        elif nhs_number_is_valid(digits):
            findings.append(Finding(NHS_NUMBER_PATTERN, match.start(), match.end()))


# --- date of birth ----------------------------------------------------------------------------


def _parse_dob(value: str) -> date:
    value = value.strip()
    if not _DOB_FORMAT.fullmatch(value):
        raise ValueError("date_of_birth must be a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("date_of_birth must be a date as YYYY-MM-DD") from None


def _same_day(dob: date, year: str, month: int, day: int) -> bool:
    if month != dob.month or day != dob.day:
        return False
    if len(year) == 2:
        return int(year) == dob.year % 100
    return int(year) == dob.year


def _find_date_of_birth(text: str, dob: date, findings: list[Finding]) -> None:
    for match in _DATE_RE.finditer(text):
        g = match.groupdict()
        if g["iy"]:
            hit = _same_day(dob, g["iy"], int(g["im"]), int(g["id"]))
        elif g["ny"]:
            day, month = int(g["nd"]), int(g["nm"])
            hit = _same_day(dob, g["ny"], month, day) or _same_day(dob, g["ny"], day, month)
        elif g["compact"]:
            c = g["compact"]
            hit = _same_day(dob, c[:4], int(c[4:6]), int(c[6:])) or _same_day(
                dob, c[4:], int(c[2:4]), int(c[:2])
            )
        elif g["tm"]:
            hit = _same_day(dob, g["ty"], _MONTHS[g["tm"][:3].lower()], int(g["td"]))
        else:
            hit = _same_day(dob, g["uy"], _MONTHS[g["um"][:3].lower()], int(g["ud"]))
        if hit:
            findings.append(Finding(DATE_OF_BIRTH, match.start(), match.end()))


# --- address and postcode ---------------------------------------------------------------------


def _normalise_postcode(value: str) -> str:
    return "".join(value.split()).upper()


def _patient_postcodes(value: str | None, from_address: set[str]) -> set[str]:
    postcodes = set(from_address)
    if value and value.strip():
        normalised = _normalise_postcode(value)
        if not re.fullmatch(r"[A-Z]{1,2}\d[A-Z\d]?\d[A-Z]{2}", normalised):
            raise ValueError("postcode must be a UK postcode (e.g. NW1 2AB)")
        postcodes.add(normalised)
    return postcodes


def _address_lines(address: str, postcodes: set[str]) -> list[list[str]]:
    """The address as lines of tokens, postcodes split off (into ``postcodes``).

    A line that is only a house number ("12, Acacia Avenue") is joined to the next.
    """
    lines: list[list[str]] = []
    pending: list[str] = []
    for raw in _ADDRESS_SPLIT.split(address):
        line = raw.strip()
        trailing = _POSTCODE_TRAILING.search(line)
        if trailing:
            postcodes.add(_normalise_postcode(trailing.group(1)))
            line = line[: trailing.start(1)].strip()
        tokens = [t.lower() for t in _ADDRESS_TOKENS.findall(line)]
        if not tokens:
            continue
        if all(t.isdigit() or len(t) == 1 for t in tokens):
            pending += tokens
            continue
        lines.append(pending + tokens)
        pending = []
    return lines


def _distinctive_address_token(token: str) -> bool:
    return (
        len(token) >= 3
        and not token.isdigit()
        and token not in _ADDRESS_GENERIC
        and token not in _STREET_TYPES
    )


def _find_address(
    text: str, lowered: str, address: str, findings: list[Finding], postcodes: set[str]
) -> None:
    lines = _address_lines(address, postcodes)
    # The street line: the first with a house number and a distinctive word; failing that,
    # the first with two words and a distinctive one (a house name). Lines before it and it are
    # flagged on their own; later lines (locality, town, county) only next to a flagged line.
    street_index = next(
        (
            i
            for i, tokens in enumerate(lines)
            if any(t.isdigit() for t in tokens) and any(map(_distinctive_address_token, tokens))
        ),
        None,
    )
    if street_index is None:
        street_index = next(
            (
                i
                for i, tokens in enumerate(lines)
                if len(tokens) >= 2 and any(map(_distinctive_address_token, tokens))
            ),
            -1,
        )
    alternatives: list[str] = []
    any_present = False
    for index, tokens in enumerate(lines):
        specific = index <= street_index and any(map(_distinctive_address_token, tokens))
        specific = specific and len(tokens) >= 2
        if specific and not any_present:
            # Cheap pre-filter: nothing can be flagged unless a word of a specific line is
            # there (street types excluded: "Ave" may stand for "Avenue").
            words = [t for t in tokens if _distinctive_address_token(t)]
            any_present = _has_word(lowered, max(words, key=len))
        parts = []
        for token in tokens:
            variants = _STREET_TYPES.get(token, (token,))
            parts.append("(?:" + "|".join(map(re.escape, variants)) + ")")
        alternatives.append(
            f"(?P<{'s' if specific else 'n'}{index}>" + r"[\W_]{0,3}".join(parts) + ")"
        )
    if not alternatives or not any_present:
        return
    regex = re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])", re.I)
    matches = [(m.start(), m.end(), m.lastgroup[0] == "s") for m in regex.finditer(text)]
    for group in _adjacent_groups(text, matches):
        if any(specific for _, _, specific in group):
            findings.append(Finding(ADDRESS, group[0][0], group[-1][1]))


def _has_word(lowered: str, word: str) -> bool:
    """``word`` occurs in ``lowered`` with no letter or digit either side."""
    position = lowered.find(word)
    while position != -1:
        end = position + len(word)
        if (position == 0 or not lowered[position - 1].isalnum()) and (
            end == len(lowered) or not lowered[end].isalnum()
        ):
            return True
        position = lowered.find(word, position + 1)
    return False


def _adjacent_groups(
    text: str, matches: list[tuple[int, int, bool]]
) -> Iterator[list[tuple[int, int, bool]]]:
    """Runs of matches separated only by punctuation and spaces (one address written out)."""
    group: list[tuple[int, int, bool]] = []
    for match in matches:
        if group and _SEPARATORS_ONLY.fullmatch(text, group[-1][1], match[0]):
            group.append(match)
            continue
        if group:
            yield group
        group = [match]
    if group:
        yield group


def _find_postcodes(text: str, patient: set[str], findings: list[Finding]) -> None:
    for match in _POSTCODE_LOOSE.finditer(text):
        value = match.group()
        if _normalise_postcode(value) in patient:
            findings.append(Finding(POSTCODE, match.start(), match.end()))
        elif _POSTCODE_STRICT.fullmatch(value) and not _ORDINAL_INWARD.search(value):
            findings.append(Finding(POSTCODE_PATTERN, match.start(), match.end()))


# --- phone ------------------------------------------------------------------------------------


def _phone_digits(value: str | None) -> str | None:
    """The patient's number as UK national digits ("+44 (0)20 7946 0958" -> "02079460958").

    A number with another country code comes back as "+" and its digits.
    """
    if value is None or not value.strip():
        return None
    stripped = value.strip()
    digits = _digits(stripped.replace("(0)", ""))
    if stripped.startswith(("+44", "0044")):
        digits = "0" + digits.removeprefix("00").removeprefix("44")
    elif stripped.startswith(("+", "00")):
        digits = "+" + digits.removeprefix("00")
    elif not digits.startswith("0") and len(digits) in (9, 10):
        digits = "0" + digits  # stored without its trunk prefix
    if len(digits.lstrip("+")) < 6:
        raise ValueError("phone must have at least 6 digits")
    return digits


def _find_phones(text: str, patient: str | None, findings: list[Finding]) -> None:
    if patient is not None and patient.startswith("+"):
        _find_foreign_phone(text, patient[1:], findings)
        patient = None
    for match in _PHONE_RE.finditer(text):
        # Take digit groups until the number is complete, so that a phone number followed by
        # an unrelated number ("07700 900123 12 mm") still ends where the phone number ends.
        digits = "0" if match.group("intl") else ""
        end = match.start("num")
        is_patient = False
        for run in _DIGIT_RUNS.finditer(text, match.start("num"), match.end("num")):
            digits += run.group()
            end = run.end()
            if digits == patient:
                is_patient = True
                break
            if len(digits) >= 10:
                break
        if is_patient:
            findings.append(Finding(PHONE, match.start(), end))
        elif len(digits) in (10, 11) and digits[:2] in ("01", "02", "03", "07"):
            findings.append(Finding(PHONE_PATTERN, match.start(), end))


def _find_foreign_phone(text: str, digits: str, findings: list[Finding]) -> None:
    """A non-UK number: its digits in order, with optional +/00 and spaces, dashes, brackets."""
    body = r"[\s\-().]?".join(map(re.escape, digits))
    regex = re.compile(r"(?<!\d)(?:\+|00)?[\s]?" + body + r"(?!\d)")
    findings.extend(Finding(PHONE, m.start(), m.end()) for m in regex.finditer(text))
