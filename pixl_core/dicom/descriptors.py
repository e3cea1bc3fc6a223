"""Kept free text checked against the instance's own identifiers: PS3.15's Clean Descriptors.

An allow-list keeps ``StudyDescription``, ``SeriesDescription``, ``ProtocolName``,
``AcquisitionDeviceProcessingDescription``... because researchers select on them, and they are
usually examination names from a catalogue ("XR CHEST PA"). Usually: a radiographer types
"CXR PA SMITH", a RIS puts the accession number in ("XR CHEST ACC1234567"), real files carry
the patient's name there. So every kept value of a free-text VR (SH, LO, ST, LT, UT, UC), at any
depth, is passed through the second-method checker (``pixl_core.text.checker``) with the
identifiers of the same instance's header: the patient's name (and its nicknames, misspellings,
OCR misreadings), ID, other IDs, accession number, birth date, address, phone and the
institution, plus the generic identifier patterns (NHS numbers, postcodes, phone numbers,
e-mail addresses). A flagged value is replaced whole by the project's ``descriptors:
replacement:`` (empty by default): a description with a name in it is not worth keeping half
of. Plain examination names pass unchanged, byte for byte.

Why here and not in the allow-list: which values are clean is a property of each value, not of
the attribute, and only a check of each value can claim PS3.15's Clean Descriptors Option
(``cleanDescOpt``); a project claims it only while the check is on (``projects.py`` refuses the
claim otherwise).

The counts returned (attributes cleaned, and per finding kind) go into the engine's result, so
``pixl anonymise`` and orthanc-anon can report them. They are counts: never a value.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import Counter
from dataclasses import dataclass, field, fields, replace

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pixl_core.config.allowlist import Action, AllowList, AttributeKey, canonical_group
from pixl_core.config.projects import DescriptorPolicy
from pixl_core.text.checker import (
    PatientIdentifiers,
    check_report,
    nhs_number_is_valid,
    validate_identifiers,
)

FREE_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})
# Between two values in the one text the checker reads: a blank line, which no name or number
# is read across (a broken name is joined across one line break, never two).
SEPARATOR = "\n\n"


@dataclass
class DescriptorCounts:
    """What the check did to one instance: attributes replaced, and per kind of finding the
    number of attributes it was found in."""

    cleaned: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)


def clean_descriptors(
    result: Dataset,
    source: Dataset,
    allowlist: AllowList,
    policy: DescriptorPolicy,
    counts: DescriptorCounts,
) -> None:
    """Check every kept free-text value of ``result`` (the de-identified dataset being built)
    against ``source``'s identifiers; replace the flagged ones in place; add to ``counts``."""
    if not policy.clean:
        return
    encoding = source._character_set
    places: list[tuple[Dataset, int, str]] = []
    texts: list[str] = []
    _collect(result, allowlist, encoding, places, texts)
    if not texts:
        return
    starts, position = [], 0
    for text in texts:
        starts.append(position)
        position += len(text) + len(SEPARATOR)
    verdict = check_report(SEPARATOR.join(texts), identifiers_of(source))
    flagged: dict[int, set[str]] = {}
    for finding in verdict.findings:
        flagged.setdefault(bisect.bisect_right(starts, finding.start) - 1, set()).add(finding.kind)
    for index, kinds in sorted(flagged.items()):
        dataset, tag, vr = places[index]
        dataset[tag] = DataElement(tag, vr, policy.replacement)
        counts.cleaned += 1
        counts.by_kind.update(kinds)


def _collect(
    ds: Dataset,
    allowlist: AllowList,
    encoding: str | list[str],
    places: list[tuple[Dataset, int, str]],
    texts: list[str],
) -> None:
    """The kept free-text values of ``ds`` and of the items of its kept sequences."""
    for tag in list(ds.keys()):
        group, number = tag >> 16, tag & 0xFFFF
        if number == 0x0000:
            continue
        rule = allowlist.rule_for(_key(ds, group, number))
        if rule is None or rule.action is not Action.KEEP:
            continue  # hashed, replaced, shifted... values are PIXL's, not the source's
        raw = ds.get_item(tag)
        vr = (raw.VR if raw is not None else None) or _dictionary_vr(tag)
        if vr == "SQ" and rule.items is not None:
            for item in ds[tag].value:
                _collect(item, rule.items, encoding, places, texts)
            continue
        if vr not in FREE_TEXT_VRS:
            continue
        element = (
            convert_raw_data_element(raw, encoding=encoding)
            if isinstance(raw, RawDataElement)
            else raw
        )
        text = _as_text(element.value)
        if text.strip():
            places.append((ds, tag, vr))
            texts.append(text)


def _key(ds: Dataset, group: int, number: int) -> AttributeKey:
    if group % 2 == 1 and number >= 0x1000:
        creator = ds.get((group << 16) | (number >> 8))
        value = creator.value if creator is not None else None
        return AttributeKey(group, number & 0xFF, str(value).strip() if value else "")
    return AttributeKey(canonical_group(group), number)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)  # a multi-valued string
    return str(value)  # a str, or a PersonName


def identifiers_of(ds: Dataset) -> PatientIdentifiers:
    """The patient's identifiers as the instance's own header holds them.

    A value the checker cannot use (a birth date that is no date, a phone number of three
    digits) is left out rather than refusing the instance: the other identifiers and the
    generic patterns are still looked for.
    """

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        value = _as_text(value).strip() if value is not None else ""
        return value or None

    other_ids = [text("OtherPatientIDs") or ""]
    for item in ds.get("OtherPatientIDsSequence") or []:
        other_ids.append(_as_text(item.get("PatientID")).strip())
    birth = text("PatientBirthDate")
    if birth is not None:
        try:
            birth = dt.datetime.strptime(birth[:8], "%Y%m%d").date().isoformat()
        except ValueError:
            birth = None
    phones = text("PatientTelephoneNumbers")
    # An other ID that is an NHS number (it passes modulus 11) is looked for as one.
    nhs = next(
        (
            digits
            for digits in ("".join(c for c in o if c.isdigit()) for o in other_ids)
            if len(digits) == 10 and nhs_number_is_valid(digits)
        ),
        None,
    )
    ids = PatientIdentifiers(
        name=text("PatientName"),
        mrn=text("PatientID"),
        nhs_number=nhs,
        other_ids="\\".join(o for o in other_ids if o) or None,
        accession_number=text("AccessionNumber"),
        date_of_birth=birth,
        address=text("PatientAddress"),
        phone=phones.split("\\")[0] if phones else None,
        institution=text("InstitutionName"),
    )
    return _usable(ids)


def _usable(ids: PatientIdentifiers) -> PatientIdentifiers:
    """``ids`` without the fields the checker would refuse."""
    try:
        validate_identifiers(ids)
        return ids
    except ValueError:
        pass
    for item in fields(ids):
        value = getattr(ids, item.name)
        if value is None:
            continue
        try:
            validate_identifiers(PatientIdentifiers(**{item.name: value}))
        except ValueError:
            ids = replace(ids, **{item.name: None})
    return ids
