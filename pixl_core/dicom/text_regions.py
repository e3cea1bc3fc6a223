"""Find where text is burned into a radiograph, fast, without reading it.

Reading text (OCR) costs tens of milliseconds per line; a 3000 x 2500 film is mostly anatomy. So
regions are found first with cheap morphology on the whole image, and only those regions are read
(``pixl_core.dicom.ocr``). The detector is shaped by what burned-in text is: characters 16-60 px
high drawn with a constant value and sharp edges, in rows, on anatomy that is smooth at that scale.

1. Large images are reduced by 2 (area average) so that the whole pass stays within a few tens of
   milliseconds; 16 px text is still 8 px high there.
2. Values are stretched to 8 bits between the image's minimum and maximum (polarity does not
   matter: MONOCHROME1 and 2, white, grey and boxed text all give edges).
3. A 3x3 morphological gradient marks sharp edges; a fixed threshold keeps strong ones.
4. Long straight edges (collimator blades, a detector border) are removed with a long horizontal
   and vertical opening, so text touching them is still found on its own.
5. A horizontal closing joins the characters of a word; connected components whose height is
   that of text (and not a long wire or a body outline) are the candidate words.
6. Words on the same baseline and close together are joined into lines, which OCR reads best.

Boxes are returned in full-resolution pixel coordinates (top, left, bottom, right), grown so
that anti-aliased glyph edges, and a faint first or last character, are inside them. The detector errs towards finding too much: a
region that is not text costs an OCR call and, if unread, a small masked patch; text it misses
would leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

cv2.setNumThreads(1)  # Orthanc runs instances in its own threads; one core per instance is fair

# Text heights the detector looks for, in full-resolution pixels (burned-in text is 16-60 px).
MIN_TEXT_HEIGHT = 8
MAX_TEXT_HEIGHT = 110
# Gradient (0-255 after stretching) above which an edge counts: text is drawn at a contrast no
# anatomy edge reaches over 1-2 pixels.
EDGE_THRESHOLD = 32
REDUCE_ABOVE = 1600  # images whose short side is at least this are analysed at half size
_KERNEL_3 = np.ones((3, 3), np.uint8)


@dataclass(frozen=True, order=True)
class Box:
    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def padded(self, pad: int, rows: int, columns: int) -> Box:
        return Box(
            max(0, self.top - pad),
            max(0, self.left - pad),
            min(rows, self.bottom + pad),
            min(columns, self.right + pad),
        )

    def overlaps(self, other: Box) -> bool:
        return not (
            self.bottom <= other.top
            or other.bottom <= self.top
            or self.right <= other.left
            or other.right <= self.left
        )


def stretch_to_8bit(image: np.ndarray, low: int, high: int) -> np.ndarray:
    """Values ``low``..``high`` mapped to 0..255 (saturating)."""
    alpha = 255.0 / max(high - low, 1)
    return cv2.convertScaleAbs(image, alpha=alpha, beta=-low * alpha)


def value_range(image: np.ndarray) -> tuple[int, int]:
    """Minimum and maximum of a frame (exact: one fast pass each)."""
    low, high, _, _ = cv2.minMaxLoc(image if image.dtype != np.int8 else image.astype(np.int16))
    return int(low), int(high)


def find_text_boxes(frame: np.ndarray) -> list[Box]:
    """Candidate text lines of one frame (2-D, any integer type), in full-resolution pixels."""
    rows, columns = frame.shape
    if frame.dtype == np.int8:
        frame = frame.astype(np.int16)
    if frame.dtype not in (np.uint8, np.uint16, np.int16):
        frame = frame.astype(np.float32)
    scale = 2 if min(rows, columns) >= REDUCE_ABOVE else 1
    low, high = value_range(frame)
    if high <= low:
        return []  # a flat frame has no text
    small = frame
    if scale != 1:
        small = cv2.resize(
            np.ascontiguousarray(frame),
            (columns // scale, rows // scale),
            interpolation=cv2.INTER_AREA,
        )
    image = stretch_to_8bit(small, low, high)
    gradient = cv2.morphologyEx(image, cv2.MORPH_GRADIENT, _KERNEL_3)
    _, edges = cv2.threshold(gradient, EDGE_THRESHOLD, 255, cv2.THRESH_BINARY)
    line_length = max(120 // scale, 30)
    long_lines = cv2.bitwise_or(
        cv2.morphologyEx(edges, cv2.MORPH_OPEN, np.ones((1, line_length), np.uint8)),
        cv2.morphologyEx(edges, cv2.MORPH_OPEN, np.ones((line_length, 1), np.uint8)),
    )
    edges = cv2.subtract(edges, long_lines)
    joined = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, np.ones((3, max(15 // scale, 7)), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    words = []
    min_height, max_height = MIN_TEXT_HEIGHT / scale, MAX_TEXT_HEIGHT / scale
    for x, y, w, h, area in stats[1:]:
        if not min_height <= h <= max_height or w < 3 or area < 12:
            continue
        if area / float(w * h) < 0.15:  # a thin diagonal or curved wire, not glyphs
            continue
        words.append(Box(int(y) * scale, int(x) * scale, int(y + h) * scale, int(x + w) * scale))
    return join_lines(words)


def grown(box: Box, rows: int, columns: int, sideways: bool = True) -> Box:
    """The line's box grown by an eighth of its height, and (``sideways``) by most of a
    character left and right: a first or last character drawn at low contrast over bright
    anatomy may give too few edges to join its line, and masking a little background costs
    nothing. OCR reads the box without the sideways part, where anatomy would merge with the
    glyphs."""
    pad = 3 + box.height // 8
    side = pad + (box.height * 4) // 5 if sideways else pad
    return Box(
        max(0, box.top - pad),
        max(0, box.left - side),
        min(rows, box.bottom + pad),
        min(columns, box.right + side),
    )


def join_lines(words: list[Box]) -> list[Box]:
    """Join words that share a baseline and are at most 1.5 heights apart into lines."""
    lines: list[Box] = []
    for word in sorted(words, key=lambda b: (b.left, b.top)):
        for i, line in enumerate(lines):
            overlap = min(word.bottom, line.bottom) - max(word.top, line.top)
            height = max(word.height, line.height)
            if (
                overlap > 0.5 * min(word.height, line.height)
                and word.left - line.right < 1.5 * height
            ):
                lines[i] = Box(
                    min(word.top, line.top),
                    min(word.left, line.left),
                    max(word.bottom, line.bottom),
                    max(word.right, line.right),
                )
                break
        else:
            lines.append(word)
    return lines


def has_glyphs(crop: np.ndarray) -> bool:
    """Whether an 8-bit crop around a candidate line holds pieces shaped like characters.

    Characters are pieces of one tone *enclosed* by the other (the crop is padded around the
    line), at least a third of the line's height tall. The edge of a rib, a bowel gas shadow or
    a collimator blade crosses the crop, so both tones touch its border and nothing is enclosed.
    """
    _, binary = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    rows, columns = binary.shape
    min_height = max(4, rows // 3)
    for tone in (binary, cv2.bitwise_not(binary)):
        _, _, stats, _ = cv2.connectedComponentsWithStats(tone, connectivity=8)
        x, y = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
        w, h = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
        enclosed = (x > 0) & (y > 0) & (x + w < columns) & (y + h < rows)
        glyphs = enclosed & (h >= min_height) & (h < rows - 2) & (stats[1:, cv2.CC_STAT_AREA] >= 10)
        if glyphs.any():
            return True
    return False
