"""Screen a DICOM file's bytes before a DICOM parser sees them: refuse what would crash one.

Why this exists: Orthanc 1.10.1 parses every instance uploaded over REST with DCMTK on an HTTP
worker thread, and DCMTK parses nested sequences recursively. A 45 KB file with 1,000 nested
sequences overflows that thread's stack and Orthanc dies (SIGSEGV), whatever plugin callback is
registered: the received-instance callback runs, may answer DISCARD, and Orthanc still parses
the file. A 1 MB deflated file that inflates to 1 GiB takes Orthanc (and pydicom) to several
GiB of memory. So orthanc-raw screens every instance here, in Python, before it hands it to
orthanc-anon, and refuses what fails with a short reason (``malformed_…``) instead of sending it.

How: a single pass over the bytes with an explicit stack (no recursion, so no depth makes *this*
code fail), reading element headers only and skipping values by their declared length. It
checks what makes parsers fall over:

- every declared length (elements, items, fragments) fits inside its container and the file;
- undefined lengths only where DICOM allows them (sequences, items, encapsulated Pixel Data);
- sequences nest at most ``max_depth`` deep, and there are at most ``max_elements`` elements;
- the file (and, for Deflated Explicit VR Little Endian, the inflated dataset) is at most
  ``max_bytes``: a deflated dataset is inflated in bounded steps and refused as soon as it
  passes the limit, never inflated whole.

It never decodes a value (apart from the transfer syntax UID) and never builds a dataset.
pydicom's data dictionary is used only to learn which tags are sequences in Implicit VR.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

# Refusal reasons (stored as the instance's refusal reason and, when nothing else of the study
# may leave, as the study's ``last_error_code``).
MALFORMED_NOT_DICOM = "malformed_not_dicom"
MALFORMED_TOO_LARGE = "malformed_too_large"
MALFORMED_INFLATES_TOO_LARGE = "malformed_inflates_too_large"
MALFORMED_DEFLATE = "malformed_deflate"
MALFORMED_NESTING_TOO_DEEP = "malformed_nesting_too_deep"
MALFORMED_TOO_MANY_ELEMENTS = "malformed_too_many_elements"
MALFORMED_LENGTH_BEYOND_FILE = "malformed_length_beyond_file"
MALFORMED_UNDEFINED_LENGTH = "malformed_undefined_length"
MALFORMED_STRUCTURE = "malformed_structure"
MALFORMED_TRANSFER_SYNTAX = "malformed_transfer_syntax"

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
_PIXEL_DATA = 0x7FE00010
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_INFLATE_STEP = 1 << 20


class Malformed(Exception):
    """The file must not reach a DICOM parser. ``reason`` is a short code, never a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ScreeningLimits:
    """What an instance may be. The defaults are far above any chest radiograph (tens of MB,
    sequences nested a few deep) and far below what crashes Orthanc 1.10.1 (1,000 nested
    sequences on an HTTP thread) or exhausts it (a 1 GiB inflated dataset)."""

    max_bytes: int = 512 << 20
    max_depth: int = 16
    max_elements: int = 200_000


@dataclass
class _Container:
    """An open sequence or item: where it ends (None: undefined length) and how it is coded."""

    is_sequence: bool
    end: int | None
    explicit: bool


def check_size(size: int, transfer_syntax: str | None, limits: ScreeningLimits) -> None:
    """Refuse a file larger than ``limits.max_bytes`` before reading it at all (its size and
    transfer syntax come from Orthanc's index). A deflated file inflates to more than it is."""
    if size > limits.max_bytes:
        deflated = (transfer_syntax or "").strip() == DEFLATED
        raise Malformed(MALFORMED_INFLATES_TOO_LARGE if deflated else MALFORMED_TOO_LARGE)


def screen(data: bytes | memoryview, limits: ScreeningLimits | None = None) -> None:
    """Return if ``data`` (a Part 10 file) is safe to hand to a DICOM parser; else ``Malformed``."""
    limits = limits or ScreeningLimits()
    view = memoryview(data)
    check_size(len(view), None, limits)
    if len(view) < 132 or bytes(view[128:132]) != b"DICM":
        raise Malformed(MALFORMED_NOT_DICOM)
    body_start, transfer_syntax = _file_meta(view)
    if transfer_syntax == DEFLATED:
        body = memoryview(_inflate(view[body_start:], limits.max_bytes))
        _walk(body, 0, explicit=True, little=True, limits=limits)
        return
    explicit = transfer_syntax != IMPLICIT_LITTLE
    little = transfer_syntax != EXPLICIT_BIG
    _walk(view, body_start, explicit=explicit, little=little, limits=limits)


def _file_meta(view: memoryview) -> tuple[int, str]:
    """Walk the file meta group (always Explicit VR Little Endian); return where the dataset
    starts and its transfer syntax UID."""
    position = 132
    transfer_syntax = None
    while position + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, position)
        if group != 0x0002:
            break
        vr = bytes(view[position + 4 : position + 6])
        if vr in _LONG_VRS:
            if position + 12 > len(view):
                raise Malformed(MALFORMED_STRUCTURE)
            (length,) = struct.unpack_from("<I", view, position + 8)
            position += 12
        elif vr in _SHORT_VRS:
            (length,) = struct.unpack_from("<H", view, position + 6)
            position += 8
        else:
            raise Malformed(MALFORMED_NOT_DICOM)
        if length == _UNDEFINED:
            raise Malformed(MALFORMED_UNDEFINED_LENGTH)
        if position + length > len(view):
            raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
        if element == 0x0010:
            transfer_syntax = (
                bytes(view[position : position + length])
                .rstrip(b"\x00 ")
                .decode("ascii", "replace")
            )
        position += length
    if not transfer_syntax:
        raise Malformed(MALFORMED_NOT_DICOM)
    if not transfer_syntax.startswith("1.2.840.10008.1.2"):
        raise Malformed(MALFORMED_TRANSFER_SYNTAX)
    return position, transfer_syntax


def _inflate(compressed: memoryview, max_bytes: int) -> bytearray:
    """Inflate a raw deflate stream, refusing it if it passes ``max_bytes``.

    Two passes: the first only counts (memory stays at one step), so a bomb is refused without
    ever being held; only a stream within the limit is inflated again, to be walked.
    """
    _inflated_size(compressed, max_bytes)
    try:
        inflated = bytearray(zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed))
    except zlib.error:
        raise Malformed(MALFORMED_DEFLATE) from None
    return inflated


def _inflated_size(compressed: memoryview, max_bytes: int) -> int:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    pending: bytes | memoryview = compressed
    try:
        while pending and not inflater.eof:
            size += len(inflater.decompress(pending, _INFLATE_STEP))
            if size > max_bytes:
                raise Malformed(MALFORMED_INFLATES_TOO_LARGE)
            pending = inflater.unconsumed_tail
        size += len(inflater.flush())
    except zlib.error:
        raise Malformed(MALFORMED_DEFLATE) from None
    if not inflater.eof:  # the stream stops before its final block: a truncated file
        raise Malformed(MALFORMED_DEFLATE)
    if size > max_bytes:
        raise Malformed(MALFORMED_INFLATES_TOO_LARGE)
    return size


def _is_sequence_tag(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _walk(
    view: memoryview, position: int, *, explicit: bool, little: bool, limits: ScreeningLimits
) -> None:
    """Walk the dataset from ``position`` to the end of ``view`` without recursing."""
    order = "<" if little else ">"
    end_of_file = len(view)
    stack: list[_Container] = []
    elements = 0
    while True:
        top = stack[-1] if stack else None
        end = top.end if top is not None and top.end is not None else end_of_file
        if top is not None and top.end is not None and position == top.end:
            stack.pop()
            continue
        if position == end_of_file:
            if stack:  # a sequence or item of undefined length was never closed
                raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
            return
        if position + 8 > end:
            raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
        coded_explicit = top.explicit if top is not None else explicit
        # Item tags are always little endian in the little endian syntaxes, and follow the
        # dataset's byte order otherwise.
        group, element = struct.unpack_from(order + "HH", view, position)
        if group == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", view, position + 4)
            position += 8
            position = _delimiter(stack, element, length, position, end, coded_explicit)
            continue
        if top is not None and top.is_sequence:  # a sequence holds items only
            raise Malformed(MALFORMED_STRUCTURE)
        tag = (group << 16) | element
        if coded_explicit:
            vr = bytes(view[position + 4 : position + 6])
            if vr in _LONG_VRS:
                if position + 12 > end:
                    raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
                (length,) = struct.unpack_from(order + "I", view, position + 8)
                position += 12
            elif vr in _SHORT_VRS:
                (length,) = struct.unpack_from(order + "H", view, position + 6)
                position += 8
            else:
                raise Malformed(MALFORMED_STRUCTURE)
        else:
            vr = b""
            (length,) = struct.unpack_from(order + "I", view, position + 4)
            position += 8
        elements += 1
        if elements > limits.max_elements:
            raise Malformed(MALFORMED_TOO_MANY_ELEMENTS)
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA and vr in (b"OB", b"OW"):
                position = _fragments(view, position, end, order)
                continue
            if vr not in (b"SQ", b"UN", b""):
                raise Malformed(MALFORMED_UNDEFINED_LENGTH)
            # An undefined-length UN is a sequence coded in Implicit VR Little Endian (PS3.5 6.2.2).
            _open_sequence(stack, None, coded_explicit and vr == b"SQ", limits)
            continue
        if position + length > end:
            raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
        if vr == b"SQ" or (vr in (b"UN", b"") and _is_sequence_tag(tag)):
            if length == 0:
                continue
            _open_sequence(stack, position + length, coded_explicit and vr == b"SQ", limits)
            continue
        position += length


def _open_sequence(
    stack: list[_Container], end: int | None, explicit: bool, limits: ScreeningLimits
) -> None:
    """Open a sequence, unless that would nest more than ``limits.max_depth`` deep (the stack
    alternates sequences and items, so it holds at most twice that many containers)."""
    if sum(container.is_sequence for container in stack) >= limits.max_depth:
        raise Malformed(MALFORMED_NESTING_TOO_DEEP)
    stack.append(_Container(is_sequence=True, end=end, explicit=explicit))


def _delimiter(
    stack: list[_Container], element: int, length: int, position: int, end: int, explicit: bool
) -> int:
    """Handle an item or delimitation tag at ``position`` (just past its 8 bytes)."""
    top = stack[-1] if stack else None
    if element == _ITEM:
        if top is None or not top.is_sequence:
            raise Malformed(MALFORMED_STRUCTURE)
        if length == _UNDEFINED:
            stack.append(_Container(is_sequence=False, end=None, explicit=explicit))
        else:
            if position + length > end:
                raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
            stack.append(_Container(is_sequence=False, end=position + length, explicit=explicit))
        return position
    if element == _ITEM_END and top is not None and not top.is_sequence and top.end is None:
        stack.pop()
        return position
    if element == _SEQUENCE_END and top is not None and top.is_sequence and top.end is None:
        stack.pop()
        return position
    raise Malformed(MALFORMED_STRUCTURE)


def _fragments(view: memoryview, position: int, end: int, order: str) -> int:
    """Skip the items of encapsulated Pixel Data up to its Sequence Delimitation Item."""
    while position + 8 <= end:
        group, element, length = struct.unpack_from(order + "HHI", view, position)
        position += 8
        if (group, element) == (0xFFFE, _SEQUENCE_END):
            return position
        if (group, element) != (0xFFFE, _ITEM) or length == _UNDEFINED:
            raise Malformed(MALFORMED_STRUCTURE)
        if position + length > end:
            raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
        position += length
    raise Malformed(MALFORMED_LENGTH_BEYOND_FILE)
