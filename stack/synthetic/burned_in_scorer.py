"""The independent scorer for burned-in text: what can still be read in an *output* image.

It shares nothing with the code under test (``pixl_core.dicom.pixels``, which finds regions with
morphology and reads them with tesseract): it runs rapidocr-onnxruntime (PP-OCR detection and
recognition, models shipped in its wheel) over the whole displayed image, then looks for what the
answer key planted. A planted identifier is *readable* when one of its distinctive tokens (four
or more characters; labels such as MRN or DOB are not distinctive) is found in what was read,
exactly or, for tokens of six or more characters, with one character wrong or missing; or when six
consecutive digits of it are read.

Results carry the planted line's kind and the image's neutral name, never the text, so they can
be printed by tests.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import cache

import numpy as np
import pydicom

from stack.synthetic.burned_in import Planted

LABELS = frozenset({"MRN", "ID", "DOB", "ACC", "NHS"})


@cache
def _engine():  # type: ignore[no-untyped-def]
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


def display_8bit(data: bytes) -> np.ndarray:
    """The first frame of a DICOM file as shown (MONOCHROME1 inverted), 0-255, as BGR."""
    ds = pydicom.dcmread(io.BytesIO(data))
    array = ds.pixel_array.astype(np.float32)
    if array.ndim == 3:
        array = array[0]
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / max(high - low, 1.0)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        scaled = 1.0 - scaled
    grey = (scaled * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def read_all(data: bytes) -> str:
    """Everything rapidocr reads in the image, upper case, lines joined by newlines."""
    result, _ = _engine()(display_8bit(data))
    return "\n".join(str(line[1]).upper() for line in result or [])


def _alnum(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _within_one(token: str, text: str) -> bool:
    if token in text:
        return True
    if len(token) < 6:
        return False
    for i in range(len(token)):
        if token[:i] + token[i + 1 :] in text:  # one character missed
            return True
        pattern = re.escape(token[:i]) + "." + re.escape(token[i + 1 :])
        if re.search(pattern, text):  # one character misread
            return True
    return False


def distinctive_tokens(planted: Planted) -> list[str]:
    words = [_alnum(w) for w in re.split(r"[\s,^:]+", planted.text)]
    return [w for w in words if len(w) >= 4 and w not in LABELS]


def is_readable(planted: Planted, read: str) -> bool:
    squeezed = _alnum(read)
    if any(_within_one(t, squeezed) for t in distinctive_tokens(planted)):
        return True
    digits = re.sub(r"\D", "", planted.text)
    read_digits = re.sub(r"\D", "", read)
    return any(digits[i : i + 6] in read_digits for i in range(max(0, len(digits) - 5)))


@dataclass(frozen=True)
class Score:
    name: str
    readable_identifiers: tuple[str, ...]  # kinds of planted identifiers still readable
    benign_planted: int
    benign_readable: int


def score(name: str, output: bytes, planted: list[Planted]) -> Score:
    read = read_all(output)
    leaks = tuple(p.kind for p in planted if p.is_identifier and is_readable(p, read))
    benign = [p for p in planted if not p.is_identifier]
    tokens = set(re.split(r"[^0-9A-Z-]+", read))
    kept = sum(all(w in tokens for w in p.text.split()) for p in benign)
    return Score(name, leaks, len(benign), kept)
