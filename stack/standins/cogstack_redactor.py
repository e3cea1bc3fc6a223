"""Rule-based report de-identifier behind the local Cogstack stand-in.

In the hospital, reports are de-identified by CogStack's medcat-service (an NER model). Here the
demo and tests need *something* that speaks the same API and removes the identifiers a
synthetic radiology report can hold, without a model download. This module is that something:
regular expressions for structured identifiers (NHS numbers, postcodes, phones, e-mails, dates,
hospital numbers, street addresses) plus name heuristics (titles, labels such as ``Name:``,
``SURNAME, Given``, initials, and built-in lists of common UK given names and surnames).

It is deliberately a different method from the report *checker* (which uses the patient's own
identifiers): the point of the checker is to catch what this misses, so the two share no code.

Design choices:

- Over-redaction beats a leak: overlapping detections are merged into one span, so an
  identifier is never left half-visible between two tags.
- Readability still matters to researchers: measurements ("5 mm", "CTR 0.55", "T4") never
  match, and medical eponyms (Hodgkin lymphoma, Parkinson's disease, Swan-Ganz catheter,
  Kerley B lines) are kept when the surrounding words show they are eponyms. A title before a
  word always wins: "Dr Parkinson" is a person.
- Common words that are also names ("May", "Ward", "Brown", "Hill") only count as names next to
  another name, an initial, a title or a label, so "May represent atelectasis" survives.

``redact`` is a pure function; the web layer (``cogstack_standin``) only wraps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypedDict


class Annotation(TypedDict):
    """One redacted span of the *input* text: offsets and kind, never the text itself."""

    start: int
    end: int
    type: str


# --- word lists -------------------------------------------------------------------------------


def _words(block: str) -> frozenset[str]:
    return frozenset(word.lower() for word in block.split())


# Common UK given names that are not also everyday English words.
GIVEN_NAMES = _words(
    """
    Oliver George Harry Noah Leo Arthur Muhammad Mohammed Mohammad Ahmed Oscar Charlie Jacob
    Thomas Henry William Joshua James Alfie Freddie Archie Theo Isaac Teddy Finley Alexander
    Lucas Logan Ethan Adam Daniel Samuel Joseph Benjamin Edward Dylan Sebastian Tommy Reggie
    Elijah Albert Rory Hugo Toby Jude Louis Ryan Liam Nathan Matthew Luke Christopher Andrew David
    John Michael Paul Peter Richard Robert Stephen Steven Anthony Kevin Gary Ian Neil Simon
    Philip Graham Colin Keith Derek Trevor Barry Kenneth Brian Alan Geoffrey Raymond Dennis Roger
    Malcolm Stuart Darren Craig Wayne Shaun Sean Jason Carl Jamie Callum Connor Kieran Declan
    Patrick Aiden Harvey Kyle Owen Rhys Gareth Dafydd Hamish Angus Alistair Rajesh Sanjay Amit
    Ravi Arjun Hassan Omar Ibrahim Yusuf Tariq Imran Bilal Kwame Tunde Chinedu Olivia Amelia Isla
    Ava Mia Lily Isabella Sophia Sophie Freya Florence Willow Ella Evie Poppy Charlotte Emily
    Isabelle Elsie Alice Sienna Phoebe Matilda Evelyn Emma Jessica Chloe Hannah Lucy Sarah Laura
    Rebecca Rachel Amy Katie Gemma Nicola Claire Louise Helen Karen Susan Julie Jacqueline Tracey
    Michelle Joanne Lisa Deborah Sharon Angela Elizabeth Margaret Patricia Mary Jennifer Linda
    Barbara Dorothy Joan Jean Irene Doreen Eileen Maureen Brenda Sheila Pauline Christine Janet
    Lynne Diane Wendy Gillian Alison Fiona Catherine Katherine Kathleen Anne Annie Victoria
    Natalie Samantha Zoe Megan Bethany Abigail Jasmine Aisha Fatima Zara Priya Anjali Sunita Nadia
    Yasmin Amara Ngozi Siobhan Niamh Aoife Ciara Eilidh Morag Seren Carys Bronwen Agnes Edith
    Ethel Gladys Hilda Mabel Vera Winifred Beatrice Harriet Eleanor Georgia Imogen Lola Maisie
    Millie Rosie Scarlett Layla Esme Aria Eva Nancy Edna Mildred Marjorie Sylvia Valerie Beverley
    Carole Gail Heather Jane Joanna Kate Tina Yvonne Maria Anna Hazel Ann Martin Scott Gordon
    Duncan Fraser Lee Kim
    """
)

# Given names that are also ordinary words: names only next to another name, a title or label.
AMBIGUOUS_GIVEN_NAMES = _words(
    """
    May June April Will Mark Grace Hope Faith Joy Rose Dawn Summer Bill Frank Guy Jack Pat Sue
    Ray Carol Ruby Daisy Amber Holly Iris Jade Max Dean Hunter
    """
)

# Common UK surnames that are not also everyday English words.
SURNAMES = _words(
    """
    Smith Jones Williams Taylor Davies Evans Johnson Roberts Walker Wright Robinson Thompson
    Wilson Hughes Edwards Lewis Jackson Clarke Clark Patel Harris Turner Morris Moore Harrison
    Morgan Allen Phillips Watson Davis Parker Bennett Griffiths Mitchell Kelly Carter Richardson
    Bailey Collins Murphy Miller Cox Richards Khan Marshall Anderson Simpson Ellis Adams Singh
    Begum Wilkinson Foster Chapman Powell Webb Rogers Mason Ali Hussain Campbell Matthews Palmer
    Holmes Mills Barnes Lloyd Butler Russell Barker Fisher Stevens Jenkins Murray Dixon Pearson
    Fletcher Walsh Kaur Gibson Howard Andrews Stewart Elliott Reynolds Saunders Payne Pearce Brooks
    Lawrence Atkinson Bradley Spencer Gill Dawson Burton Watts Perry Wells Armstrong Francis Rees
    Hayes Hudson Newman Barrett Kennedy Robertson Berry Ross Reid Henderson Ferguson
    Hamilton MacDonald McDonald Macleod Sutherland Chambers Holland Bates Nicholson Lambert
    Parsons Howell Austin Sanders Whitehead Nash Kemp Doyle Byrne Nguyen Chen Wang Zhang Liu Kumar
    Sharma Shah Mistry Chowdhury Rahman Islam Uddin Miah Akhtar Mahmood Iqbal Malik Okafor Adeyemi
    Mensah Okonkwo Owusu Nowak Kowalski Walters Jennings Hopkins Pritchard Lowe Hodgson Sheppard
    Wallace Chandler Goodwin Wheeler Norris Dunn Warren Hancock Carr Cartwright Sykes Pickering
    Holt Crawford Gardner Parkinson Hodgkin Thomson Hunter Docherty Quinn Brennan Gallagher McCarthy
    O'Brien O'Connor O'Neill Connolly Lynch Fitzgerald Harper Ashworth Rowe Woodward Baxter
    """
)

# Surnames that are also everyday (or anatomical) words: names only next to another name.
AMBIGUOUS_SURNAMES = _words(
    """
    Brown White Green Black Young King Hill Wood Hall Ward Baker Cook Bell Shaw Hunt Fox Day West
    Ball Rose Booth Grant Hart Sharp Lane Long Little Stone Marsh Burns Bishop Frost Head Cross
    Banks Lamb Wall Field Page Price Ford Cole Gray Grey Knight Hardy Read Steele Banner Moss
    Bird Church Waters Short Small Dean
    Best Bond Case Park Mann Hale Lord Nurse Love Sweet Good Rich Strong Gold
    """
)

# Medical eponyms (lower case). A listed name that is one of these is kept when it reads as an
# eponym: followed by a medical word, or as a possessive that is itself the disease name.
EPONYMS = _words(
    """
    Hodgkin Parkinson Swan Ganz Pancoast Kerley Crohn Addison Cushing Graves Paget Barrett Horner
    Kaposi Hampton Westermark Fleischner Chilaiditi Poland Bochdalek Morgagni Marfan Ewing Wegener
    Langerhans Boerhaave Mallory Weiss Lemierre Macleod Swyer James Dressler Osler Kartagener
    Caplan Loeffler Churg Strauss Heimlich Foley Hickman Seldinger Ryle Bennett Colles Smith Barton
    Monteggia Galeazzi Salter Harris Baker Wilson Down Turner Klinefelter Alzheimer Huntington
    Raynaud Sjogren Still Bell Hashimoto Tietze Hill Sachs Bankart Jones Stevens Johnson Guillain
    Barre Mounier Kuhn Hamman Golden Fallot Eisenmenger Ebstein Kawasaki Takayasu Behcet Whipple
    Zenker Schatzki Meckel Hirschsprung Morison Luschka Virchow Charcot Bosniak Gleason Breslow
    Dukes Ann Arbor Brock Wolff White Mendelson Trousseau Heberden Schmorl Scheuermann Pott Perthes
    Legg Osgood Schlatter Kienbock Madelung Sprengel Klippel Feil Gaucher Niemann Pick Wilms
    Burkitt Merkel Askin Lambert Eaton Carney Erdheim Chester Rosai Dorfman Castleman Kimura
    Williams Campbell Young Lofgren Heerfordt Good Meigs Kerckring Valsalva Trendelenburg Brodie
    Hurler Wernicke Korsakoff Cheyne Stokes Adams Austin Flint Duke Lisfranc Jefferson
    Hangman Chance Maisonneuve Holstein Segond Pellegrini Stieda Thompson Rolando Hoffa
    """
)

# "Parkinson's" alone, with no medical word after it, still means the disease.
POSSESSIVE_DISEASES = _words(
    """
    Parkinson Hodgkin Crohn Addison Cushing Alzheimer Huntington Raynaud Graves Paget Sjogren
    Hashimoto Kaposi Wilms Burkitt Meckel Zenker Still Bell
    """
)

# Words that, following an eponym, show it is used as one (matched case-insensitively).
MEDICAL_WORDS = (
    "disease|syndrome|sign|signs|line|lines|fracture|fractures|lymphoma|lymphomas|tumou?rs?|"
    "catheter|catheters|tube|tubes|palsy|cyst|cysts|lesion|lesions|deformity|oesophagus|"
    "esophagus|ulcer|ulcers|node|nodes|pouch|hernia|ring|rings|classification|staging|stage|"
    "score|criteria|sequence|anomaly|malformation|effect|phenomenon|reflex|triad|manoeuvre|"
    "maneuver|procedure|operation|repair|drain|valve|shunt|canal|duct|space|angle|nerve|artery|"
    "vein|membrane|cells?|hump|sarcoma|carcinoma|granulomatosis|thyroiditis|nodes?|"
    "diverticulum|aneurysm|dislocation|injury|plexus|foramen|sinus|sinuses|arthropathy|"
    "dementia|chorea|anastomosis|glands?|interposition|tetralogy|murmur|respiration|"
    "encephalopathy|hyperplasia|contracture|test|physis|lymphadenopathy|angina|vasculitis"
)

# Words never taken as part of a name, even after a title or label (lower case).
STOPWORDS = _words(
    """
    the a an and or of in on at to for with by from no not is was are were be been has have had
    this that these those there here it its as if but so than then also only very all any some
    per via into onto over under above below after before during since until while within
    without patient patients report reported reporting consultant radiologist radiographer
    registrar doctor nurse gp clinic hospital hospitals department dept trust nhs foundation
    university infirmary centre center unit team service surgery practice medical imaging
    radiology chest lung lungs heart cardiac mediastinum hila hilar pleural abdomen pelvis spine
    xr cxr ct cta mri mr us usg pet nm dexa pa ap lat lateral portable erect supine semi view views
    findings finding impression conclusion conclusions comparison compared clinical history
    indication indications details detail question query normal abnormal clear clearly known
    left right bilateral new stable previous prior dated date dob mrn number address tel phone
    telephone mobile email please see seen thank thanks you dear regards signed verified
    authorised authorized review follow up referral referred request requested requesting
    exam examination study studies image images film films technique note notes comment
    comments summary opinion advice recommend recommended suggest suggested correlation
    consolidation effusion pneumothorax atelectasis nodule mass fracture line lines tube tubes
    catheter catheters lymphoma disease syndrome sign signs impression ett ngt ng picc cvc ij
    icd ppm svc ivc tb copd hiv aids ards ccf chf lv rv la ra ecg mm cm ct ctr
    mon tue wed thu fri sat sun monday tuesday wednesday thursday friday saturday sunday
    jan feb mar apr jun jul aug sep sept oct nov dec january february march july august
    september october november december
    mr mrs ms miss mx dr prof professor sister rev sir dame lady lord st saint
    bone bones bony soft tissue tissues osseous skeletal visible visualised seen appear appears
    lobe lobes upper lower middle zone zones base bases apex apical costophrenic angle angles
    diaphragm hemidiaphragm trachea aorta aortic size shape contour outline position tip
    dear kind yours sincerely faithfully copy copies cc re ref reference bay bed room
    """
)

# --- patterns ----------------------------------------------------------------------------------

# "may" only capitalised: "these 2 may represent..." is not a date.
_MONTHS = (
    r"(?:(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)|May|MAY)"
)
_POSTCODE = r"\b(?:[A-Z]{1,2}\d[A-Z\d]?|GIR)\s?\d[ABD-HJLNP-UW-Z]{2}\b"
_STREET_SUFFIX = (
    r"(?:Road|Rd|Street|St|Lane|Avenue|Ave|Close|Drive|Way|Crescent|Gardens|Place|Court|"
    r"Terrace|Grove|Park|Square|Mews|Walk|Row|Hill|Green|Rise|View|Parade|Boulevard|Gate)"
)

# (tag, compiled pattern, group holding the identifier)
_PATTERNS: list[tuple[str, re.Pattern[str], int]] = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), 0),
    ("NHS_NUMBER", re.compile(r"(?<![\d-])\d{3}[ -]\d{3}[ -]\d{4}(?![\d-])"), 0),
    ("NHS_NUMBER", re.compile(r"(?<!\d)\d{10}(?!\d)"), 0),
    (
        "PHONE",
        re.compile(
            r"(?<![\w+])(?:\+44[\s-]?(?:\(0\)[\s-]?)?|\(?0)\d{2,4}\)?[\s-]?\d{3,4}[\s-]?\d{3,4}(?!\w)"
        ),
        0,
    ),
    (
        "PHONE",
        re.compile(
            r"(?i:\b(?:tel|telephone|phone|mobile|mob|bleep|ext|extension)\b\.?\s*"
            r"(?:no\.?|number)?\s*[:.]?\s*)(\+?\d[\d -]{2,14}\d)"
        ),
        1,
    ),
    ("POSTCODE", re.compile(_POSTCODE), 0),
    (
        "ADDRESS",
        re.compile(
            r"\b(?:(?:Flat|Apartment|Apt|Unit)\s+\d+[A-Za-z]?,?\s+)?\d{1,4}[A-Za-z]?,?\s+"
            r"(?:[A-Z][a-z]+(?:['\u2019]s)?\s+){1,3}" + _STREET_SUFFIX + r"\b\.?"
            r"(?:(?:,\s*[A-Z][A-Za-z]+(?:\s+[A-Z][A-Za-z]+)?){1,3}(?=,?\s*" + _POSTCODE + r"))?"
        ),
        0,
    ),
    ("ADDRESS", re.compile(r"\b(?:Flat|Apartment|Apt)\s+\d+[A-Za-z]?\b"), 0),
    (
        "ADDRESS",
        re.compile(
            r"\b(?:[A-Z][a-z]+[ \t]+){1,2}"
            r"(?:Cottage|House|Farm|Lodge|Barn|Manor|Villa|Grange|Bungalow)\b(?=,)"
        ),
        0,
    ),
    ("DATE", re.compile(r"(?<!\d)(?<!\d\.)\d{1,2}([/.-])\d{1,2}\1(?:\d{4}|\d{2})(?!\.?\d)"), 0),
    (
        "DATE",
        re.compile(r"(?<!\d)\d{4}([/-])\d{1,2}\1\d{1,2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?(?!\d)"),
        0,
    ),
    (
        "DATE",
        re.compile(
            r"(?<!\d)\d{1,2}(?i:st|nd|rd|th)?(?:[ \t]+of)?[ \t-]+" + _MONTHS + r"\b"
            r"(?:\.?,?[ \t]+\d{4}|-\d{2}(?:\d{2})?|[ \t]+'\d{2})?(?!\d)"
        ),
        0,
    ),
    (
        "DATE",
        re.compile(r"\b" + _MONTHS + r"\.?[ \t]+\d{1,2}(?i:st|nd|rd|th)?,?[ \t]+\d{4}(?!\d)"),
        0,
    ),
    ("DATE", re.compile(r"\b" + _MONTHS + r"\.?,?[ \t]+\d{4}(?!\d)"), 0),
    ("ID", re.compile(r"(?<!\d)(?<!\d\.)\d{8,}(?!\.?\d)"), 0),
    ("ID", re.compile(r"\b[A-Z]{1,4}\d{5,}[A-Z]?\b"), 0),
    (
        "ID",
        re.compile(
            r"(?i:\b(?:mrn|hospital\s+(?:no|number)|hosp\.?\s+no|accession(?:\s+(?:no|number))?|"
            r"acc\.?\s+no|patient\s+id|ris\s+no|pas\s+no|crn|case\s+(?:no|number))\b\.?"
            r"\s*[:#]?\s*)([A-Z0-9][A-Z0-9/-]{3,})"
        ),
        1,
    ),
]

# One name word: Capitalised (incl. McX, O'X, double-barrelled), ALL CAPS, or an initial.
_NAME_TOKEN = (
    r"(?:(?:[A-Z][a-z]+(?:[A-Z][a-z]+)?|O['\u2019][A-Z][a-z]+|[A-Z]{2,}(?:['\u2019][A-Z]+)?)"
    r"(?:-(?:[A-Z][a-z]+|[A-Z]{2,}))?\b|[A-Z]\.?(?![\w]))"
)
_NAME_SEQUENCE = _NAME_TOKEN + r"(?:,?[ \t]+" + _NAME_TOKEN + r"){0,3}"
_NAME_TOKEN_RE = re.compile(_NAME_TOKEN)

_TITLE_RE = re.compile(
    r"\b(?:Mr|MR|Mrs|MRS|Ms|Miss|MISS|Mx|Dr|DR|Prof|PROF|Professor|PROFESSOR|Sister|Rev|Sir|Dame)"
    r"\b\.?[ \t]+(" + _NAME_SEQUENCE + r")"
)
_LABEL_RE = re.compile(
    r"(?i:\b(?:patient(?:['\u2019]s)?\s+name|full\s+name|name|patient|pt|referrer|"
    r"referring\s+(?:clinician|doctor|consultant|physician)|referred\s+by|reported\s+by|"
    r"requested\s+by|requesting\s+clinician|verified\s+by|authori[sz]ed\s+by|dictated\s+by|"
    r"typed\s+by|signed(?:\s+by)?|consultant|gp|next\s+of\s+kin|nok|radiologist|radiographer|"
    r"clinician|cc)\s*:[ \t]*)(" + _NAME_SEQUENCE + r")"
)
_SURNAME_COMMA_GIVEN_RE = re.compile(
    r"\b([A-Z]{2,}(?:['\u2019-][A-Z]+)?),[ \t]*([A-Z][a-z]+(?:-[A-Z][a-z]+)?)(?:[ \t]+([A-Z][a-z]+))?\b"
)
_WORD_RE = re.compile(r"[A-Za-z]+(?:['\u2019][A-Z][A-Za-z]+)?")
_EPONYM_TAIL_RE = re.compile(
    r"[ \t-]*(?:(?:[A-Z]{1,2}|[IVX]{1,4}|[A-Z][a-z]+)[ \t-]+){0,2}(?i:" + MEDICAL_WORDS + r")\b"
)
_POSSESSIVE_RE = re.compile(r"(?:['\u2019]s|s['\u2019]|['\u2019])(?![A-Za-z])")

# Order breaks ties between overlapping spans of equal length: the more specific tag wins.
_PRIORITY = ("EMAIL", "NHS_NUMBER", "PHONE", "POSTCODE", "ADDRESS", "DATE", "ID", "NAME")


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    tag: str


# --- public API --------------------------------------------------------------------------------


def redact(text: str) -> tuple[str, list[Annotation]]:
    """Return ``text`` with each identifier replaced by ``[TAG]``, and the replaced spans.

    Annotations hold offsets into the input and the tag only, so they can be returned or
    logged without repeating an identifier.
    """
    spans = _merge([*_pattern_spans(text), *_name_spans(text)])
    pieces: list[str] = []
    position = 0
    for span in spans:
        pieces.append(text[position : span.start])
        pieces.append(f"[{span.tag}]")
        position = span.end
    pieces.append(text[position:])
    annotations: list[Annotation] = [
        {"start": span.start, "end": span.end, "type": span.tag} for span in spans
    ]
    return "".join(pieces), annotations


# --- detectors ---------------------------------------------------------------------------------


def _pattern_spans(text: str) -> Iterator[_Span]:
    for tag, pattern, group in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span(group)
            if tag == "PHONE" and group == 0 and not 10 <= _digit_count(match.group()) <= 13:
                continue
            yield _Span(start, end, tag)


def _digit_count(value: str) -> int:
    return sum(char.isdigit() for char in value)


def _name_spans(text: str) -> Iterator[_Span]:
    yield from _titled_or_labelled_names(text, _TITLE_RE)
    yield from _titled_or_labelled_names(text, _LABEL_RE)
    yield from _surname_comma_given(text)
    yield from _listed_names(text)


def _titled_or_labelled_names(text: str, pattern: re.Pattern[str]) -> Iterator[_Span]:
    """Name words after a title or a label, up to the first word that cannot be a name."""
    for match in pattern.finditer(text):
        offset = match.start(1)
        last_end: int | None = None
        first_start: int | None = None
        for token in _NAME_TOKEN_RE.finditer(match.group(1)):
            if token.group().rstrip(".").lower() in STOPWORDS:
                break
            if first_start is None:
                first_start = offset + token.start()
            last_end = offset + token.end()
        if first_start is not None and last_end is not None:
            yield _Span(first_start, last_end, "NAME")


def _surname_comma_given(text: str) -> Iterator[_Span]:
    """``SMITH, John``: an all-caps word, a comma and a capitalised word, neither a stopword."""
    for match in _SURNAME_COMMA_GIVEN_RE.finditer(text):
        surname, given, middle = match.group(1), match.group(2), match.group(3)
        if surname.lower() in STOPWORDS or given.lower() in STOPWORDS:
            continue
        end = match.end(3) if middle and middle.lower() not in STOPWORDS else match.end(2)
        yield _Span(match.start(1), end, "NAME")


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str

    @property
    def key(self) -> str:
        return self.text.lower()

    @property
    def capitalised(self) -> bool:
        """Capitalised (Smith, McDonald, O'Brien) or all capitals (SMITH, O'BRIEN)."""
        parts = re.split(r"['\u2019]", self.text)
        return all(
            part[:1].isupper() and (part.isupper() or part[1:].islower() or _is_mc(part))
            for part in parts
        )

    @property
    def is_initial(self) -> bool:
        return len(self.text) == 1 and self.text.isupper()

    @property
    def given(self) -> bool:
        return self.key in GIVEN_NAMES

    @property
    def surname(self) -> bool:
        return self.key in SURNAMES

    @property
    def listed(self) -> bool:
        """In a name list and not an everyday word: a name on its own."""
        return self.capitalised and (self.given or self.surname)

    @property
    def maybe_given(self) -> bool:
        return self.given or self.key in AMBIGUOUS_GIVEN_NAMES

    @property
    def maybe_surname(self) -> bool:
        return self.surname or self.key in AMBIGUOUS_SURNAMES


def _is_mc(word: str) -> bool:
    return bool(re.fullmatch(r"(?:Mc|Mac)[A-Z][a-z]+", word))


def _listed_names(text: str) -> Iterator[_Span]:
    """Words from the name lists, extended to the name words right next to them.

    Given names come first, so a given name takes the capitalised words after it ("John
    Xyzzy"); a surname takes the initials or capitalised words before it ("J. Smith",
    "Xavier Smith"); an all-caps surname also takes the words after it ("SMITH John").
    """
    words = [_Word(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]
    for index, word in enumerate(words):
        if len(word.text) < 2 or not word.capitalised:
            continue
        if not (word.maybe_given or word.maybe_surname) or _used_as_eponym(text, word):
            continue
        left = _left_neighbours(text, words, index) if word.maybe_surname else []
        right = _right_neighbours(text, words, index)
        if not (word.maybe_given or word.text.isupper()):
            right = []
        if not word.listed:
            # An everyday word ("May", "Ward", "Brown") is a name only beside a name word.
            before = left[0] if left else None
            after = right[0] if right else None
            near_name = (
                (before is not None and (before.listed or before.is_initial or before.maybe_given))
                or (after is not None and after.listed)
                or (after is not None and word.maybe_given and after.maybe_surname)
            )
            if not near_name:
                continue
        start = left[-1].start if left else word.start
        end = right[-1].end if right else word.end
        yield _Span(start, end, "NAME")


def _joined(text: str, first: _Word, second: _Word) -> bool:
    """Two words belong to one name if only a space, a tab or a hyphen separates them."""
    gap = text[first.end : second.start]
    return gap == "-" or (0 < len(gap) <= 2 and gap.strip(" \t") == "")


def _left_neighbours(text: str, words: list[_Word], index: int) -> list[_Word]:
    """Up to two initials or capitalised non-stopwords directly before ``words[index]``."""
    found: list[_Word] = []
    current = words[index]
    for candidate in reversed(words[max(0, index - 2) : index]):
        if candidate.is_initial:
            if text[candidate.end : current.start] not in {" ", ". ", "."}:
                break
        elif (
            not _joined(text, candidate, current)
            or not candidate.capitalised
            or candidate.key in STOPWORDS
            or _used_as_eponym(text, candidate)
        ):
            break
        found.append(candidate)
        current = candidate
    return found


def _right_neighbours(text: str, words: list[_Word], index: int) -> list[_Word]:
    """Up to two capitalised non-stopwords directly after ``words[index]``."""
    found: list[_Word] = []
    current = words[index]
    for candidate in words[index + 1 : index + 3]:
        if not _joined(text, current, candidate):
            break
        if not candidate.capitalised or candidate.is_initial or candidate.key in STOPWORDS:
            break
        if _used_as_eponym(text, candidate):
            break
        found.append(candidate)
        current = candidate
    return found


def _used_as_eponym(text: str, word: _Word) -> bool:
    """Whether ``word`` reads as a medical eponym ("Hodgkin lymphoma", "Swan-Ganz catheter")."""
    start, end = word.start, word.end
    # Grow to the whole hyphenated compound: Swan-Ganz, Salter-Harris, Wolff-Parkinson-White.
    while True:
        before = re.search(r"([A-Z][A-Za-z]+)-$", text[max(0, start - 30) : start])
        if not before:
            break
        start -= len(before.group(0))
    while True:
        after = re.match(r"-([A-Z][A-Za-z]+)", text[end : end + 30])
        if not after:
            break
        end += len(after.group(0))
    compound = re.findall(r"[A-Za-z]+", text[start:end])
    if not any(part.lower() in EPONYMS for part in compound):
        return False
    if re.search(r"(?i:non)[-\s]$", text[max(0, start - 4) : start]):
        return True
    tail = text[end : end + 80]
    possessive = _POSSESSIVE_RE.match(tail)
    if possessive:
        tail = tail[possessive.end() :]
    if _EPONYM_TAIL_RE.match(tail):
        return True
    return bool(possessive) and any(part.lower() in POSSESSIVE_DISEASES for part in compound)


# --- merging ---------------------------------------------------------------------------------


def _merge(spans: Iterable[_Span]) -> list[_Span]:
    """Union overlapping spans so no identifier is left partly visible between two tags.

    The merged span takes the tag of its longest part (ties: the more specific tag).
    """
    ordered = sorted(spans, key=lambda s: (s.start, -(s.end - s.start)))
    merged: list[_Span] = []
    group: list[_Span] = []
    group_end = -1
    for span in ordered:
        if group and span.start < group_end:
            group.append(span)
            group_end = max(group_end, span.end)
            continue
        if group:
            merged.append(_combine(group))
        group, group_end = [span], span.end
    if group:
        merged.append(_combine(group))
    return merged


def _combine(group: list[_Span]) -> _Span:
    best = min(group, key=lambda s: (-(s.end - s.start), _PRIORITY.index(s.tag)))
    return _Span(min(s.start for s in group), max(s.end for s in group), best.tag)
