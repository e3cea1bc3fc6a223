"""The raw → anon hand-off: which project and work item an instance is for, signed.

orthanc-anon de-identifies each instance as it arrives, so the instance itself must say which
project's allow-list applies (a study asked for by two projects arrives twice). orthanc-raw adds
a private block naming the project and the work item, with an HMAC over both and the instance
UID; orthanc-anon refuses anything without a valid signature, which is how it accepts instances
only from orthanc-raw. The block never leaves: private attributes are removed unless an
allow-list lists them, and allow-lists may not list this creator.
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


def _signature(secret: bytes, project: str, work_item_id: int, sop_instance_uid: str) -> str:
    key = hmac.new(secret, b"pixl-handoff", hashlib.sha256).digest()
    message = f"{project}\x00{work_item_id}\x00{sop_instance_uid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:64]


def mark(data: bytes, handoff: Handoff, secret: bytes) -> bytes:
    """Return the instance with the signed hand-off block added (pixel data untouched)."""
    parsed = parse_header(data)
    dataset = parsed.dataset
    sop_uid = str(dataset.get("SOPInstanceUID", ""))
    block = dataset.private_block(HANDOFF_GROUP, HANDOFF_CREATOR, create=True)
    block.add_new(_PROJECT, "LO", handoff.project)
    block.add_new(_WORK_ITEM, "LO", str(handoff.work_item_id))
    block.add_new(
        _SIGNATURE, "LO", _signature(secret, handoff.project, handoff.work_item_id, sop_uid)
    )
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
    expected = _signature(secret, project, work_item_id, str(dataset.get("SOPInstanceUID", "")))
    if not hmac.compare_digest(signature, expected):
        raise HandoffError("bad hand-off signature")
    return Handoff(project=project, work_item_id=work_item_id)


def read_bytes(data: bytes, secret: bytes) -> tuple[Handoff, ParsedHeader]:
    parsed = parse_header(data)
    return read(parsed, secret), parsed
