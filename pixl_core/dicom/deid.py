"""The de-identification engine: one identifiable DICOM instance in, one de-identified out.

orthanc-anon and ``pixl anonymise`` run exactly this code. It never imports ``orthanc``.

Why it is shaped this way:
- The output is a **new** dataset built from what the allow-list lets through. Nothing is
  deleted from the input, so an attribute nobody thought of cannot leak: it was never copied.
- Only the header is parsed (``stop_before_pixels``); the Pixel Data element is copied through
  as raw bytes from the input buffer, so the cost stays close to reading and writing the file.
  The burned-in text check (``pixels.clean_pixels``) decodes the pixels to look for text and
  replaces the element only when it masks some.
- Anything unexpected refuses the instance with a short reason code (never an identifier):
  a refused instance is dropped, not forwarded.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from pixl_core.config.allowlist import Action, AllowList, AttributeKey, Rule, canonical_group
from pixl_core.config.projects import BASIC_PROFILE_CODE, PS315_OPTIONS, Project
from pixl_core.dicom.descriptors import DescriptorCounts, clean_descriptors
from pixl_core.dicom.header import (
    PIXEL_DATA_TAG,
    ParsedHeader,
    UnreadableDicom,
    parse_header,
    write_header,
)
from pixl_core.dicom.pixels import clean_pixels
from pixl_core.hashing import ProjectHasher

PIXL_IMPLEMENTATION_UID = "2.25.229318054950893740498129374637846509813"
PIXL_IMPLEMENTATION_VERSION = "PIXL_0_1"
# Maximum lengths of the string VRs a hash can be written into (PS3.5 Table 6.2-1).
VR_MAX_LENGTH = {
    "AE": 16,
    "CS": 16,
    "LO": 64,
    "LT": 64,
    "PN": 64,
    "SH": 16,
    "ST": 64,
    "UC": 64,
    "UT": 64,
}


class Refused(Exception):
    """The instance must not leave. ``reason`` is a short code, never an identifier."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Reason codes, shared by the CLI summary, the database and the metrics.
REFUSED_UNREADABLE = "unreadable"
REFUSED_NOT_IMAGE = "not_image"
REFUSED_MODALITY = "modality_not_allowed"
REFUSED_BURNED_IN = "burned_in_annotation"
REFUSED_SERIES = "series_filtered"
REFUSED_INVALID_VALUE = "invalid_value"
REFUSED_MISSING_UID = "missing_uid"
# What pydicom raises when it decodes a corrupt element (it decodes lazily, on first access).
_PARSE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    struct.error,
    BytesLengthException,
)


@dataclass(frozen=True)
class Deidentified:
    """The de-identified file and the pseudonymised UIDs it is named and grouped by; what the
    descriptor check cleaned (counts only).

    The file is kept in two parts, the new header and the Pixel Data element (usually a view
    into the input buffer), so that ``write_to`` puts a film on disk without first copying it
    into one more buffer; ``data`` joins them for callers that need one ``bytes``.
    """

    header: bytes = field(repr=False)
    pixel_element: bytes | memoryview = field(repr=False)
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    pixel_text: dict[str, int] | None = None  # burned-in text regions by kind (never the text)
    descriptors: DescriptorCounts = field(default_factory=DescriptorCounts)

    @property
    def data(self) -> bytes:
        """The whole de-identified file as one ``bytes`` (orthanc-anon hands it to Orthanc)."""
        return b"".join((self.header, self.pixel_element)) if self.pixel_element else self.header

    def write_to(self, path: Path) -> None:
        """Write the file to ``path``: the header, then the Pixel Data element from where it
        lies (no joined copy of a 7 MB film; ``pixl anonymise``, issue 12)."""
        with path.open("wb") as file:
            file.write(self.header)
            file.write(self.pixel_element)


@dataclass
class _Context:
    hasher: ProjectHasher
    project: Project
    patient_key: str
    _offset: int | None = None
    dates_modified: bool = False

    def day_offset(self) -> int:
        if self._offset is None:
            self._offset = self.hasher.day_offset(
                self.patient_key, self.project.date_shift_max_days
            )
        return self._offset


def deidentify_bytes(data: bytes, project: Project, hasher: ProjectHasher) -> Deidentified:
    """De-identify one instance given as the bytes of a DICOM Part 10 file.

    Raises ``Refused`` with a reason code when the instance must not leave.
    """
    try:
        parsed = parse_header(data)
    except UnreadableDicom:
        raise Refused(REFUSED_UNREADABLE) from None
    return deidentify_parsed(parsed, project, hasher)


def deidentify_parsed(
    parsed: ParsedHeader, project: Project, hasher: ProjectHasher
) -> Deidentified:
    """As ``deidentify_bytes``, for a header already parsed (orthanc-anon parses it once)."""
    source = parsed.dataset
    try:
        if not parsed.pixel_element and PIXEL_DATA_TAG not in source and _declares_image(source):
            raise Refused(REFUSED_UNREADABLE)  # an image whose Pixel Data never came: truncated
        if parsed.pixel_element and not _pixel_element_fits(source, parsed.pixel_element):
            raise Refused(REFUSED_UNREADABLE)  # the raw bytes copied are not this image's pixels
        descriptors = DescriptorCounts()
        result = deidentify_dataset(source, project, hasher, descriptors)
    except _PARSE_ERRORS:  # elements are decoded lazily: a corrupt one fails only here
        raise Refused(REFUSED_UNREADABLE) from None
    pixel_rule = _rule_for(project.allowlist_for(*_device(source)), PIXEL_DATA_TAG)
    keeps_pixels = pixel_rule is not None and pixel_rule.action is Action.KEEP
    pixels = clean_pixels(source, result, parsed.pixel_element if keeps_pixels else b"", project)
    if pixels.refusal:
        raise Refused(pixels.refusal)
    return Deidentified(
        header=write_header(result),
        pixel_element=pixels.element,
        pixel_text=dict(pixels.counts) if pixels.counts is not None else None,
        study_uid=result.StudyInstanceUID,
        series_uid=result.SeriesInstanceUID,
        sop_instance_uid=result.SOPInstanceUID,
        descriptors=descriptors,
    )


def _declares_image(ds: Dataset) -> bool:
    """Whether the file meta or the data set names an image SOP class (which has Pixel Data)."""
    for sop_class in (ds.file_meta.get("MediaStorageSOPClassUID"), ds.get("SOPClassUID")):
        if sop_class and "Image Storage" in UID(str(sop_class)).name:
            return True
    return False


def _pixel_element_fits(ds: Dataset, element: bytes) -> bool:
    """Whether the raw Pixel Data element has the shape the header describes.

    The element is copied without being parsed, so a corrupt header that makes the parser stop
    at the wrong place (inside an icon, or with header bytes after it) must not be copied.
    """
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    if transfer_syntax.is_encapsulated:  # fragments of undefined length, walked by the parser
        return element[8:12] == b"\xff\xff\xff\xff" or element[4:8] == b"\xff\xff\xff\xff"
    length = len(element) - (8 if transfer_syntax.is_implicit_VR else 12)
    bits = int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
    bits *= int(ds.get("SamplesPerPixel") or 1) * int(ds.get("NumberOfFrames") or 1)
    expected = (bits * int(ds.get("BitsAllocated") or 0) + 7) // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        expected = expected * 2 // 3
    padding = bytes(element[len(element) - (length - expected) :]) if length > expected else b""
    return length >= expected and not padding.strip(b"\0")  # zero padding cannot hide text


def _device(ds: Dataset) -> tuple[str, str]:
    return str(ds.get("Manufacturer", "") or ""), str(ds.get("ManufacturerModelName", "") or "")


def check_policy(ds: Dataset, project: Project) -> None:
    """Refuse instances the project must never receive, before anything is built."""
    sop_class = ds.get("SOPClassUID")
    if not sop_class or "Image Storage" not in UID(str(sop_class)).name:
        raise Refused(REFUSED_NOT_IMAGE)
    if str(ds.get("Modality", "")).upper() not in project.modalities:
        raise Refused(REFUSED_MODALITY)
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if (
        burned_in == "YES"
        and not project.allow_burned_in_annotation
        and project.pixel_text != "mask"
    ):
        raise Refused(REFUSED_BURNED_IN)
    description = str(ds.get("SeriesDescription", "") or "")
    if any(pattern.search(description) for pattern in project.series_filters):
        raise Refused(REFUSED_SERIES)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            raise Refused(REFUSED_MISSING_UID)


def deidentify_dataset(
    source: Dataset,
    project: Project,
    hasher: ProjectHasher,
    descriptors: DescriptorCounts | None = None,
) -> Dataset:
    """Build the de-identified dataset (with new file meta) from ``source``; what the
    descriptor check cleans is added to ``descriptors``."""
    check_policy(source, project)
    context = _Context(hasher=hasher, project=project, patient_key=str(source.get("PatientID", "")))
    allowlist = project.allowlist_for(*_device(source))
    result = _filter(source, allowlist, context)
    # Kept free text checked against this instance's identifiers (pixl_core/dicom/descriptors.py).
    clean_descriptors(
        result, source, allowlist, project.descriptors, descriptors or DescriptorCounts()
    )
    _mark_deidentified(result, project, context)
    result.file_meta = _file_meta(result, source.file_meta.TransferSyntaxUID)
    return result


def _filter(source: Dataset, allowlist: AllowList, context: _Context) -> Dataset:
    """Copy into a new dataset only what ``allowlist`` lets through.

    Kept plain values are copied as the raw bytes they were read as (after their shape check),
    and the result keeps the source's encoding, so pydicom neither decodes nor re-encodes them:
    that is most of the cost of a header rewrite.
    """
    result = Dataset()
    for tag in list(source.keys()):
        group, number = tag >> 16, tag & 0xFFFF
        if number == 0x0000:  # group lengths are recomputed, never copied
            continue
        if group % 2 == 1:
            _copy_private(source, source[tag], allowlist, context, result)
            continue
        rule = allowlist.rule_for(AttributeKey(canonical_group(group), number))
        if rule is None:
            continue  # not listed: removed
        if rule.action is Action.KEEP and rule.items is None:
            raw = source.get_item(tag)
            if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
                vr = raw.VR or _dictionary_vr(tag)
                if vr != "SQ":
                    _check_shape(rule, _RawView(Tag(tag), vr, raw.value))
                    result[tag] = raw
                    continue
        new = _apply(rule, source[tag], context)
        if new is not None:
            result.add(new)
    result.set_original_encoding(*source.original_encoding, source.original_character_set)
    return result


@dataclass(frozen=True)
class _RawView:
    """What ``_check_shape`` reads of an element, for a value still in its raw bytes."""

    tag: BaseTag
    VR: str
    value: bytes | None


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _copy_private(
    source: Dataset, element: DataElement, allowlist: AllowList, context: _Context, result: Dataset
) -> None:
    group, number = element.tag.group, element.tag.element
    if number < 0x1000:
        return  # creators are written by private_block; 0x0001-0x000F are illegal anyway
    creator_element = source.get((group << 16) | (number >> 8))
    if creator_element is None or not isinstance(creator_element.value, str):
        return  # a private element without a creator cannot be identified: drop it
    creator = creator_element.value.strip()
    rule = allowlist.rule_for(AttributeKey(group, number & 0xFF, creator))
    if rule is None:
        return
    new = _apply(rule, element, context)
    if new is None:
        return
    block = result.private_block(group, creator, create=True)
    block.add_new(number & 0xFF, new.VR, new.value)


def _apply(rule: Rule, element: DataElement, context: _Context) -> DataElement | None:
    return ACTIONS[rule.action](rule, element, context)


def _keep(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    if element.VR == "SQ":
        if rule.items is None:
            raise Refused(REFUSED_INVALID_VALUE)
        items = Sequence([_filter(item, rule.items, context) for item in element.value])
        return DataElement(element.tag, "SQ", items)
    _check_shape(rule, element)
    return element


# Values of these VRs cannot carry text, which is why an allow-list may keep them. A kept value
# that does not have its VR's shape (text in an IS, a private "DS" written as LO or as UN text),
# a kept text value with control characters (a corrupt length swallowing the next elements), or
# an attribute that arrives with another VR than the allow-list was written for refuses the
# instance instead of being copied.
_SHAPES = {
    "AS": re.compile(r"\d{1,3} ?[DWMYdwmy]?"),  # loose: ages are often written "45Y"
    "DA": re.compile(r"\d{8}"),
    "DS": re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"),
    "DT": re.compile(r"\d{4,14}(\.\d{1,6})?([+-]\d{4})?"),
    "IS": re.compile(r"[+-]?\d+"),
    "TM": re.compile(r"\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?"),
    "UI": re.compile(r"[0-9.]+"),
}
_TEXT_VRS = frozenset(_SHAPES) | {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # TAB LF FF CR ESC allowed


def _declared_vrs(rule: Rule, element: DataElement) -> set[str]:
    if rule.key.is_private:
        return {rule.vr} if rule.vr else set()
    try:
        return set(dictionary_VR(element.tag).split(" or "))
    except KeyError:
        return {rule.vr} if rule.vr else set()


def _check_shape(rule: Rule, element: DataElement) -> None:
    vr = str(element.VR)
    declared = _declared_vrs(rule, element)
    if declared and vr not in declared:
        target = next(iter(declared)) if len(declared) == 1 else None
        text_for_text = rule.key.is_private and vr in _TEXT_VRS  # vendors are loose with VRs
        if target not in _TEXT_VRS or not (vr == "UN" or text_for_text):
            raise Refused(REFUSED_INVALID_VALUE)
        vr = target  # text standing in for the declared VR is judged as that VR
    if vr not in _TEXT_VRS or element.value is None:
        return
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # any byte is a character: shapes and controls still tell
    texts = value.split("\\") if isinstance(value, str) else value
    if not isinstance(texts, MultiValue | list | tuple):
        texts = [texts]
    shape = _SHAPES.get(vr)
    for text in texts:
        text = str(text).strip(" \0")
        if _CONTROL.search(text) or (shape is not None and text and not shape.fullmatch(text)):
            raise Refused(REFUSED_INVALID_VALUE)


def _empty(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    return DataElement(element.tag, element.VR, Sequence() if element.VR == "SQ" else None)


def _replace(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    return DataElement(element.tag, element.VR, rule.value)


def _hash(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    max_length = VR_MAX_LENGTH.get(element.VR, 64)

    def pseudonym(value: object) -> str:
        text = str(value).strip()
        if not text:
            return ""
        hashed = context.hasher.text(text, max_length)
        return hashed.upper() if element.VR == "CS" else hashed

    return DataElement(element.tag, element.VR, _map_values(element.value, pseudonym))


def _uid(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    def remap(value: object) -> str:
        text = str(value).strip().rstrip("\x00")
        return context.hasher.uid(text) if text else ""

    return DataElement(element.tag, "UI", _map_values(element.value, remap))


def _shift(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    context.dates_modified = True

    def shift(value: object) -> str:
        text = str(value).strip()
        if not text:
            return ""
        shape = _SHAPES.get(str(element.VR))
        if shape is None or not shape.fullmatch(text):
            raise Refused(REFUSED_INVALID_VALUE)  # e.g. text after the date: never copied
        day = _parse_day(text)
        shifted = day + dt.timedelta(days=context.day_offset())
        return shifted.strftime("%Y%m%d") + text[8:]

    return DataElement(element.tag, element.VR, _map_values(element.value, shift))


def _truncate(rule: Rule, element: DataElement, context: _Context) -> DataElement:
    context.dates_modified = True
    keep = 4 if rule.truncate_to == "year" else 6

    def truncate(value: object) -> str:
        text = str(value).strip()
        if not text:
            return ""
        if len(text) < keep or not text[:keep].isdigit():
            raise Refused(REFUSED_INVALID_VALUE)
        if element.VR == "DA":  # DA is always YYYYMMDD: pad to the first day
            return text[:keep] + ("0101" if keep == 4 else "01")
        return text[:keep]  # DT allows reduced precision

    return DataElement(element.tag, element.VR, _map_values(element.value, truncate))


def _remove(rule: Rule, element: DataElement, context: _Context) -> None:
    return None


def _parse_day(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        raise Refused(REFUSED_INVALID_VALUE) from None


def _map_values(value: object, function: Callable[[object], str]) -> object:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [function(v) for v in value]
    return function(value)


ACTIONS: dict[Action, Callable[[Rule, DataElement, _Context], DataElement | None]] = {
    Action.KEEP: _keep,
    Action.EMPTY: _empty,
    Action.REPLACE: _replace,
    Action.HASH: _hash,
    Action.UID: _uid,
    Action.SHIFT: _shift,
    Action.TRUNCATE: _truncate,
    Action.REMOVE: _remove,
}


def _rule_for(allowlist: AllowList, tag: int) -> Rule | None:
    return allowlist.rule_for(AttributeKey(tag >> 16, tag & 0xFFFF))


def _mark_deidentified(ds: Dataset, project: Project, context: _Context) -> None:
    """Record what was done, as PS3.15 E.1.1 asks, from the project's own claims."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"PIXL allow-list, project {project.slug}"[:64]
    ds.add(DataElement(0x00120064, "SQ", _method_codes(project.method_options)))
    if context.dates_modified:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"


@cache
def _method_codes(options: tuple[str, ...]) -> Sequence:
    """DeidentificationMethodCodeSequence for a set of claims (built once; only ever written)."""
    items = []
    for value, meaning in [BASIC_PROFILE_CODE] + [PS315_OPTIONS[o] for o in options]:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def _file_meta(ds: Dataset, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PIXL_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PIXL_IMPLEMENTATION_VERSION
    return meta
