"""What a piece of burned-in text is: a benign marker, or which kind of identifier (or other text).

OCR output is read in memory only. What leaves this module is a decision (benign or not) and the
*kinds* found, never the text: the counts by kind go to Postgres and the metrics.

Benign (kept under ``pixel_text: mask``): every word read is on the reviewed benign list
(``tag_allowlists/benign_markers.yaml``), tesseract's confidence is at least
``BENIGN_MIN_CONFIDENCE``, and the number of characters read is plausible for the size of the
region (a wide region read as "L" is a misread line of something else). Anything else is masked,
whatever its kind: the kinds are for the record, not for the decision, so a misread identifier is
masked all the same.

Kinds, most specific first (one region may count under several):
``patient_name``, ``mrn`` (the patient ID and other patient IDs), ``nhs_number`` (the patient's,
or any ten digits passing modulus 11), ``dob`` (in the checker's date formats), ``accession``,
``institution``, ``date`` (any other date), ``digits`` (a run of six or more digits), and
``other_text`` for non-benign text none of these explain. Patient identifiers are matched by the
report checker (``pixl_core.text.checker``), the second method the reports already pass;
accession numbers and IDs are also matched ignoring separators and OCR's O/0 and I/1 confusions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pixl_core.config.pixel_policy import BenignMarkers
from pixl_core.dicom.descriptors import identifiers_of as header_identifiers
from pixl_core.text import checker
from pixl_core.text.checker import PatientIdentifiers

KINDS = (
    "patient_name",
    "mrn",
    "nhs_number",
    "dob",
    "accession",
    "institution",
    "date",
    "digits",
    "other_text",
    "benign",
)
BENIGN_MIN_CONFIDENCE = 70.0
_CHECKER_KINDS = {
    checker.NAME: "patient_name",
    checker.MRN: "mrn",
    checker.NHS_NUMBER: "nhs_number",
    checker.NHS_NUMBER_PATTERN: "nhs_number",
    checker.DATE_OF_BIRTH: "dob",
    checker.ADDRESS: "other_text",
    checker.POSTCODE: "other_text",
    checker.PHONE: "other_text",
    checker.POSTCODE_PATTERN: "other_text",
    checker.PHONE_PATTERN: "other_text",
    checker.EMAIL: "other_text",
    checker.ACCESSION_NUMBER: "accession",
    checker.OTHER_ID: "mrn",
    checker.INSTITUTION: "institution",
}
_PUNCTUATION = ".,:;'\"()[]{}|_`~!*"
_MONTH = r"(?:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)[A-Z]*"
_DATE = re.compile(
    r"(?<!\d)(?:\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}|\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}|"
    r"\d{1,2}[ \-]?" + _MONTH + r"[ \-]?\d{2,4})(?!\d)",
    re.IGNORECASE,
)
_DIGIT_RUN = re.compile(r"\d[\d ]{4,}\d")
_NOT_ALNUM = re.compile(r"[^0-9A-Z]")
_GENERIC_INSTITUTION = frozenset(
    {"HOSPITAL", "GENERAL", "ROYAL", "INFIRMARY", "TRUST", "NHS", "FOUNDATION", "UNIVERSITY",
     "CLINIC", "CENTRE", "CENTER", "MEDICAL", "THE", "AND", "SAINT", "ST", "HEALTH"}
)  # fmt: skip


@dataclass(frozen=True)
class InstanceIdentifiers:
    """The instance's own identifiers, from its (identifiable) header; kept in memory only."""

    patient: PatientIdentifiers
    accession: str = ""
    other_ids: tuple[str, ...] = ()
    institution_words: tuple[str, ...] = ()


def identifiers_of(ds: Dataset) -> InstanceIdentifiers:
    """Collect what the header says about the patient: the checker's identifiers are the ones
    the descriptor check uses (one reading of a header for both), plus the squeezed forms OCR
    text is also compared with."""
    other_ids = [str(ds.get("PatientID", "") or "").strip()]
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        other_ids.append(str(item.get("PatientID", "") or "").strip())
    for value in ds.get("OtherPatientIDs", None) or []:
        other_ids.append(str(value).strip())
    institution = str(ds.get("InstitutionName", "") or "").upper()
    words = tuple(w for w in re.findall(r"[A-Z]{4,}", institution) if w not in _GENERIC_INSTITUTION)
    return InstanceIdentifiers(
        patient=header_identifiers(ds),
        accession=_alnum(str(ds.get("AccessionNumber", "") or "")),
        other_ids=tuple(_alnum(i) for i in other_ids if len(_alnum(i)) >= 4),
        institution_words=words,
    )


def _alnum(text: str) -> str:
    return _NOT_ALNUM.sub("", text.upper())


def _digits_read(text: str) -> str:
    """OCR's usual letter-for-digit confusions undone inside tokens that hold digits."""
    table = str.maketrans({"O": "0", "o": "0", "I": "1", "l": "1", "|": "1", "S": "5", "B": "8"})
    return " ".join(t.translate(table) if any(c.isdigit() for c in t) else t for t in text.split())


def tokens(text: str) -> list[str]:
    return [t.strip(_PUNCTUATION) for t in text.split() if t.strip(_PUNCTUATION)]


def is_benign(
    text: str, confidence: float, width: int, height: int, markers: BenignMarkers
) -> bool:
    """Whether a region read as ``text`` may stay: benign words only, read with confidence, and
    as many characters as a region of that size holds."""
    words = tokens(text)
    if not words or confidence < BENIGN_MIN_CONFIDENCE:
        return False
    if not all(markers.allows(w) for w in words):
        return False
    characters = sum(len(w) for w in words) + len(words) - 1
    expected = width / max(0.55 * height, 1.0)  # glyphs are about 0.55-0.7 of the line height
    return expected * 0.35 <= characters <= expected * 2.5 + 2


def kinds_of(text: str, ids: InstanceIdentifiers) -> set[str]:
    """The kinds of identifier found in ``text`` (empty set: none of them)."""
    found: set[str] = set()
    for variant in {text, _digits_read(text)}:
        try:
            result = checker.check_report(variant, ids.patient)
        except ValueError:
            result = None
        if result is not None:
            found.update(_CHECKER_KINDS.get(f.kind, "other_text") for f in result.findings)
        squeezed = _alnum(variant)
        if ids.accession and len(ids.accession) >= 4 and ids.accession in squeezed:
            found.add("accession")
        if any(i in squeezed for i in ids.other_ids):
            found.add("mrn")
        upper = variant.upper()
        if any(w in upper for w in ids.institution_words):
            found.add("institution")
        if _DATE.search(variant) and "dob" not in found:
            found.add("date")
        if _DIGIT_RUN.search(variant) and not found & {"mrn", "nhs_number", "accession", "dob"}:
            found.add("digits")
    return found
