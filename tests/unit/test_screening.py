"""Screening before any DICOM parser: crafted files that crash or exhaust Orthanc (DCMTK) are
refused with their reason; real files of every encoding pass."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from pixl_core.dicom import screening
from pixl_core.dicom.screening import Malformed, ScreeningLimits, check_size, screen
from stack.synthetic.dicom_builder import file_meta_for, to_bytes
from tests.fixtures import malformed_dicom

# pydicom's own test files, one per encoding PIXL may meet: explicit and implicit VR little
# endian, explicit big endian, encapsulated JPEG, JPEG 2000 and RLE, and nested sequences.
REAL_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
)


def refusal(data: bytes, limits: ScreeningLimits | None = None) -> str:
    with pytest.raises(Malformed) as raised:
        screen(data, limits)
    return raised.value.reason


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_pass(name: str):
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data has no {name}"
    screen(Path(path).read_bytes())


def test_synthetic_instance_passes_in_each_little_endian_syntax():
    for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds = malformed_dicom.instance()
        ds.file_meta = file_meta_for(ds, syntax)
        screen(to_bytes(ds))
    screen(to_bytes(malformed_dicom.instance()))


def test_a_thousand_nested_sequences_are_refused():
    """The 45 KB file that made Orthanc 1.10.1 die with SIGSEGV on upload."""
    assert refusal(malformed_dicom.nested_sequences(1000)) == screening.MALFORMED_NESTING_TOO_DEEP


def test_nesting_up_to_the_limit_passes_and_one_more_is_refused():
    limits = ScreeningLimits(max_depth=16)
    screen(malformed_dicom.nested_sequences(16), limits)
    assert refusal(malformed_dicom.nested_sequences(17), limits) == "malformed_nesting_too_deep"


def test_nesting_in_defined_length_sequences_is_counted_too():
    """The same nesting with every length written out (no delimiters)."""
    inner = b""
    for _ in range(20):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    header, pixels = malformed_dicom._split(malformed_dicom.instance())
    assert refusal(header + inner + pixels) == "malformed_nesting_too_deep"
    screen(header + inner + pixels, ScreeningLimits(max_depth=20))


def test_deflate_bomb_is_refused_without_inflating_it_whole():
    """1 MB that inflates to 1 GiB (it took orthanc-anon to 3.3 GB): refused at the limit, and
    screening itself never holds more than a step of it."""
    bomb = malformed_dicom.deflate_bomb(1024)
    assert len(bomb) < 2 << 20
    tracemalloc.start()
    try:
        assert refusal(bomb) == screening.MALFORMED_INFLATES_TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_deflated_file_within_the_limit_is_walked_after_inflating():
    screen(malformed_dicom.deflated(malformed_dicom.nested_sequences(2)))
    deep = malformed_dicom.deflated(malformed_dicom.nested_sequences(40))
    assert refusal(deep) == "malformed_nesting_too_deep"


def test_broken_deflate_stream_is_refused():
    ds = malformed_dicom.instance()
    ds.file_meta = file_meta_for(ds, DeflatedExplicitVRLittleEndian)
    data = to_bytes(ds)
    meta_end = malformed_dicom._meta_end(data)
    assert refusal(data[:meta_end] + b"\xff" * 64) == screening.MALFORMED_DEFLATE


def test_deflated_file_cut_short_by_one_byte_is_refused():
    """The deflate stream must reach its final block: zlib (and pydicom) inflate a truncated
    stream without complaint."""
    data = malformed_dicom.deflated(malformed_dicom.nested_sequences(2))
    screen(data)
    assert refusal(data[:-1]) == screening.MALFORMED_DEFLATE


def test_the_engine_refuses_a_truncated_deflated_file_too():
    from pixl_core.dicom.header import UnreadableDicom, parse_header

    data = malformed_dicom.deflated(malformed_dicom.nested_sequences(2))
    parse_header(data)
    with pytest.raises(UnreadableDicom):
        parse_header(data[:-1])


def test_element_longer_than_the_file_is_refused():
    assert refusal(malformed_dicom.length_beyond_file()) == screening.MALFORMED_LENGTH_BEYOND_FILE


def test_truncated_file_is_refused():
    data = to_bytes(malformed_dicom.instance())
    assert refusal(data[: len(data) - 100]) == "malformed_length_beyond_file"
    assert refusal(data[:400]) == "malformed_length_beyond_file"


def test_unclosed_sequence_is_refused():
    header, _pixels = malformed_dicom._split(malformed_dicom.instance())
    opened = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    opened += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    assert refusal(header + opened) == "malformed_length_beyond_file"


def test_undefined_length_outside_a_sequence_is_refused():
    header, pixels = malformed_dicom._split(malformed_dicom.instance())
    blob = struct.pack("<HH2sHI", 0x0040, 0xB000, b"OB", 0, 0xFFFFFFFF)
    assert refusal(header + blob + pixels) == screening.MALFORMED_UNDEFINED_LENGTH


def test_sequence_holding_something_other_than_items_is_refused():
    header, pixels = malformed_dicom._split(malformed_dicom.instance())
    bad = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    bad += struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 4) + b"A^B "
    assert refusal(header + bad + pixels) == screening.MALFORMED_STRUCTURE


def test_not_dicom_is_refused():
    assert refusal(b"not DICOM at all") == screening.MALFORMED_NOT_DICOM
    data = to_bytes(malformed_dicom.instance())
    assert refusal(b"\0" * 128 + b"XXXX" + data[132:]) == screening.MALFORMED_NOT_DICOM


def test_too_many_elements_are_refused():
    data = to_bytes(malformed_dicom.instance())
    assert refusal(data, ScreeningLimits(max_elements=10)) == "malformed_too_many_elements"


def test_file_larger_than_the_limit_is_refused_from_its_size_alone():
    limits = ScreeningLimits(max_bytes=1000)
    check_size(1000, None, limits)
    with pytest.raises(Malformed, match="malformed_too_large"):
        check_size(1001, "1.2.840.10008.1.2.1", limits)
    with pytest.raises(Malformed, match="malformed_inflates_too_large"):
        check_size(1001, "1.2.840.10008.1.2.1.99", limits)
    assert refusal(to_bytes(malformed_dicom.instance()), limits) == "malformed_too_large"


def test_reasons_are_short_lowercase_codes():
    """They are stored as refusal reasons and error codes (``^[a-z][a-z0-9_.-]{0,63}$``)."""
    from pixl_core.db.work_queue import check_error_code

    for name in dir(screening):
        if name.startswith("MALFORMED_"):
            check_error_code(getattr(screening, name))
