"""Decode an instance's Pixel Data to grey values, and encode masked pixels back, uncompressed.

The engine copies Pixel Data through as raw bytes (``pixl_core.dicom.header``); the burned-in
text check (``pixl_core.dicom.pixels``) needs the values. Native (uncompressed) data is viewed in
place with numpy, no copy. Encapsulated data (RLE, JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000) is decoded by pydicom's handlers with the pylibjpeg plugins, which ship their codecs in
their wheels. Anything that cannot be decoded to the shape the header describes is refused
(``pixels_undecodable``): pixels nobody looked at never leave.

Only greyscale is accepted (MONOCHROME1, MONOCHROME2; 8 or 16 bits allocated, 1-16 stored,
signed or not); colour (RGB, PALETTE COLOR, YBR) is refused with its own reason
(``pixels_not_greyscale``), since a chest X-ray in colour is a screenshot or a secondary capture.

A masked image is always written native, Explicit VR Little Endian: never re-compressed, so never
lossy.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
REFUSED_UNDECODABLE = "pixels_undecodable"
REFUSED_NOT_GREYSCALE = "pixels_not_greyscale"
_IMAGE_PIXEL_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
)


class PixelsRefused(Exception):
    """The pixels cannot be checked; ``reason`` is a refusal code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_greyscale(ds: Dataset) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in GREYSCALE or int(ds.get("SamplesPerPixel") or 1) != 1:
        raise PixelsRefused(REFUSED_NOT_GREYSCALE)


def decode(ds: Dataset, element: bytes | memoryview, transfer_syntax: UID) -> np.ndarray:
    """The frames as an array (frames, rows, columns); read-only for native data (a view).

    Unsigned values with bits set above High Bit come back cleared, as a new (writable) array.

    ``element`` is the raw Pixel Data element (tag, VR, length, value) as in the file; ``ds`` the
    header it belongs to.
    """
    check_greyscale(ds)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits_allocated = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored") or bits_allocated)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
    except (AttributeError, TypeError, ValueError):
        raise PixelsRefused(REFUSED_UNDECODABLE) from None
    if (
        bits_allocated not in (8, 16)
        or not 1 <= bits_stored <= bits_allocated
        or rows < 1
        or columns < 1
        or frames < 1
    ):
        raise PixelsRefused(REFUSED_UNDECODABLE)
    if transfer_syntax.is_encapsulated:
        array = _decode_encapsulated(ds, element, transfer_syntax)
    else:
        array = _view_native(element, transfer_syntax, rows, columns, frames, bits_allocated)
        if signed:
            array = array.view(np.int8 if bits_allocated == 8 else "<i2")
    if array.shape != (frames, rows, columns):
        raise PixelsRefused(REFUSED_UNDECODABLE)
    if bits_stored < bits_allocated and not signed:
        top = (1 << bits_stored) - 1
        if int(array.max()) > top:
            # Bits above High Bit (an overlay in old files) are not shown, but would leave:
            # clear them; the caller then writes the cleared array, never the original bytes.
            array = array & np.asarray(top, dtype=array.dtype)
    return array


def _view_native(
    element: bytes | memoryview,
    transfer_syntax: UID,
    rows: int,
    columns: int,
    frames: int,
    bits_allocated: int,
) -> np.ndarray:
    header = 8 if transfer_syntax.is_implicit_VR else 12
    if len(element) < header:
        raise PixelsRefused(REFUSED_UNDECODABLE)
    if not transfer_syntax.is_little_endian:
        raise PixelsRefused(REFUSED_UNDECODABLE)  # Explicit VR Big Endian: retired, not read
    count = rows * columns * frames
    dtype = np.uint8 if bits_allocated == 8 else np.dtype("<u2")
    value = memoryview(element)[header:]
    if len(value) < count * (bits_allocated // 8):
        raise PixelsRefused(REFUSED_UNDECODABLE)
    return np.frombuffer(value, dtype=dtype, count=count).reshape(frames, rows, columns)


def _decode_encapsulated(
    ds: Dataset, element: bytes | memoryview, transfer_syntax: UID
) -> np.ndarray:
    """Decode with pydicom's handlers (pylibjpeg, openjpeg, RLE plugins) from a minimal dataset."""
    small = Dataset()
    for keyword in _IMAGE_PIXEL_KEYWORDS:
        if keyword in ds:
            setattr(small, keyword, ds.get(keyword))
    small.file_meta = FileMetaDataset()
    small.file_meta.TransferSyntaxUID = transfer_syntax
    data = bytes(element)
    if len(data) < 20 or data[:4] != b"\xe0\x7f\x10\x00":
        raise PixelsRefused(REFUSED_UNDECODABLE)
    (length,) = struct.unpack_from("<I", data, 8)
    if length != 0xFFFFFFFF or data[-8:-4] != b"\xfe\xff\xdd\xe0":
        raise PixelsRefused(REFUSED_UNDECODABLE)
    small.add_new(0x7FE00010, "OB", data[12:-8])
    small["PixelData"].is_undefined_length = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = small.pixel_array
    except Exception:  # any codec failure: the pixels were not seen, so they do not leave
        raise PixelsRefused(REFUSED_UNDECODABLE) from None
    return array.reshape((-1, *array.shape[-2:])) if array.ndim >= 2 else array


def native_element(frames: np.ndarray, bits_allocated: int) -> bytes:
    """An Explicit VR Little Endian Pixel Data element holding ``frames`` (OW for 16 bits)."""
    if bits_allocated == 8:
        value, vr = np.ascontiguousarray(frames, dtype=np.uint8).tobytes(), b"OB"
    else:
        value = np.ascontiguousarray(frames).astype(frames.dtype.newbyteorder("<")).tobytes()
        vr = b"OW"
    if len(value) % 2:
        value += b"\0"
    return b"\xe0\x7f\x10\x00" + vr + b"\0\0" + struct.pack("<I", len(value)) + value
