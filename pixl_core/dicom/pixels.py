"""Burned-in text: find it in the pixels, read it, and mask or refuse it (``pixel_text:``).

The header engine (``pixl_core.dicom.deid``) calls ``clean_pixels`` once per instance, after the
new header is built. Both ``pixl anonymise`` and orthanc-anon therefore check pixels the same way.

Why it is shaped this way:
- Headers are no guide (``BurnedInAnnotation`` is often absent or wrong), so every instance's
  pixels are decoded (``pixl_core.dicom.pixel_data``); pixels that cannot be decoded are refused.
- Finding text is cheap morphology over the whole image (``text_regions``); reading it (OCR) is
  the expensive step, so only the regions found are read (``ocr``).
- The decision is fail-closed: a region is kept only when it reads as benign markers with
  confidence (``burned_in_text.is_benign``). Everything else found is masked (``mask``) or refuses
  the instance (``refuse``). What the text *is* (a name, an MRN, a date...) is counted for the
  record, never used to keep it.
- An instance with no region to mask keeps its Pixel Data element byte for byte (and its
  transfer syntax). A masked one is written native, Explicit VR Little Endian, never lossy.
- Every checked instance says so: ``BurnedInAnnotation`` NO and the Clean Pixel Data option
  (113101) in ``DeidentificationMethodCodeSequence`` (``Project.method_options``).
- The detector (``text_regions``, ``ocr``: OpenCV, tesseract) and ``burned_in_text`` are imported
  by the first film checked, not with this module: the engine imports this module, and a project
  with ``pixel_text: off`` would otherwise pay ~20 ms of OpenCV per process (``pixl anonymise``,
  issue 12). ``load_detector`` imports them ahead, e.g. before ``pixl anonymise`` forks workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from pixl_core.config.pixel_policy import BenignMarkers, PixelText
from pixl_core.config.projects import Project
from pixl_core.dicom.pixel_data import PixelsRefused, decode, native_element

if TYPE_CHECKING:
    from pixl_core.dicom.burned_in_text import InstanceIdentifiers
    from pixl_core.dicom.text_regions import Box

REFUSED_BURNED_IN_TEXT = "burned_in_text"
_RING = 3  # pixels around a region whose median is the fill value


@dataclass(frozen=True)
class Region:
    """One text line found: where (frame and box), what kinds it holds, and the decision."""

    frame: int
    box: Box
    kinds: frozenset[str]
    benign: bool

    @property
    def masked(self) -> bool:
        return not self.benign


@dataclass
class Analysis:
    """The decoded frames and the regions found in them."""

    frames: np.ndarray
    regions: list[Region] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for region in self.regions:
            counts.update(["benign"] if region.benign else (region.kinds or {"other_text"}))
        return counts


@dataclass
class PixelOutcome:
    """What the engine writes: the Pixel Data element (the input's, or a masked one), the
    counts by kind (None: pixels not checked), and a refusal reason when the instance must not
    leave."""

    element: bytes | memoryview
    counts: Counter[str] | None = None
    refusal: str | None = None
    masked_regions: int = 0


def load_detector() -> None:
    """Import what checking a film needs now rather than on the first film (which is where
    ``analyse`` imports it): in a parent about to fork workers, so that each inherits it."""
    from pixl_core.dicom import burned_in_text, ocr, text_regions  # noqa: F401


def analyse(
    source: Dataset, element: bytes | memoryview, transfer_syntax: UID, project: Project
) -> Analysis:
    """Decode the pixels and find, read and classify their text. Raises ``PixelsRefused``."""
    from pixl_core.dicom.burned_in_text import identifiers_of
    from pixl_core.dicom.text_regions import (
        find_text_boxes,
        grown,
        has_glyphs,
        stretch_to_8bit,
        value_range,
    )

    frames = decode(source, element, transfer_syntax)
    analysis = Analysis(frames=frames)
    ids: InstanceIdentifiers | None = None
    markers = project.benign_markers
    for index, frame in enumerate(frames):
        boxes = find_text_boxes(frame)
        if not boxes:
            continue
        if ids is None:
            ids = identifiers_of(source)
        for core in boxes:
            box = grown(core, *frame.shape)  # what is masked
            read = grown(core, *frame.shape, sideways=False)  # what is read
            crop = frame[read.top : read.bottom, read.left : read.right]
            low, high = value_range(crop)
            crop8 = stretch_to_8bit(crop, low, high)
            if not has_glyphs(crop8):
                continue  # an edge of anatomy or hardware crossing the box: nothing to read
            benign, kinds = _read_region(crop8, core, markers, ids)
            analysis.regions.append(Region(index, box, kinds, benign))
    return analysis


def _read_region(
    crop8: np.ndarray, core: Box, markers: BenignMarkers | None, ids: InstanceIdentifiers
) -> tuple[bool, frozenset[str]]:
    """OCR one region and decide. A short region that does not read as benign is read again
    mirrored: radiographers' lead markers (L, R) are often imaged back to front."""
    from pixl_core.dicom import ocr
    from pixl_core.dicom.burned_in_text import is_benign, kinds_of

    reading = ocr.read_line(crop8)
    if markers is None:
        return False, frozenset(kinds_of(reading.text, ids))
    if is_benign(reading.text, reading.confidence, core.width, core.height, markers):
        return True, frozenset()
    if core.width <= 3 * core.height:
        mirrored = ocr.read_line(np.ascontiguousarray(crop8[:, ::-1]))
        if is_benign(mirrored.text, mirrored.confidence, core.width, core.height, markers):
            return True, frozenset()
    return False, frozenset(kinds_of(reading.text, ids))


def mask(frames: np.ndarray, regions: list[Region]) -> np.ndarray:
    """A copy of ``frames`` with every masked region filled with the median of the ring of
    pixels just outside it (the local background: air, collimation or anatomy)."""
    out = np.array(frames, copy=True)
    _, rows, columns = out.shape
    for region in regions:
        if region.benign:
            continue
        box = region.box
        frame = out[region.frame]
        outer = box.padded(_RING, rows, columns)
        ring = frame[outer.top : outer.bottom, outer.left : outer.right].copy()
        keep = np.ones(ring.shape, dtype=bool)
        keep[box.top - outer.top : box.bottom - outer.top, box.left - outer.left : box.right - outer.left] = False  # fmt: skip
        values = ring[keep]
        fill = np.median(values) if values.size else 0
        frame[box.top : box.bottom, box.left : box.right] = np.asarray(fill).astype(out.dtype)
    return out


def clean_pixels(
    source: Dataset, result: Dataset, element: bytes | memoryview, project: Project
) -> PixelOutcome:
    """Check ``source``'s pixels under the project's policy and update ``result``'s header.

    ``element`` is the raw Pixel Data element the engine would copy (empty when the pixels are in
    ``result`` itself: a deflated input, parsed whole).
    """
    if project.pixel_text is PixelText.OFF:
        return PixelOutcome(element=element)
    transfer_syntax = source.file_meta.TransferSyntaxUID
    in_dataset = not element and "PixelData" in result
    if in_dataset:  # deflated input: the pixels were parsed into the dataset, native LE
        value = bytes(result.PixelData)
        element = b"\xe0\x7f\x10\x00OB\0\0" + len(value).to_bytes(4, "little") + value
        transfer_syntax = ExplicitVRLittleEndian
    if not element:
        return PixelOutcome(element=element, refusal="pixels_undecodable")
    try:
        analysis = analyse(source, element, transfer_syntax, project)
    except PixelsRefused as refusal:
        return PixelOutcome(element=b"", refusal=refusal.reason)
    masked = [r for r in analysis.regions if r.masked]
    if masked and project.pixel_text is PixelText.REFUSE:
        return PixelOutcome(element=b"", counts=analysis.counts, refusal=REFUSED_BURNED_IN_TEXT)
    result.BurnedInAnnotation = "NO"
    cleared_bits = analysis.frames.flags.writeable and not transfer_syntax.is_encapsulated
    if not masked and not cleared_bits:
        return PixelOutcome(element=b"" if in_dataset else element, counts=analysis.counts)
    frames = mask(analysis.frames, masked)
    bits_allocated = int(source.BitsAllocated)
    result.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    new_element = native_element(frames, bits_allocated)
    if in_dataset:
        result.PixelData = new_element[12:]
        new_element = b""
    return PixelOutcome(element=new_element, counts=analysis.counts, masked_regions=len(masked))
