"""Rewrite a DICOM file's header without touching its pixel data.

Both the de-identification engine and the raw → anon hand-off change only header attributes.
Parsing stops before Pixel Data; the new header is written by pydicom and the Pixel Data element
is copied through byte for byte from the input buffer. That keeps the cost near one read and one
write of the file and never decodes (or even copies twice) the pixels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pixl_core.dicom.screening import Malformed, screen

PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_DATA_BYTES = b"\xe0\x7f\x10\x00"


class UnreadableDicom(Exception):
    """The bytes are not a DICOM file this code can rewrite safely."""


@dataclass
class ParsedHeader:
    """The header as a dataset and the raw Pixel Data element that followed it."""

    dataset: Dataset
    # A view into the input buffer, not a copy: the pixels are copied once, into the output.
    pixel_element: bytes | memoryview


def parse_header(data: bytes) -> ParsedHeader:
    """Parse everything before Pixel Data; keep the Pixel Data element as raw bytes.

    Elements after Pixel Data (trailing padding, digital signatures) are dropped.
    Deflated files are parsed whole (their header offsets do not map onto ``data``).
    """
    buffer = BytesIO(data)
    try:
        dataset = dcmread(buffer, stop_before_pixels=True)
        offset = buffer.tell()
        transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
        if transfer_syntax is None:
            raise UnreadableDicom("no transfer syntax")
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            return _parse_whole(data)
        implicit = transfer_syntax.is_implicit_VR
    except UnreadableDicom:
        raise
    except Exception:  # any parse failure (zlib, pydicom's lazy decoding): cannot be trusted
        raise UnreadableDicom("unparseable header") from None
    return ParsedHeader(dataset=dataset, pixel_element=_raw_pixel_element(data, offset, implicit))


def _parse_whole(data: bytes) -> ParsedHeader:
    """Deflated files: the whole dataset, Pixel Data included, is re-encoded on write.

    Screened first: pydicom inflates a truncated deflate stream without complaint (a file cut
    short by a byte was accepted), and an inflated size is only known by inflating.
    """
    try:
        screen(data)
    except Malformed as refusal:
        raise UnreadableDicom(refusal.reason) from None
    return ParsedHeader(dataset=dcmread(BytesIO(data)), pixel_element=b"")


def _raw_pixel_element(data: bytes, offset: int, implicit: bool) -> memoryview:
    """The Pixel Data element exactly as encoded in the input, or b"" if there is none."""
    if offset + 8 > len(data) or data[offset : offset + 4] != _PIXEL_DATA_BYTES:
        return memoryview(b"")
    if implicit:
        (length,) = struct.unpack_from("<I", data, offset + 4)
        start = offset + 8
    else:
        (length,) = struct.unpack_from("<I", data, offset + 8)
        start = offset + 12
    end = start + length if length != 0xFFFFFFFF else _end_of_encapsulated(data, start)
    if end > len(data):
        raise UnreadableDicom("truncated pixel data")
    return memoryview(data)[offset:end]


def _end_of_encapsulated(data: bytes, position: int) -> int:
    """Walk the fragment items of encapsulated Pixel Data to the Sequence Delimitation Item."""
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, position)
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return position
        if (group, element) != (0xFFFE, 0xE000):
            break
        position += length
    raise UnreadableDicom("unterminated encapsulated pixel data")


def write_header(dataset: Dataset) -> bytes:
    """Serialise ``dataset`` with its file meta: the file up to where the raw Pixel Data element
    is appended. A caller writing to disk writes the two one after the other (``write_file``
    would first copy both into one buffer: a whole film's worth per file)."""
    out = BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_file(dataset: Dataset, pixel_element: bytes | memoryview = b"") -> bytes:
    """Serialise ``dataset`` (with its file meta) and append the raw Pixel Data element."""
    header = write_header(dataset)
    return b"".join((header, pixel_element)) if pixel_element else header
