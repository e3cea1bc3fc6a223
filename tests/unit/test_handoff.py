"""The signed raw → anon hand-off: only orthanc-raw's instances are accepted by orthanc-anon,
and a block is valid only on the instance (UIDs and pixels) it was made for."""

from __future__ import annotations

import io
import secrets

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pixl_core.config.allowlist import load_allowlist_file
from pixl_core.dicom import handoff
from pixl_core.dicom.header import parse_header, write_file
from pixl_core.errors import PixlConfigError

SECRET = secrets.token_hex(32).encode()  # drawn per run: no key is written in the repository


@pytest.fixture(scope="module")
def instance() -> bytes:
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        return handle.read()


def test_marked_instance_reads_back_with_its_project_and_work_item(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 42), SECRET)
    found, parsed = handoff.read_bytes(marked, SECRET)
    assert found == handoff.Handoff("chest-xray", 42)
    assert bytes(parsed.pixel_element) in instance  # pixel data carried through untouched


def test_instance_without_handoff_is_refused(instance: bytes):
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(instance, SECRET)


def test_handoff_signed_with_another_secret_is_refused(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 1), b"another-secret-0123456")
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(marked, SECRET)


def test_tampered_project_is_refused(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 7), SECRET)
    tampered = marked.replace(b"chest-xray", b"other-proj", 1)
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(tampered, SECRET)


def test_allowlist_may_not_keep_the_handoff_block(tmp_path):
    path = tmp_path / "leaky.yaml"
    path.write_text(
        "attributes:\n"
        '  - {attribute: "(0011,xx10)", private_creator: PIXL HANDOFF 1, vr: LO, action: keep}\n'
    )
    with pytest.raises(PixlConfigError, match="hand-off block"):
        load_allowlist_file(path)


def _with_block_of(marked: bytes, target: bytes) -> bytes:
    """``target`` carrying the hand-off block copied, element by element, from ``marked``."""
    source = parse_header(marked).dataset
    parsed = parse_header(target)
    for element in source.group_dataset(handoff.HANDOFF_GROUP):
        parsed.dataset.add(element)
    return write_file(parsed.dataset, parsed.pixel_element)


def _other_pixels(data: bytes) -> bytes:
    """The same header (UIDs included) with every pixel changed."""
    ds = dcmread(io.BytesIO(data))
    ds.PixelData = bytes(255 - b for b in ds.PixelData)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_block_copied_onto_another_instance_is_refused(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 3), SECRET)
    other = dcmread(io.BytesIO(instance))
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "2.25.12345"
    out = io.BytesIO()
    other.save_as(out, enforce_file_format=True)
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(_with_block_of(marked, out.getvalue()), SECRET)


def test_block_replayed_on_the_same_header_with_other_pixels_is_refused(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 3), SECRET)
    assert handoff.read_bytes(_with_block_of(marked, instance), SECRET)[0].work_item_id == 3
    forged = _with_block_of(marked, _other_pixels(instance))
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(forged, SECRET)


def test_block_replayed_into_another_study_is_refused(instance: bytes):
    marked = handoff.mark(instance, handoff.Handoff("chest-xray", 3), SECRET)
    moved = dcmread(io.BytesIO(instance))
    moved.StudyInstanceUID = "2.25.999"
    out = io.BytesIO()
    moved.save_as(out, enforce_file_format=True)
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(_with_block_of(marked, out.getvalue()), SECRET)


def test_deflated_instance_is_bound_to_its_pixels_too(instance: bytes):
    ds = dcmread(io.BytesIO(instance))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    deflated = out.getvalue()
    marked = handoff.mark(deflated, handoff.Handoff("chest-xray", 4), SECRET)
    assert handoff.read_bytes(marked, SECRET)[0] == handoff.Handoff("chest-xray", 4)
    with pytest.raises(handoff.HandoffError):
        handoff.read_bytes(_with_block_of(marked, _other_pixels(deflated)), SECRET)
