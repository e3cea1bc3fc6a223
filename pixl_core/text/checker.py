"""The identifier checker: the second, independent method that looks for identifiers in text.

It is the gate for three doors: a radiology report leaves the hospital only after the Cogstack
de-identification service has redacted it *and* this checker has found nothing in the result; a
kept free-text DICOM attribute (a description, a protocol name) is emptied when it flags
(``pixl_core/dicom/descriptors.py``); text read from pixels is matched with it. The methods must
fail differently, so this module shares no code with the de-identification client: it is a set
of pure functions over the text and the patient's own identifiers, with no I/O.

What it looks for (the ``kind`` of each ``Finding``):

Patient-specific (the identifiers of the text's own patient, in the variants text uses):

- ``name``: the full name; given name(s) and/or initials followed by the family name
  ("John Smith", "J. Smith", "J M Smith", "john smith"); the family or given name after a title
  ("Mr Smith", "DR SMITH", "Mrs Jane Smith": the span starts after the title, which identifies
  nobody); the "SURNAME, Given" / "Surname, G." / DICOM "SURNAME^GIVEN" forms; the surname then
  the initial of a given name ("SMITH J"). Case-insensitive, word-bounded; hyphens and
  apostrophes inside a name are optional ("O'Brien", "OBrien"); each part of a double-barrelled
  name counts too. A family or given name on its own (no title, initial, given name or comma
  form) is flagged only when it is at least three letters long and not in ``NOT_NAMES_ALONE``
  (common English words, report vocabulary, medical eponyms): "Okafor" alone is flagged, "white
  cell count" is not for a patient called White, but "Mrs White" is. A name that is a common word
  must also be capitalised to count next to an initial, a given name that is a common word too,
  or a comma ("A Field" counts, "a field" does not, "may white" does not).
  Real-world forms (issue 9), found as well:
  - accents folded away or added ("Jose Nunez" for José Núñez, "Renée" for Renee; Unicode
    folding, one character for one so offsets stay exact), German "ae/oe/ue" for umlauts;
  - the given name as a nickname and other spellings of either name, from two reviewed data
    files (``pixl_core/config/data/checker_nicknames.csv``, ``checker_name_variants.csv``; see
    the README there) plus Mc/Mac: "Bill Okafor" for William Okafor, "Muhammad" for Mohammed.
    A nickname on its own is not flagged (it needs the surname or a title);
  - OCR misreadings: 0/O, 1/l/I/|, 5/S, 8/B, 2/Z, 6/9/G, c/e, and rn/m, vv/w, cl/d, li/h
    ("PARK1NS0N", "Srnith"), a surname broken by a hyphen or a line ("Parkin-\\nson"), and
    for names of five letters or more one letter substituted, dropped, added or two swapped
    ("Parkisnon"). Such a word must be capitalised (or start with a digit read for a letter)
    and must not be a word of English or of reports (``_VOCABULARY``: "Bones" is not Jones).
    On its own (no title, given name, initial or comma form) a one-letter-off word counts only
    for a name of six letters or more, or five in capitals (a label or OCR).
- ``mrn``, ``accession_number``, ``other_id``: the patient's numbers (the MRN, the accession
  number, other patient IDs) in any grouping: digit runs joined across spaces, dashes, dots or
  slashes are compared with the number's digits ("4001 2345", "400-12345"), a number stored with
  leading zeros is found without them ("1234567" for "01234567"), an ID with a letter prefix
  with or without it ("ACC 1234567", "XR CHEST 1234567"; "XA1234567" is another ID). A number
  may touch letters ("MRN40012345") but not digits; "40012345.5" is another number.
- ``nhs_number``: the patient's NHS number in any grouping (3-3-4 with spaces, dashes or dots,
  4-3-3, 5-5, ...), whether or not it passes the modulus-11 check.
- ``date_of_birth``: the date of birth as 01/02/1950, 1/2/1950, 01-02-1950, 01.02.1950,
  01 / 02 / 1950, 01/02/50, 1950-02-01, 19500201, 01021950, 1 Feb 1950, 1st February 1950,
  01-Feb-1950, February 1, 1950 or Feb 1st 1950. Numeric day/month dates also match with day and
  month swapped (a US-order date of birth is still the date of birth); other dates (the study's)
  are not flagged. The birthday without its year ("1st February", "Feb 1") is flagged when the
  text also gives an age ("aged 74", "74-year-old", "74 yo") or calls it the birthday ("born",
  "DOB", "birthday"; "01/02" only then): with the age it gives the date of birth.
- ``address``: lines of the address, case-insensitive, ignoring punctuation and spacing, with
  common street-type abbreviations ("Rd", "Ave", ...). The street line (house number and street,
  or a house name) is flagged wherever it appears; the other lines (locality, town) are flagged
  only when they adjoin a flagged line, because "London" alone identifies nobody.
- ``postcode``: the postcode with or without its space, in any case.
- ``phone``: the phone number with its digits normalised: spaces, dashes, brackets, and the
  +44 / 0044 / (0) / 0 prefixes do not matter.
- ``institution``: the institution's name, and its name without generic words ("Royal Free" for
  "Royal Free Hospital").

Generic patterns (anyone's identifiers):

- ``nhs_number_pattern``: 10 digits (or 3-3-4 with spaces, dashes or dots) that pass the NHS
  modulus-11 check.
- ``postcode_pattern``: a string in the shape of a UK postcode (the official outward and inward
  letter rules, so "T2 5MM" or "L1 2CM" are not postcodes), word-bounded, any case; an inward code
  that reads as a lower-case ordinal ("T5 6th") is skipped.
- ``phone_pattern``: a UK number: 0 then 9 or 10 digits, starting 01, 02, 03 or 07, or the same
  in +44 form, with spaces, dashes or brackets.
- ``email``: an e-mail address.

A span that is the patient's own identifier is reported with the patient-specific kind only, and
an NHS-number shape inside a phone number ("+44 161 496 0704") is the phone number only.

Context: eponyms and common words. "Parkinson's disease", "Graves' disease", "Swan-Ganz
catheter", "Kerley B lines", "non-Hodgkin lymphoma", "Harrington rods", "the angle of Louis",
"circle of Willis", "tetralogy of Fallot" are not names, even when the patient is called
Parkinson, Graves or Louis (or one letter from it: Coles and "Colles' fracture"). The rule:
eponyms are in ``NOT_NAMES_ALONE``, so they are never flagged on their own; and a name written
with only initials ("B Hodgkin lymphoma") or on its own is not flagged when it is followed (after
an optional possessive or hyphenated partner name) by a medical word ("disease", "catheter",
"lines", "oesophagus", ...) or preceded by "<anatomy or eponym word> of" ("angle of", "circle
of", "pouch of"). "X RAY" is the examination, not Mr Ray. A title, a given name or the "SURNAME,
Given" form always makes it a name: "Mr Parkinson" is flagged. Common words that are surnames
("Wall", "Cage", "Swallow", "Field") are flagged only in a name's company ("Mrs Wall").

Limits, stated plainly: a bare surname that is also an eponym or a common word ("Parkinson was
reviewed", "Wall attended") is not caught by this method; two misreadings in a name of fewer
than nine letters, a misspelling together with a misreading, a misspelt name written in lower
case, a name split by a space ("PARKIN SON"), and a four-letter name one letter off are not
caught; a misspelling of a short name that is itself another word is let through by design.
Measured on ``stack/synthetic/checker_variants.py`` (its own corpus of such forms, with an
answer key; ``tests/unit/test_checker_variants.py``).

Findings carry offsets only, never the matched text, so that results can be logged and stored
without re-creating the leak they describe.

Speed: the generic patterns are compiled once; the patient's names are found with ``str.find``
(compiling a pattern per patient would cost more than the whole check); approximate names are
looked for only where half of the name's OCR skeleton occurs; the date patterns run only around
the year of birth; and only an address whose street appears in the report gets a pattern of its
own. About 0.25-0.3 ms for a typical report on one core, CPU time
(``benchmarks/checker_bench.py``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from typing import NamedTuple

# Recorded with each check run's metrics, so a change in flag rates can be traced to a change
# here. Bump it whenever what is flagged changes.
CHECKER_VERSION = "2"

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
ACCESSION_NUMBER = "accession_number"
OTHER_ID = "other_id"
INSTITUTION = "institution"

PATIENT_KINDS = (
    NAME, MRN, NHS_NUMBER, DATE_OF_BIRTH, ADDRESS, POSTCODE, PHONE, ACCESSION_NUMBER, OTHER_ID,
    INSTITUTION,
)  # fmt: skip
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
    accession_number: str | None = None
    other_ids: str | None = None
    institution: str | None = None


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
    "oesophagus", "esophagus", "diverticulum", "rod", "rods", "nail", "nails", "plate", "plates",
    "screw", "screws", "joint", "joints", "encephalopathy", "dementia", "breathing",
    "respiration", "respirations", "ring", "rings", "duct", "canal", "fixation", "prosthesis",
    "arthroplasty", "osteotomy", "pouch", "loop", "malformation", "bursa", "cleft", "notch",
    "nerve", "crest", "tubercle", "tuberosity", "crisis", "reaction", "fistula", "approach",
    "incision", "technique", "method", "scale", "chart", "rule", "rules", "disorder",
    "disorders", "contracture", "dystrophy", "sclerosis", "paralysis", "arteritis",
    "thyroiditis", "encephalitis", "oedema", "edema", "ophthalmopathy", "eye", "habitus",
    "diathesis", "anastomosis", "shunts", "clip", "clips", "coil", "coils", "port", "ports",
    "pump", "balloon", "mask", "needle", "forceps", "retractor", "hump", "beak", "trisomy",
)  # fmt: skip

# "<word> of <Name>": the angle of Louis, the circle of Willis, tetralogy of Fallot.
_OF_WORDS = (
    "angle", "circle", "pouch", "tetralogy", "pentalogy", "triad", "ligament", "sphincter",
    "organ", "loop", "ampulla", "foramen", "foramina", "canal", "islets?", "space", "triangle",
    "ducts?", "sinus", "crypts?", "signs?", "nodes?", "lines?", "vein", "artery", "fossa",
    "tubercle", "bundle", "bands?", "valves?", "membrane", "capsule", "columns?", "glands?",
    "cells?", "law", "disease", "syndrome", "fracture", "operation", "procedure", "manoeuvre",
    "maneuver", "test", "classification", "criteria", "bursa", "recess", "plexus", "body",
    "bodies", "corpuscles?", "fibres?", "fibers?", "layer", "zone", "point", "tract", "nucleus",
)  # fmt: skip
_MEDICAL_BEFORE = re.compile(
    r"(?<![^\W\d_])(?:" + "|".join(_OF_WORDS) + r")\s+of\s+(?:the\s+)?\Z", re.IGNORECASE
)

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
    cage swallow power lower wedge root stem pole frame trace mole cave crane bowl steel banks
    street lung shadow rod plate screw nail coil
    """
)

# Words that are never a misspelt or misread name: a word one letter from the patient's name
# ("Bones" for Jones, "Crown" for Brown) is that word. Common words, report vocabulary,
# eponyms and medical words, the report words below, and the reviewed list of English words one
# letter from common names (pixl_core/config/data/checker_common_words.txt).
_VOCABULARY = (
    NOT_NAMES_ALONE
    | frozenset(MEDICAL_WORDS)
    | _word_set(
        """
        bones lines lobes zones views films ribs nodes bases angles margins borders sulci
        apices fields markings vessels contours costophrenic cardiophrenic hemidiaphragm
        hemidiaphragms consolidation atelectasis pneumothorax pneumonia effusions opacities
        opacification nodular reticular interstitial alveolar bronchial bronchi bronchiectasis
        emphysema fibrosis granulomata calcified calcification densities density hyperexpanded
        hyperinflated cardiomegaly cardiomediastinal mediastinal paratracheal perihilar
        subsegmental segmental posterior anterior superior inferior proximal distal bilateral
        unilateral peripheral apical basal lingula lingular hilar clavicle clavicles scapula
        scapulae humerus humeral sternum sternal sternotomy thoracic lumbar cervical vertebra
        vertebrae vertebral osteopenia osteopenic degenerative spondylosis kyphosis scoliosis
        chronic subacute noted seen shown visible identified present absent suggest suggests
        suggested suggestive consistent keeping likely unlikely possible probable query
        recommend recommended advised advise correlate correlation clinical clinically compared
        comparison previous prior since stable unchanged improved improving worsening worsened
        increased decreased reduced raised elevated enlarged widened narrowed displaced
        projected projects projecting overlying underlying adjacent within without beyond
        between along across behind above below around tip tips position positioned satisfactory
        appropriate inserted removed sited tube tubes catheter catheters wires wire leads lead
        pacemaker defibrillator sternotomy clips staples drains drain stent stents valve valves
        mobile portable erect supine semi lateral frontal oblique inspiration expiration
        rotated rotation penetrated exposure artefact artifact marker markers label labelled
        patient patients report reported reporting radiologist radiograph radiographs radiology
        consultant registrar clinician clinicians referrer ward wards department hospital
        thanks dictated verified signed addendum impression findings technique history details
        indication examination exam chest thorax abdomen pelvis heart hearts lung lungs
        breathless breathlessness cough fever sepsis pain trauma fall falls collapse
        """
    )
)
_VOCABULARY |= _word_set(
    "\n".join(
        line
        for line in resources.files("pixl_core.config")
        .joinpath("data/checker_common_words.txt")
        .read_text(encoding="utf-8")
        .splitlines()
        if not line.startswith("#")
    )
)
_X_RAY_NAMES = frozenset({"ray", "rays"})
_X_BEFORE = re.compile(r"(?<![^\W\d_])x[ \t]?-?[ \t]?\Z", re.IGNORECASE)

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
_COMMA = re.compile(r"\s*,\s*|\^")  # "SMITH, John" and DICOM's "SMITH^JOHN"
_SPACES_AND_DOTS = re.compile(r"[.\s]*")
_TRAILING_INITIAL = re.compile(r"[ \t]+([A-Z])\.?(?![^\W_])")
_SPACES = re.compile(r"\s*")
_WORD_NEXT = re.compile(r"\s+[0-9a-z]")  # lower case or a number next: not part of a name

_MEDICAL_AFTER = re.compile(
    r"(?:[-\u2013]" + _L + r"+)*"  # hyphenated partner: Swan-Ganz
    r"(?:['\u2019]s|s['\u2019]|['\u2019](?=\s))?"  # possessive: Parkinson's, Graves'
    r"\s*\(?\s*(?:(?-i:[A-Z])\s+)?"  # "Kerley B lines", "(Kerley B) lines" is caught as bare
    r"(?:" + "|".join(sorted(set(MEDICAL_WORDS), key=len, reverse=True)) + r")(?!" + _L + ")",
    re.IGNORECASE,
)

# NHS number: 10 digits, optionally as 3-3-4 with single spaces or dashes, or dots, between the
# groups. (The patient's own is found in any grouping, with the other identifier numbers.)
_NHS_RE = re.compile(
    r"(?<![\d.])\d{3}(?:[ \t]?-?[ \t]?\d{3}[ \t]?-?[ \t]?|\.\d{3}\.)\d{4}(?![\d]|\.\d)"
)

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
    r"(?P<iy>\d{4})[ \t]?(?P<isep>[-/.])[ \t]?(?P<im>\d{1,2})[ \t]?(?P=isep)[ \t]?"
    r"(?P<id>\d{1,2})"
    r"|(?P<nd>\d{1,2})[ \t]?(?P<nsep>[-/.])[ \t]?(?P<nm>\d{1,2})[ \t]?(?P=nsep)[ \t]?"
    r"(?P<ny>\d{4}|\d{2})"
    r"|(?P<compact>\d{8})"
    r"|(?P<td>\d{1,2})(?:st|nd|rd|th)?[\s\-/.]*(?:of\s+)?(?P<tm>" + _MONTH + r")(?![a-z])\.?"
    r"[\s\-/.,]*(?P<ty>\d{4}|\d{2})"
    r"|(?P<um>" + _MONTH + r")(?![a-z])\.?\s*(?P<ud>\d{1,2})(?:st|nd|rd|th)?,?\s*(?P<uy>\d{4})"
    r")(?![\w/\-]|\.\d)",
    re.IGNORECASE,
)
# A birthday: the day and month without a year. With the age it gives the date of birth.
_BIRTHDAY_RE = re.compile(
    r"(?<![\w/.\-])(?:"
    r"(?P<td>\d{1,2})(?:st|nd|rd|th)?[\s\-/.]*(?:of\s+)?(?P<tm>" + _MONTH + r")(?![a-z])"
    r"|(?P<um>" + _MONTH + r")(?![a-z])\.?\s*(?P<ud>\d{1,2})(?:st|nd|rd|th)?(?![\w])"
    r"|(?P<nd>\d{1,2})(?P<nsep>[-/.])(?P<nm>\d{1,2})(?![\w/\-]|\.\d)"
    r")(?![\s\-/.,]*\d)",
    re.IGNORECASE,
)
_MONTH_ABBREVIATIONS = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
_BIRTHDAY_WORDS = re.compile(r"birth|born|d\.?o\.?b")
_AGE_RE = re.compile(
    r"(?<![\w])(?:aged?\s*:?\s*\d{1,3}(?!\d)|\d{1,3}\s*-?\s*(?:years?|yrs?|y)\s*-?\s*old(?![a-z])"
    r"|\d{1,3}\s*y/?o(?![a-z]))",
    re.IGNORECASE,
)
_BIRTHDAY_WORD = re.compile(
    r"(?:birthday|born|b\.|d\.?o\.?b\.?|date of birth)\W{0,3}(?:on\s+)?(?:the\s+)?\Z",
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
    lowered = _fold(text)
    _find_names(text, lowered, identifiers, findings)
    if identifiers.institution and identifiers.institution.strip():
        _find_institution(lowered, identifiers.institution, findings)
    numbers, other_ids = _id_targets(identifiers)
    if numbers:
        _find_identifier_numbers(text, numbers, findings)
    for kind, value in other_ids:
        _find_mrn(text, lowered, value, findings, kind)
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


def _fold_table() -> dict[int, str]:
    """Accented Latin letters to their base letter, one character for one, so that offsets into
    the folded text are offsets into the original."""
    table: dict[int, str] = {}
    for code in range(0xC0, 0x250):
        base = unicodedata.normalize("NFKD", chr(code))[:1]
        if base != chr(code) and base.isascii() and base.isalpha():
            table[code] = base.lower()
    extra = {"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "\u0131": "i", "æ": "a", "œ": "o", "ß": "s"}
    extra |= {"þ": "t", "ð": "d", "\u2019": "'", "\u2018": "'"}
    table.update({ord(k): v for k, v in extra.items()})
    return table


_FOLD = _fold_table()

# What OCR and tired eyes confuse, mapped to one representative (one character for one, so the
# "skeleton" of a text has the offsets of the text): 0/o, 1/l/i/|, 5/s, 8/b, 2/z, 6/9/g, c/e.
_SKELETON = str.maketrans("01i|58269c", "olllsbzgge")
# Confusions of two characters for one (rn/m, vv/w, li/h, cl/d), applied to the skeleton of a candidate
# word and of the name before comparing them (in the skeleton "cl", "ci" and "c1" are "el", "li" is "ll").
_OCR_PAIRS = (("rn", "m"), ("vv", "w"), ("ll", "h"), ("el", "d"))


def _fold(value: str) -> str:
    """Lower case with accents folded, one character for one."""
    lowered = value.lower()
    if len(lowered) != len(value):  # a few Unicode letters change length when lower-cased
        lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in value)
    return lowered if lowered.isascii() else lowered.translate(_FOLD)


def _ocr_forms(word: str) -> tuple[str, str]:
    """Two readings of ``word`` (folded) to compare: its skeleton, and the skeleton with the
    two-for-one confusions collapsed. Both are needed: collapsing "rn" to "m" makes "Fernandes"
    "Femandes", two edits from its typo "Feranndes"."""
    plain = word.translate(_SKELETON)
    paired = plain
    for pair, single in _OCR_PAIRS:
        if pair in paired:
            paired = paired.replace(pair, single)
    return plain, paired


def _reads_as(word: tuple[str, str], name: tuple[str, str], edits: bool) -> int:
    """1 when ``word`` is an OCR reading of ``name``, 2 when one edit away (if ``edits``)."""
    if word[0] == name[0] or word[1] == name[1]:
        return 1
    # Edits on the plain skeleton only: collapsing pairs shortens a name ("lindqvist" reads
    # "hndqvist"), which would bring other words within one edit of it.
    if edits and _within_one_edit(word[0], name[0]):
        return 2
    return 0


def _within_one_edit(a: str, b: str) -> bool:
    """Equal, or one substitution, insertion, deletion or swap of neighbours apart."""
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    i = 0
    while i < la and i < lb and a[i] == b[i]:
        i += 1
    if la == lb:
        if a[i + 1 :] == b[i + 1 :]:
            return True
        return i + 1 < la and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    if la > lb:
        return a[i + 1 :] == b[i:]
    return a[i:] == b[i + 1 :]


def _load_groups(resource: str) -> dict[str, frozenset[str]]:
    """A reviewed CSV of name groups (one group a row): each name -> every name it shares a
    row with. Read once, at import."""
    text = resources.files("pixl_core.config").joinpath(resource).read_text(encoding="utf-8")
    groups: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        row = {_fold(word.strip()) for word in line.split(",") if word.strip()}
        for word in row:
            groups.setdefault(word, set()).update(row - {word})
    return {word: frozenset(others) for word, others in groups.items()}


NICKNAMES_RESOURCE = "data/checker_nicknames.csv"
NAME_VARIANTS_RESOURCE = "data/checker_name_variants.csv"
_NICKNAMES = _load_groups(NICKNAMES_RESOURCE)
_SPELLINGS = _load_groups(NAME_VARIANTS_RESOURCE)


def _letter_tokens(value: str) -> list[str]:
    return _LETTER_RUNS.findall(_fold(value))


def _spelling_variants(raw: str, token: str) -> set[str]:
    """Other ways the same name is written: the reviewed spellings, Mc/Mac, German ae/oe/ue for
    umlauts (and the plain vowel for a record that already spells them out)."""
    variants = set(_SPELLINGS.get(token, ()))
    if token.startswith("mc") and len(token) > 4:
        variants.add("mac" + token[2:])
    elif token.startswith("mac") and len(token) > 5:
        variants.add("mc" + token[3:])
    spelled = raw.lower().replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
    if spelled != raw.lower():
        variants.update(_LETTER_RUNS.findall(_fold(spelled)))
    if len(token) >= 5:
        for pair, vowel in (("ae", "a"), ("oe", "o"), ("ue", "u")):
            if pair in token[1:]:
                variants.add(token[0] + token[1:].replace(pair, vowel))
    variants.discard(token)
    return variants


@dataclass
class _Names:
    """The patient's names as the checker looks for them (all folded, lower case)."""

    families: list[list[str]]  # the record's family name(s) and each part of a double-barrel
    givens: list[list[str]]  # the record's given names, each on its own too
    family_variants: list[list[str]]  # other spellings of the family name
    given_variants: list[list[str]]  # nicknames and other spellings of the given names
    approximate: list[tuple[str, bool]]  # (name, is_family) looked for approximately


def _name_phrases(ids: PatientIdentifiers) -> _Names:
    """Family and given names of the patient, each as a list of folded letter runs."""
    families: list[list[str]] = []
    givens: list[list[str]] = []
    raws: dict[str, str] = {}  # token -> the record's spelling (for umlauts)

    def tokens(value: str) -> list[str]:
        found = _letter_tokens(value)
        for raw in _LETTER_RUNS.findall(value):
            raws.setdefault(_fold(raw), raw)
        return found

    if ids.family_name and ids.family_name.strip():
        families.append(tokens(ids.family_name))
    if ids.given_name and ids.given_name.strip():
        givens.append(tokens(ids.given_name))
    name = (ids.name or "").strip()
    if name:
        if "^" in name:  # DICOM PN: FAMILY^Given^Middle^Prefix^Suffix
            parts = name.split("^")
            families.append(tokens(parts[0]))
            givens.extend(tokens(p) for p in parts[1:3])
        elif "," in name:  # "SMITH, John"
            family, _, given = name.partition(",")
            families.append(tokens(family))
            givens.append([t for t in tokens(given) if not re.fullmatch(_TITLES, t)])
        else:  # "John Michael Smith", possibly with a title
            words = [w for w in name.split() if not re.fullmatch(_TITLES + r"\.?", w.lower())]
            known = [" ".join(f) for f in families]
            joined = " ".join(" ".join(tokens(w)) for w in words)
            for family in known:  # family name given separately: the rest is given names
                if family and joined.endswith(family):
                    givens.append(joined[: -len(family)].split())
                    break
            else:
                if words:
                    families.append(tokens(words[-1]))
                    givens.append(tokens(" ".join(words[:-1])))
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
    singles = [p[0] for p in family_set if len(p) == 1]
    family_variants = [[v] for t in singles for v in sorted(_spelling_variants(raws.get(t, t), t))]
    family_variants = [v for v in family_variants if v not in family_set]
    given_singles = [p[0] for p in given_set if len(p) == 1]
    given_variants: list[list[str]] = []
    for token in given_singles:
        for variant in sorted(
            _NICKNAMES.get(token, frozenset()) | _spelling_variants(raws.get(token, token), token)
        ):
            if len(variant) >= 2 and [variant] not in given_set + given_variants + family_set:
                given_variants.append([variant])
    approximate = [(t, True) for t in singles if len(t) >= 4]
    approximate += [(t, False) for t in given_singles if len(t) >= 4 and t not in singles]
    return _Names(family_set, given_set, family_variants, given_variants, approximate)


class _Occurrence(NamedTuple):
    """One place where one of the patient's names is written, as a whole word."""

    start: int
    end: int
    common: bool  # the name is also a common word ("May", "White"): needs a capital to count
    key: str  # the name it matched (folded letters), whatever the text's spelling
    approximate: int = 0  # 0 exact, 1 an OCR reading or broken word, 2 one edit away


def _occurrences(lowered: str, phrases: list[list[str]]) -> list[_Occurrence]:
    """Every whole-word occurrence of the phrases.

    Found with ``str.find`` rather than a regex compiled for this patient: compiling costs more
    than checking the report, and most reports do not contain the name at all.
    """
    found: list[_Occurrence] = []
    for phrase in phrases:
        first = phrase[0]
        common = len(phrase) == 1 and first in NOT_NAMES_ALONE
        key = "".join(phrase)
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
                    found.append(_Occurrence(position, end, common, key))
            position = lowered.find(first, position + 1)
    return found


def _word_around(skeleton: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and skeleton[start - 1].isalpha():
        start -= 1
    while end < len(skeleton) and skeleton[end].isalpha():
        end += 1
    return start, end


def _approximate_occurrences(
    text: str, lowered: str, skeleton: str, name: str
) -> list[_Occurrence]:
    """Words that are ``name`` misread by OCR, mistyped by one letter, or broken across a line.

    A word one edit away from a name keeps one half of the name intact (the edit falls in one
    half), so only the places where either half of the name's skeleton occurs are looked at:
    two ``str.find`` scans per name instead of comparing every word of the text.
    """
    target = _ocr_forms(name)
    sk_name = target[0]
    half = len(sk_name) // 2
    common = name in NOT_NAMES_ALONE
    editable = len(sk_name) >= 5
    found: list[_Occurrence] = []
    seen: set[int] = set()
    if editable:
        pieces = [sk_name[:half], sk_name[half:]]
        # two letters each read as two ("SRNITLI" for SMITH): a half so misread
        pieces += _split_readings(sk_name[:half]) + _split_readings(sk_name[half:])
        # two letters swapped across the middle: the whole name so swapped
        pieces.append(sk_name[: half - 1] + sk_name[half] + sk_name[half - 1] + sk_name[half + 1 :])
        if len(sk_name) >= 9:  # two misreadings, one in each half, leave one third intact
            third = len(sk_name) // 3
            pieces += [sk_name[:third], sk_name[third : 2 * third], sk_name[2 * third :]]
    else:
        # A short name is only read, never edited: its skeleton, or a letter of it read as
        # two ("Rnary" for Mary), or two halves across a break ("Ma-\nry").
        pieces = [sk_name, *_split_readings(sk_name), sk_name[:half], sk_name[half:]]
    for piece in pieces:
        position = skeleton.find(piece)
        while position != -1:
            start, end = _word_around(skeleton, position, position + len(piece))
            position = skeleton.find(piece, position + 1)
            if start in seen:
                continue
            seen.add(start)
            word = lowered[start:end]
            if word == name:
                continue  # an exact occurrence: found already
            token = _ocr_forms(word)
            level = _reads_as(token, target, editable)
            if level:
                if _is_vocabulary(word):
                    continue  # "Bones", "Crown": a real word one letter from the name
            else:
                joined = _joined_across_break(lowered, skeleton, start, end, token, target)
                if joined is None:
                    continue
                start, end, level = joined
            if not (text[start].isupper() or text[start].isdigit()):
                continue  # a misspelt name is still written with a capital
            found.append(_Occurrence(start, end, common, name, level))
    return found


_SPLIT_LETTERS = {"m": "rn", "w": "vv", "d": "el", "h": "ll"}


def _split_readings(skeleton: str) -> list[str]:
    """The skeleton with one letter read as two ("m" as "rn"), one variant per such letter."""
    return [
        skeleton[:i] + _SPLIT_LETTERS[ch] + skeleton[i + 1 :]
        for i, ch in enumerate(skeleton)
        if ch in _SPLIT_LETTERS
    ]


_BREAK_AFTER = re.compile(r"-[ \t]*(?:\r?\n[ \t]*)?|[ \t]*\r?\n[ \t]*")
_BREAK_BEFORE = re.compile(r"(?:-[ \t]*(?:\r?\n[ \t]*)?|[ \t]*\r?\n[ \t]*)\Z")


def _joined_across_break(
    lowered: str,
    skeleton: str,
    start: int,
    end: int,
    token: tuple[str, str],
    target: tuple[str, str],
) -> tuple[int, int, int] | None:
    """A name broken by a hyphen or a line ("Parkin-\\nson"): the two words read as one."""
    part, whole_name = token[0], target[0]
    if len(part) < 2 or len(part) >= len(whole_name):
        return None
    if whole_name.startswith(part):
        joint = _BREAK_AFTER.match(lowered, end)
        if joint is None or joint.end() == end:
            return None
        _, after = _word_around(skeleton, joint.end(), joint.end())
        whole = _ocr_forms(lowered[start:end] + lowered[joint.end() : after])
        if _reads_as(whole, target, len(whole_name) >= 5):
            return start, after, 1
    elif whole_name.endswith(part):
        joint = _BREAK_BEFORE.search(lowered, max(0, start - 6), start)
        if joint is None or joint.start() == start:
            return None
        before, _ = _word_around(skeleton, joint.start(), joint.start())
        whole = _ocr_forms(lowered[before : joint.start()] + lowered[start:end])
        if _reads_as(whole, target, len(whole_name) >= 5):
            return before, end, 1
    return None


def _is_vocabulary(word: str) -> bool:
    """A word of English or of reports (or its plural): never a misspelt name."""
    return (
        word in _VOCABULARY
        or word + "s" in _VOCABULARY  # "Margin": the list has "margins"
        or (word.endswith("s") and word[:-1] in _VOCABULARY)
        or (word.endswith("es") and word[:-2] in _VOCABULARY)
    )


def _non_overlapping(occurrences: list[_Occurrence]) -> list[_Occurrence]:
    """Exact occurrences win over approximate ones, then the longest where they overlap."""
    occurrences.sort(key=lambda o: (o.approximate, o.start, -o.end))
    kept: list[_Occurrence] = []
    for occurrence in occurrences:
        if not any(k.start < occurrence.end and occurrence.start < k.end for k in kept):
            kept.append(occurrence)
    kept.sort(key=lambda o: (o.start, -o.end))
    return kept


def _find_names(text: str, lowered: str, ids: PatientIdentifiers, findings: list[Finding]) -> None:
    names = _name_phrases(ids)
    family_found = _occurrences(lowered, names.families + names.family_variants)
    given_found = _occurrences(lowered, names.givens + names.given_variants)
    if names.approximate:
        skeleton = lowered.translate(_SKELETON)
        for name, is_family in names.approximate:
            hits = _approximate_occurrences(text, lowered, skeleton, name)
            (family_found if is_family else given_found).extend(hits)
    family_hits = _non_overlapping(family_found)
    given_hits = [
        g
        for g in _non_overlapping(given_found)
        if not any(f.start < g.end and g.start < f.end for f in family_hits)
    ]
    if not family_hits and not given_hits:
        return
    distinctive = {
        "".join(p)
        for p in names.families + names.family_variants + names.givens
        if sum(map(len, p)) >= 3 and not (len(p) == 1 and p[0] in NOT_NAMES_ALONE)
    }
    initials = {g[0][0] for g in names.givens}
    given_by_end = {g.end: g for g in given_hits}
    given_by_start = {g.start: g for g in given_hits}
    family_starts = {f.start for f in family_hits}
    first = len(findings)

    def capitalised(hit: _Occurrence) -> bool:
        return not hit.common or text[hit.start].isupper()

    def alone_is_name(hit: _Occurrence) -> bool:
        """A name with nothing around it that makes it one: only a distinctive name, not
        an eponym or a word used in its ordinary sense."""
        if hit.key not in distinctive:
            return False
        # A short name one letter off is too often another word; in capitals (a label, a
        # description, OCR) it is not a sentence's first word.
        if (
            hit.approximate == 2
            and len(hit.key) < 6
            and (len(hit.key) < 5 or not text[hit.start : hit.end].isupper())
        ):
            return False
        return not _MEDICAL_AFTER.match(text, hit.end) and not _medical_before(text, hit.start)

    for hit in family_hits:
        if hit.key in _X_RAY_NAMES and _X_BEFORE.search(text, max(0, hit.start - 3), hit.start):
            continue  # "X Ray", "X-RAY": the examination, not Mr Ray
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
        # "SMITH J", "Smith J.": the surname then the initial of a given name.
        trailing = _TRAILING_INITIAL.match(text, hit.end) if text[hit.start].isupper() else None
        if (
            trailing is not None
            and trailing.group(1).lower() in initials
            and not _MEDICAL_AFTER.match(text, hit.end)  # "Kerley A lines"
            and hit.key not in EPONYMS  # "(Kerley B) lines"
        ):
            findings.append(Finding(NAME, hit.start, trailing.end()))
        elif alone_is_name(hit):
            findings.append(Finding(NAME, hit.start, hit.end))

    # Given names not already part of a full name found above.
    full_names = findings[first:]
    for hit in given_hits:
        if any(f.start <= hit.start and hit.end <= f.end for f in full_names):
            continue
        if _TITLE_BEFORE.search(text, max(0, hit.start - 16), hit.start):
            findings.append(Finding(NAME, hit.start, hit.end))
            continue
        if alone_is_name(hit):
            findings.append(Finding(NAME, hit.start, hit.end))


def _medical_before(text: str, start: int) -> bool:
    """ "the angle of Louis", "circle of Willis", "tetralogy of Fallot": an eponym."""
    return start > 3 and _MEDICAL_BEFORE.search(text, max(0, start - 40), start) is not None


# --- institution ------------------------------------------------------------------------------

# Words that name no particular place: "Royal Free Hospital" is found as "Royal Free" too.
_INSTITUTION_GENERIC = _word_set(
    """
    the hospital hospitals nhs trust foundation university universities infirmary clinic clinics
    centre center medical health healthcare teaching imaging radiology department dept of and
    general district community services service unit
    """
)


def _find_institution(lowered: str, institution: str, findings: list[Finding]) -> None:
    """The institution's name, and its name without the generic words around it."""
    tokens = _letter_tokens(institution)
    phrases = [tokens] if tokens else []
    core = list(tokens)
    while core and core[0] in _INSTITUTION_GENERIC:
        core.pop(0)
    while core and core[-1] in _INSTITUTION_GENERIC:
        core.pop()
    distinctive = [t for t in core if t not in NOT_NAMES_ALONE and len(t) >= 4]
    if core and core != tokens and (len(core) >= 2 or distinctive):
        phrases.append(core)
    for hit in _non_overlapping(_occurrences(lowered, phrases)):
        findings.append(Finding(INSTITUTION, hit.start, hit.end))


# --- MRN, accession number, other IDs: identifier numbers -----------------------------------

# Between two groups of one identifier: one or two spaces, or a dash, dot or slash with optional
# spaces ("4001 2345", "943.476.5919", "943 - 476 - 5919").
_GROUP_GAP = re.compile(r"[ \t]{1,2}|[ \t]?[-./][ \t]?")
_PREFIX_GAP = re.compile(r"[ \t]?[-./#:]?[ \t]?\Z")
_ID_SHAPE = re.compile(r"([A-Z]*)(\d+)")


class _IdTarget(NamedTuple):
    kind: str
    prefix: str  # letters written before the digits ("ACC"), upper case; "" for a number


def _id_targets(
    ids: PatientIdentifiers,
) -> tuple[dict[str, list[_IdTarget]], list[tuple[str, str]]]:
    """The patient's identifier numbers, by their digits; and the IDs of another shape (letters
    after digits), which are looked for as whole tokens."""
    by_digits: dict[str, list[_IdTarget]] = {}
    other: list[tuple[str, str]] = []
    values = [(MRN, ids.mrn), (ACCESSION_NUMBER, ids.accession_number)]
    values += [(OTHER_ID, v) for v in re.split(r"[\\,;]", ids.other_ids or "")]
    nhs = _nhs_digits(ids.nhs_number)
    if nhs is not None:
        by_digits.setdefault(nhs, []).append(_IdTarget(NHS_NUMBER, ""))
    for kind, value in values:
        if not value or not value.strip():
            continue
        key = "".join(ch for ch in value.upper() if ch.isalnum())
        shape = _ID_SHAPE.fullmatch(key)
        if shape is None:
            if key:
                other.append((kind, value.strip()))
            continue
        prefix, digits = shape.groups()
        by_digits.setdefault(digits, []).append(_IdTarget(kind, prefix))
        # A number stored with leading zeros is often written without them ("01234567" as
        # "1234567"), and an ID with a letter prefix often as its digits alone.
        stripped = digits.lstrip("0")
        if stripped != digits and len(stripped) >= 5:
            by_digits.setdefault(stripped, []).append(_IdTarget(kind, prefix))
    return by_digits, other


def _find_identifier_numbers(
    text: str, targets: dict[str, list[_IdTarget]], findings: list[Finding]
) -> None:
    """The patient's numbers, whatever their grouping: digit runs joined across spaces, dashes,
    dots or slashes are compared with each number's digits.

    A number may touch letters ("MRN40012345") but not digits; "40012345.5" is another number.
    An ID with a letter prefix is found with its prefix ("ACC 1234567") or, when no letter
    touches it, as its digits alone ("XR CHEST 1234567"); "XA1234567" is another ID.
    """
    runs = [(m.start(), m.end()) for m in _DIGIT_RUNS.finditer(text)]
    if not runs:
        return
    longest = max(map(len, targets))
    prefixes = {digits[:i] for digits in targets for i in range(1, len(digits) + 1)}
    for index, (start, end) in enumerate(runs):
        digits, last = text[start:end], index
        if digits not in prefixes:
            continue  # most numbers in a report start no identifier of this patient
        if start >= 2 and text[start - 1] in ".," and text[start - 2].isdigit():
            continue  # inside a decimal or a dotted number started earlier
        while digits in prefixes:
            hits = targets.get(digits)
            if hits and not (end + 1 < len(text) and text[end] in ".," and text[end + 1].isdigit()):
                for target in hits:
                    begin = _id_start(text, start, target)
                    if begin is not None:
                        findings.append(Finding(target.kind, begin, end))
            if len(digits) >= longest or last + 1 >= len(runs):
                break
            next_start, next_end = runs[last + 1]
            if not _GROUP_GAP.fullmatch(text, end, next_start):
                break
            digits += text[next_start:next_end]
            end, last = next_end, last + 1


def _id_start(text: str, start: int, target: _IdTarget) -> int | None:
    """Where the ID whose digits start at ``start`` begins, or None if it is not this ID."""
    if not target.prefix:
        return start
    gap = _PREFIX_GAP.search(text, max(0, start - 3), start)
    letters_end = gap.start() if gap else start
    letters_start = letters_end
    while letters_start > 0 and text[letters_start - 1].isalpha():
        letters_start -= 1
    if text[letters_start:letters_end].upper() == target.prefix and (
        letters_start == 0 or not text[letters_start - 1].isalnum()
    ):
        return letters_start
    if start > 0 and text[start - 1].isalpha():
        return None  # another ID's digits: "XA1234567"
    return start


def _find_mrn(text: str, lowered: str, mrn: str, findings: list[Finding], kind: str = MRN) -> None:
    """An ID of another shape (letters after digits) as a whole token: no letter or digit may
    continue it on either side."""
    needle = _fold(mrn)
    first_digit, last_digit = needle[0].isdigit(), needle[-1].isdigit()
    position = lowered.find(needle)
    while position != -1:
        end = position + len(needle)
        before = lowered[position - 1] if position else ""
        after = lowered[end] if end < len(lowered) else ""
        ok_before = not before or (not before.isdigit() if first_digit else not before.isalnum())
        ok_after = not after or (not after.isdigit() if last_digit else not after.isalnum())
        if ok_before and ok_after:
            findings.append(Finding(kind, position, end))
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


def _windows(text: str, needle: str, before: int, after: int) -> Iterator[tuple[int, int]]:
    """Stretches of ``text`` around each occurrence of ``needle``, overlapping ones merged."""
    start = end = -1
    position = text.find(needle)
    while position != -1:
        low, high = max(0, position - before), min(len(text), position + len(needle) + after)
        if low <= end:
            end = high
        else:
            if end != -1:
                yield start, end
            start, end = low, high
        position = text.find(needle, position + 1)
    if end != -1:
        yield start, end


def _find_date_of_birth(text: str, dob: date, findings: list[Finding]) -> None:
    """Every written form of the date of birth contains the last two digits of its year, so
    the date patterns run only around those (a report mentions many numbers, few of them
    that year): the same matches as over the whole text, at a fraction of the cost."""
    for low, high in _windows(text, f"{dob.year % 100:02d}", 30, 22):
        _find_dates_in(text, low, high, dob, findings)
    _find_birthday(text, dob, findings)


def _find_dates_in(text: str, low: int, high: int, dob: date, findings: list[Finding]) -> None:
    # endpos a little past the window so that the end-of-date lookahead sees what follows.
    for match in _DATE_RE.finditer(text, low, min(len(text), high + 3)):
        if match.end() > high:
            break
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


def _find_birthday(text: str, dob: date, findings: list[Finding]) -> None:
    """The birthday (day and month, no year) when the text also gives the age or says it is the
    birthday: "aged 74, birthday 1st February". A day and month alone is often the study's
    date, so it needs one of the two; "01/02" (also a fraction) needs the word."""
    lowered = text.lower()
    month = _MONTH_ABBREVIATIONS[dob.month - 1]
    windows = list(_windows(lowered, month, 12, 14))
    if _BIRTHDAY_WORDS.search(lowered):
        windows = [(0, len(text))]  # "born 01/02": the numeric forms need the word
    aged: bool | None = None
    for match in (m for low, high in windows for m in _BIRTHDAY_RE.finditer(text, low, high)):
        g = match.groupdict()
        if g["nd"]:
            day, month = int(g["nd"]), int(g["nm"])
            if not ((day, month) == (dob.day, dob.month) or (month, day) == (dob.day, dob.month)):
                continue
            if not _BIRTHDAY_WORD.search(text, max(0, match.start() - 24), match.start()):
                continue
        else:
            name, number = (g["tm"], g["td"]) if g["tm"] else (g["um"], g["ud"])
            if (_MONTHS[name[:3].lower()], int(number)) != (dob.month, dob.day):
                continue
            if not _BIRTHDAY_WORD.search(text, max(0, match.start() - 24), match.start()):
                if aged is None:
                    aged = _AGE_RE.search(text) is not None
                if not aged:
                    continue
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
