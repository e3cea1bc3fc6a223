"""The signed raw → anon hand-off: only orthanc-raw's instances are accepted by orthanc-anon."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file

from pixl_core.config.allowlist import load_allowlist_file
from pixl_core.dicom import handoff
from pixl_core.errors import PixlConfigError

SECRET = b"test-secret-0123456789"


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
