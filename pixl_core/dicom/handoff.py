"""The raw → anon hand-off: which project and work item an instance is for, signed.

orthanc-anon de-identifies each instance as it arrives, so the instance itself must say which
project's allow-list applies (a study asked for by two projects arrives twice). orthanc-raw adds
a private block naming the project and the work item, with an HMAC over both and over what the
block vouches for: the instance's Study and SOP Instance UIDs and a SHA-256 of its Pixel Data
as encoded. orthanc-anon refuses anything without a valid signature, which is how it accepts
instances only from orthanc-raw; and a block copied onto another instance, or onto the same
header with other pixels, no longer verifies. The block never leaves: private attributes are
removed unless an allow-list lists them, and allow-lists may not list this creator.

The Pixel Data digest is over the element exactly as ``parse_header`` keeps it (tag, length and
value as encoded, untouched by the hand-off), or over the decoded value for a deflated file,
whose pixels are re-encoded on write; so both ends compute it without decoding a pixel.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pixl_core.dicom.header import ParsedHeader, parse_header, write_file

HANDOFF_GROUP = 0x0011
HANDOFF_CREATOR = "PIXL HANDOFF 1"
_PROJECT, _WORK_ITEM, _SIGNATURE = 0x10, 0x11, 0x12


class HandoffError(Exception):
    """The instance carries no valid hand-off: it did not come from orthanc-raw."""


@dataclass(frozen=True)
class Handoff:
    project: str
    work_item_id: int


def pixel_digest(parsed: ParsedHeader) -> str:
    """SHA-256 of the instance's Pixel Data as encoded (b"" when it has none)."""
    if parsed.pixel_element:
        return hashlib.sha256(parsed.pixel_element).hexdigest()
    value = parsed.dataset.get("PixelData")  # a deflated file: parsed whole
    return hashlib.sha256(bytes(value) if value is not None else b"").hexdigest()


def _signature(secret: bytes, project: str, work_item_id: int, parsed: ParsedHeader) -> str:
    dataset = parsed.dataset
    key = hmac.new(secret, b"pixl-handoff", hashlib.sha256).digest()
    fields = (
        "v2",
        project,
        str(work_item_id),
        str(dataset.get("StudyInstanceUID", "")),
        str(dataset.get("SOPInstanceUID", "")),
        pixel_digest(parsed),
    )
    return hmac.new(key, "\x00".join(fields).encode(), hashlib.sha256).hexdigest()[:64]


def mark(data: bytes, handoff: Handoff, secret: bytes) -> bytes:
    """Return the instance with the signed hand-off block added (pixel data untouched)."""
    parsed = parse_header(data)
    dataset = parsed.dataset
    signature = _signature(secret, handoff.project, handoff.work_item_id, parsed)
    block = dataset.private_block(HANDOFF_GROUP, HANDOFF_CREATOR, create=True)
    block.add_new(_PROJECT, "LO", handoff.project)
    block.add_new(_WORK_ITEM, "LO", str(handoff.work_item_id))
    block.add_new(_SIGNATURE, "LO", signature)
    return write_file(dataset, parsed.pixel_element)


def read(parsed: ParsedHeader, secret: bytes) -> Handoff:
    """The verified hand-off of an instance, or ``HandoffError``."""
    dataset: Dataset = parsed.dataset
    try:
        block = dataset.private_block(HANDOFF_GROUP, HANDOFF_CREATOR)
        project = str(block[_PROJECT].value)
        work_item_id = int(str(block[_WORK_ITEM].value))
        signature = str(block[_SIGNATURE].value)
    except (KeyError, ValueError):
        raise HandoffError("no hand-off block") from None
    expected = _signature(secret, project, work_item_id, parsed)
    if not hmac.compare_digest(signature, expected):
        raise HandoffError("bad hand-off signature")
    return Handoff(project=project, work_item_id=work_item_id)


def read_bytes(data: bytes, secret: bytes) -> tuple[Handoff, ParsedHeader]:
    parsed = parse_header(data)
    return read(parsed, secret), parsed
