"""Read one burned-in text line with Debian's tesseract (through tesserocr).

Why tesseract, measured on the synthetic burned-in corpus (``stack/synthetic/burned_in.py``,
31 detected lines, CPU time on one core): tesseract 5 (LSTM, ``eng``) in single-line mode read
the lines in about 14 ms each; rapidocr-onnxruntime's PP-OCRv4 recogniser on the same crops in
about 35 ms each, with a similar number of misreads (both confuse O/0 and lose a first
character now and then). Tesseract also gives a per-word confidence, which the benign decision
uses, and comes as a Debian package with its model (``tesseract-ocr-eng``): nothing is
downloaded at run time. rapidocr stays as the independent scorer of the tests.

Each thread keeps its own tesseract handle (the API is not thread-safe, and creating one costs
~100 ms). The crop is binarised (Otsu), turned to dark text on white, and enlarged so that
small text is about 40 px high, the size tesseract reads best.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pixl_core.errors import PixlConfigError

TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata")
READ_HEIGHT = 40
RETRY_BELOW_CONFIDENCE = 70.0
_local = threading.local()


class OcrUnavailable(PixlConfigError):
    """tesseract or its English model is not installed (``make system-deps`` installs them)."""

    code = "ocr_unavailable"


@dataclass(frozen=True)
class Reading:
    """What OCR read in one region: the text (kept in memory only) and its mean confidence."""

    text: str
    confidence: float  # 0-100


def tessdata_dir() -> str:
    configured = os.environ.get("PIXL_TESSDATA")
    for candidate in ([configured] if configured else []) + list(TESSDATA_DIRS):
        if candidate and (Path(candidate) / "eng.traineddata").is_file():
            return candidate
    raise OcrUnavailable(
        "tesseract's English model (eng.traineddata) is missing: run make system-deps "
        "(Debian's tesseract-ocr-eng) or set PIXL_TESSDATA to its folder"
    )


def _api():  # type: ignore[no-untyped-def]
    api = getattr(_local, "api", None)
    if api is None:
        import tesserocr

        api = tesserocr.PyTessBaseAPI(
            path=tessdata_dir(), lang="eng", psm=tesserocr.PSM.SINGLE_LINE
        )
        _local.api = api
    return api


def prepare(crop: np.ndarray, flip: bool = False, drop_edges: bool = True) -> np.ndarray:
    """Dark text on white, about ``READ_HEIGHT`` px high, with a white margin (8-bit input).

    Polarity: of the two Otsu classes, the one holding the largest connected piece is taken as
    the background (the air around white text, or the black box of boxed text), unless ``flip``;
    pieces of the text class that touch the crop's edge (anatomy around a box) are background too.
    """
    _, binary = cv2.threshold(crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if (_largest_piece(binary) > _largest_piece(cv2.bitwise_not(binary))) != flip:
        binary = cv2.bitwise_not(binary)  # make the text class 255
    if drop_edges:
        binary = _drop_edge_pieces(binary)
    text_dark = cv2.bitwise_not(binary)
    height = text_dark.shape[0]
    if height < READ_HEIGHT:
        factor = READ_HEIGHT / height
        text_dark = cv2.resize(
            text_dark, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR
        )
    elif height > 3 * READ_HEIGHT:
        factor = 2 * READ_HEIGHT / height
        text_dark = cv2.resize(text_dark, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return cv2.copyMakeBorder(text_dark, 10, 10, 10, 10, cv2.BORDER_CONSTANT, value=255)


def _largest_piece(binary: np.ndarray) -> int:
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0


def _drop_edge_pieces(binary: np.ndarray) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    rows, columns = binary.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    touching = (x == 0) | (y == 0) | (x + w == columns) | (y + h == rows)
    touching[0] = False
    if not touching.any():
        return binary
    keep = np.where(touching, 0, 255).astype(np.uint8)
    keep[0] = 0
    return keep[labels]


def read_line(crop: np.ndarray) -> Reading:
    """OCR one 8-bit crop holding (at most) a line of text.

    Up to three ways, stopping at the first confident reading: the guessed polarity without the
    pieces touching the crop's edge (anatomy around boxed text); the same with them (a glyph
    merged with bright anatomy at the edge); the other polarity (boxed text on anatomy has three
    tones, and the guess can pick the box). Otherwise the surest reading is kept.
    """
    best = Reading("", 0.0)
    for flip, drop_edges in ((False, True), (False, False), (True, True)):
        reading = _read(prepare(crop, flip=flip, drop_edges=drop_edges))
        if reading.text and reading.confidence >= RETRY_BELOW_CONFIDENCE:
            return reading
        if reading.confidence > best.confidence:
            best = reading
    return best


def _read(image: np.ndarray) -> Reading:
    from PIL import Image

    api = _api()
    api.SetImage(Image.fromarray(image))
    text = api.GetUTF8Text().strip()
    confidence = float(api.MeanTextConf()) if text else 0.0
    api.Clear()
    return Reading(text=text, confidence=confidence)
