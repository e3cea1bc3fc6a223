"""A synthetic corpus of chest radiographs with text burned into the pixels, and its answer key.

Real CR/DX films carry text where modalities and PACS workstations put it: the patient's name,
MRN, NHS number, date of birth, accession number, exam date and hospital in the corners and in a
band across the top, next to markers researchers need (L/R, AP ERECT, PORTABLE). Headers are no
guide: ``BurnedInAnnotation`` is YES, NO (sometimes wrongly) or absent. This module plants such
text so that the pixel check (``pixl_core.dicom.pixels``) can be scored from the outside:

- categories: ``phi`` (identifiers, often beside a marker), ``benign`` (markers only), ``clean``;
- text 16-60 px high, in DejaVu and Liberation fonts (Debian's fonts-dejavu-core,
  fonts-liberation2), white, grey or white-on-black boxed, at corners and in a top band;
- MONOCHROME1 and MONOCHROME2, 12, 14 and 16 bits stored; some instances compressed losslessly
  (RLE, JPEG 2000 lossless) so the decoders are exercised;
- the background is a smooth chest-like picture with noise, ribs, a collimator edge and an ECG
  lead wire, so a detector that flags every sharp edge is caught out.

The answer key (``BurnedInImage.planted``) is returned in memory: callers keep it in memory or in
a test's temporary folder, never in a log. Identifiers are invented here from fixed word lists
and a seed; they are not anyone's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from stack.synthetic.dicom_builder import base_dataset, to_bytes

PHI = "phi"
BENIGN = "benign"
CLEAN = "clean"
CATEGORIES = (PHI, BENIGN, CLEAN)

FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationMono-Regular.ttf",
)
POLARITIES = ("white", "grey", "boxed")
BENIGN_TEXTS = ("L", "R", "PA", "AP", "AP ERECT", "PORTABLE", "SUPINE", "LAT", "ERECT", "MOBILE")

_SURNAMES = (
    "WHITFIELD", "OKONKWO", "PEMBERTON", "FAIRBAIRN", "HARRINGTON", "ASHWORTH", "CHAUDHRY",
    "LINDQVIST", "BABATUNDE", "THORNBURY", "KOWALCZYK", "ABERNETHY", "PENDLEBURY", "RASMUSSEN",
)  # fmt: skip
_GIVEN = (
    "DESMOND", "MARGARET", "TOBIAS", "HARRIET", "ALISTAIR", "PRIYANKA", "FERGUS", "WINIFRED",
    "HORATIO", "ELEANOR", "LACHLAN", "ROSALIND",
)  # fmt: skip
_HOSPITALS = ("NORTHBROOK GENERAL", "ST ALDHELMS HOSPITAL", "KESTREL ROYAL INFIRMARY")


@dataclass(frozen=True)
class Planted:
    """One line of text burned in: what it says, its kind, and its box (top, left, bottom, right)."""

    text: str
    kind: str  # patient_name, mrn, nhs_number, dob, accession, date, institution, benign
    box: tuple[int, int, int, int]

    @property
    def is_identifier(self) -> bool:
        return self.kind != "benign"


@dataclass
class BurnedInImage:
    """One instance of the corpus and its answer key."""

    name: str  # a neutral label (category and number), never an identifier
    category: str
    data: bytes
    planted: list[Planted] = field(default_factory=list)
    header_says: str | None = None  # BurnedInAnnotation as written (YES, NO, or None: absent)
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    transfer_syntax: UID = ExplicitVRLittleEndian
    identifiers: dict[str, str] = field(default_factory=dict)


def nhs_number(rng: random.Random) -> str:
    """A 10-digit number that passes the NHS modulus-11 check (invented, in the 9xx test range)."""
    while True:
        digits = [9] + [rng.randrange(10) for _ in range(8)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, [*digits, check]))


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def fonts_available() -> list[str]:
    return [f for f in FONT_FILES if Path(f).is_file()]


def radiograph(rows: int, columns: int, bits: int, seed: int) -> np.ndarray:
    """A chest-like picture in ``bits`` bits (MONOCHROME2 sense: high is bright), no text.

    Computed at a quarter of the size and enlarged (cheap at 3000 px), then given full-size noise,
    a sharp collimator edge and a thin wire, which a careless text detector takes for text.
    """
    rng = np.random.default_rng(seed)
    small_r, small_c = max(rows // 4, 8), max(columns // 4, 8)
    v, u = np.mgrid[-1.0 : 1.0 : small_r * 1j, -1.0 : 1.0 : small_c * 1j]

    def blob(cx: float, cy: float, rx: float, ry: float, power: float = 2.0) -> np.ndarray:
        return np.exp(-((((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) ** power))

    body = blob(0, 0.05, 0.8, 0.95, 3)
    lungs = blob(-0.38, -0.1, 0.27, 0.55) + blob(0.38, -0.1, 0.27, 0.55)
    ribs = 0.05 * np.sin(v * 40.0 + 3 * u**2) * lungs
    spine = np.exp(-((u / 0.07) ** 2)) * body
    density = 0.7 * body - 0.5 * lungs + ribs + 0.25 * blob(0.1, 0.3, 0.3, 0.25) + 0.15 * spine
    small = np.clip(density, 0.0, 1.0)
    big = np.kron(small, np.ones((4, 4)))[:rows, :columns]
    if big.shape != (rows, columns):
        big = np.pad(big, ((0, rows - big.shape[0]), (0, columns - big.shape[1])), mode="edge")
    top = (1 << bits) - 1
    values = top * (0.08 + 0.75 * big) + rng.normal(0.0, top * 0.004, (rows, columns))
    edge = int(columns * rng.uniform(0.93, 0.97))
    values[:, edge:] = top * 0.02  # collimated strip: a long straight sharp edge
    wire_rows = (rows * (0.3 + 0.1 * np.sin(np.linspace(0, 6, columns // 2)))).astype(int)
    wire_cols = np.arange(columns // 4, columns // 4 + columns // 2)
    for offset in range(2):
        values[np.clip(wire_rows + offset, 0, rows - 1), wire_cols] = top * 0.9
    return np.clip(values, 0, top).astype("<u2")


def _burn(
    pixels: np.ndarray,
    text: str,
    top_left: tuple[int, int],
    size: int,
    font_path: str,
    polarity: str,
    bits: int,
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int] | None:
    """Draw ``text`` into ``pixels`` (MONOCHROME2 sense); return its box, or None if it does not
    fit inside the image or would touch a box already ``taken``."""
    font = _font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    width, height = right - left + 2, bottom - top + 2
    y, x = top_left
    pad = max(3, size // 5) if polarity == "boxed" else 0
    rows, columns = pixels.shape
    if y - pad < 0 or x - pad < 0 or y + height + pad > rows or x + width + pad > columns:
        return None
    box = (y - pad, x - pad, y + height + pad, x + width + pad)
    margin = 8
    for t in taken:
        if not (
            box[2] + margin <= t[0]
            or t[2] + margin <= box[0]
            or box[3] + margin <= t[1]
            or t[3] + margin <= box[1]
        ):
            return None
    stencil = Image.new("L", (width, height), 0)
    ImageDraw.Draw(stencil).text((1 - left, 1 - top), text, fill=255, font=font)
    ink = np.asarray(stencil) >= 128
    top_value = (1 << bits) - 1
    if polarity == "boxed":
        pixels[y - pad : y + height + pad, x - pad : x + width + pad] = 0
    value = int(top_value * 0.7) if polarity == "grey" else top_value
    pixels[y : y + height, x : x + width][ink] = value
    return box


def _identifiers(rng: random.Random) -> dict[str, str]:
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(80 * 365))
    exam = date(2021, 1, 1) + timedelta(days=rng.randrange(3 * 365))
    return {
        "family": rng.choice(_SURNAMES),
        "given": rng.choice(_GIVEN),
        "mrn": f"{rng.randrange(10**7, 10**8)}",
        "nhs": nhs_number(rng),
        "dob": birth.isoformat(),
        "accession": f"RRK{rng.randrange(10**6, 10**7)}",
        "exam": exam.isoformat(),
        "hospital": rng.choice(_HOSPITALS),
    }


def _phi_lines(ids: dict[str, str], rng: random.Random) -> list[tuple[str, str]]:
    """The identifier lines a modality might burn in, in the forms they take."""
    birth = date.fromisoformat(ids["dob"])
    exam = date.fromisoformat(ids["exam"])
    nhs = ids["nhs"]
    lines = [
        (
            rng.choice(
                [
                    f"{ids['family']}, {ids['given']}",
                    f"{ids['given']} {ids['family']}",
                    f"{ids['family']}^{ids['given']}",
                ]
            ),
            "patient_name",
        ),
        (rng.choice([f"MRN {ids['mrn']}", f"ID: {ids['mrn']}", ids["mrn"]]), "mrn"),
        (
            rng.choice(
                [
                    f"DOB {birth:%d/%m/%Y}",
                    f"DOB: {birth:%d-%b-%Y}".upper(),
                    f"{birth:%d.%m.%Y}",
                ]
            ),
            "dob",
        ),
        (rng.choice([f"ACC {ids['accession']}", ids["accession"]]), "accession"),
        (rng.choice([f"NHS {nhs[:3]} {nhs[3:6]} {nhs[6:]}", nhs]), "nhs_number"),
        (rng.choice([f"{exam:%d/%m/%Y} 10:{rng.randrange(60):02d}", f"{exam:%Y-%m-%d}"]), "date"),
        (ids["hospital"], "institution"),
    ]
    rng.shuffle(lines)
    return lines[: rng.randrange(4, len(lines) + 1)]


def build_image(
    index: int,
    category: str,
    *,
    rows: int = 1024,
    columns: int = 1024,
    seed: int = 0,
    transfer_syntax: UID | None = None,
    bits: int | None = None,
    photometric: str | None = None,
) -> BurnedInImage:
    """One instance of ``category`` (phi, benign, clean); everything else drawn from the seed."""
    rng = random.Random(f"burned-in/{seed}/{index}")
    bits = bits or rng.choice((12, 14, 16))
    photometric = photometric or rng.choice(("MONOCHROME1", "MONOCHROME2"))
    modality = rng.choice(("CR", "DX"))
    fonts = fonts_available()
    ids = _identifiers(rng)
    pixels = radiograph(rows, columns, bits, seed=rng.randrange(1 << 30))
    lines: list[tuple[str, str]] = []
    if category == PHI:
        lines = _phi_lines(ids, rng)
        if rng.random() < 0.6:
            lines.append((rng.choice(BENIGN_TEXTS), "benign"))
    elif category == BENIGN:
        lines = [(t, "benign") for t in rng.sample(BENIGN_TEXTS, rng.randrange(1, 4))]
    planted: list[Planted] = []
    # Places: the four corners (stacked lines) and a band across the top.
    cursors = {
        "top_left": [int(rows * 0.02), int(columns * 0.02)],
        "top_right": [int(rows * 0.02), int(columns * 0.6)],
        "bottom_left": [int(rows * 0.75), int(columns * 0.02)],
        "bottom_right": [int(rows * 0.75), int(columns * 0.6)],
        "top_band": [int(rows * 0.005), int(columns * 0.3)],
    }
    for text, kind in lines:
        size = rng.randrange(16, 61) if kind != "benign" or len(text) > 2 else rng.randrange(30, 61)
        size = min(size, max(16, columns // 20))
        polarity = rng.choice(POLARITIES)
        font = rng.choice(fonts)
        for place in rng.sample(list(cursors), len(cursors)):
            y, x = cursors[place]
            box = _burn(pixels, text, (y, x), size, font, polarity, bits, [p.box for p in planted])
            if box is not None:
                cursors[place][0] = box[2] + max(6, size // 3)
                planted.append(Planted(text=text, kind=kind, box=box))
                break
    if photometric == "MONOCHROME1":
        pixels = ((1 << bits) - 1 - pixels).astype("<u2")
    header_says = rng.choice(("YES", "NO", None))
    ds = base_dataset(
        sop_uid=f"2.25.{rng.randrange(1 << 120)}",
        study_uid=f"2.25.{rng.randrange(1 << 120)}",
        series_uid=f"2.25.{rng.randrange(1 << 120)}",
        modality=modality,
        patient_name=f"{ids['family']}^{ids['given']}",
        patient_id=ids["mrn"],
        birth_date=ids["dob"].replace("-", ""),
        accession=ids["accession"],
        photometric=photometric,
        pixels=pixels,
        rows=rows,
        columns=columns,
    )
    _set_bits(ds, bits)
    ds.InstitutionName = ids["hospital"]
    ds.OtherPatientIDsSequence = _other_ids(ids["nhs"])
    if header_says is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = header_says
    syntax = transfer_syntax or ExplicitVRLittleEndian
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, pixels)
    return BurnedInImage(
        name=f"{category}-{index:03d}",
        category=category,
        data=to_bytes(ds),
        planted=planted,
        header_says=header_says,
        photometric=photometric,
        bits_stored=bits,
        transfer_syntax=syntax,
        identifiers=ids,
    )


def _set_bits(ds: Dataset, bits: int) -> None:
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    top = (1 << bits) - 1
    ds.WindowCenter = top // 2
    ds.WindowWidth = top + 1


def _other_ids(nhs: str) -> object:
    from pydicom.sequence import Sequence

    item = Dataset()
    item.PatientID = nhs
    item.IssuerOfPatientID = "NHS"
    return Sequence([item])


def build_corpus(
    count_per_category: int = 4, *, rows: int = 1024, columns: int = 1024, seed: int = 0
) -> list[BurnedInImage]:
    """``count_per_category`` instances of each category; one PHI instance as RLE and one benign
    instance as JPEG 2000 lossless, so compressed inputs are always in the corpus."""
    images = []
    for category in CATEGORIES:
        for n in range(count_per_category):
            syntax = None
            if n == 0 and category == PHI:
                syntax = RLELossless
            elif n == 0 and category == BENIGN:
                syntax = JPEG2000Lossless
            images.append(
                build_image(
                    len(images), category, rows=rows, columns=columns, seed=seed,
                    transfer_syntax=syntax,
                )
            )  # fmt: skip
    return images
