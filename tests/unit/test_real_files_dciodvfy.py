"""Real files nobody here made: de-identify them, and the output is no less valid than the input.

The chest radiographs of pydicom-data (RG1_*, RG3_*: Philips and Fuji CR, uncompressed and
JPEG 2000) and every CR/DX among pydicom's own test files are de-identified with chest-xray; every
other file there (MR, CT, US, RT, SR, broken files...) must be refused, never crash and never come
out. dicom3tools' ``dciodvfy`` checks each CR/DX before and after: the set of errors after (values
and positions stripped) must be a subset of the set before, i.e. the engine adds no error
(a Type 1 or 2 attribute the allow-list drops, a wrong VR, a broken file meta...).

Only files already on disk are used (pydicom's own data and the installed pydicom-data package):
``get_testdata_files`` would try to download the rest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data.data_manager import DATA_ROOT, external_data_sources

from pixl_core.config.projects import REPO_ROOT, Project, load_project_file
from pixl_core.dicom.deid import Refused, deidentify_bytes
from pixl_core.hashing import ProjectHasher
from stack.synthetic.phi_corpus import TEST_HASH_KEY, build_corpus

DCIODVFY = Path(sys.executable).with_name("dciodvfy")
CHEST_CRS = {f"RG{n}_{kind}.dcm" for n in (1, 3) for kind in ("UNCI", "UNCR", "J2KR", "J2KI")}
MODALITIES = {"CR", "DX"}


@dataclass
class Outcome:
    path: Path
    modality: str | None
    output: bytes | None = None
    refused: str | None = None


def local_test_files() -> list[Path]:
    paths = [p for p in Path(DATA_ROOT, "test_files").rglob("*") if p.is_file()]
    for source in external_data_sources().values():
        paths += [Path(p) for p in source.get_paths("**/*") if Path(p).is_file()]
    return sorted(paths)


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's ``Error - ...`` lines (it writes them to stderr), values and indices removed."""
    result = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    errors = set()
    for line in (result.stderr + result.stdout).splitlines():
        if not line.startswith("Error"):
            continue
        line = re.sub(r"\s+=\s+<[^>]*>", "", line)  # the offending value ("[1] = <ward>")
        line = re.sub(r"\[\d+\]", "[n]", line)  # value index
        line = re.sub(r"\b(value|line|offset) \d+", r"\1 n", line, flags=re.IGNORECASE)
        errors.add(" ".join(line.split()))
    return errors


@pytest.fixture(scope="module")
def chest() -> Project:
    saved = os.environ.pop("PIXL_ALLOWLISTS_DIR", None)
    try:
        return load_project_file(REPO_ROOT / "projects" / "chest-xray.yaml")
    finally:
        if saved is not None:
            os.environ["PIXL_ALLOWLISTS_DIR"] = saved


@pytest.fixture(scope="module")
def outcomes(chest: Project) -> list[Outcome]:
    hasher = ProjectHasher.for_project("chest-xray", TEST_HASH_KEY.encode())
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns a lot about its deliberately odd files
        for path in local_test_files():
            try:
                modality = dcmread(path, stop_before_pixels=True).get("Modality")
            except Exception:
                continue  # not a DICOM file (README, JSON, ...): nothing to de-identify
            outcome = Outcome(path=path, modality=str(modality) if modality else None)
            try:
                outcome.output = deidentify_bytes(path.read_bytes(), chest, hasher).data
            except Refused as refusal:
                outcome.refused = refusal.reason
            found.append(outcome)
    return found


def test_the_real_chest_radiographs_are_there_and_de_identified(
    outcomes: list[Outcome],
) -> None:
    done = {o.path.name for o in outcomes if o.output is not None}
    assert done >= CHEST_CRS, f"missing or refused: {sorted(CHEST_CRS - done)}"
    assert len(outcomes) > 100  # pydicom's own files were read too


def test_only_cr_and_dx_come_out(outcomes: list[Outcome]) -> None:
    out = [o for o in outcomes if o.output is not None]
    assert {o.modality for o in out} <= MODALITIES
    others = [o for o in outcomes if o.modality not in MODALITIES]
    assert others and all(o.refused for o in others)
    assert {o.refused for o in others} >= {"modality_not_allowed", "not_image"}


def test_every_readable_cr_and_dx_is_de_identified(outcomes: list[Outcome]) -> None:
    refused = {o.path.name: o.refused for o in outcomes if o.modality in MODALITIES and o.refused}
    assert refused == {}


def test_de_identified_real_files_are_what_they_were(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.output is None:
            continue
        source = dcmread(outcome.path)
        out = dcmread(BytesIO(outcome.output))
        assert out.PixelData == source.PixelData, outcome.path.name
        assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        for keyword in ("Rows", "Columns", "BitsStored", "PhotometricInterpretation"):
            assert out.get(keyword) == source.get(keyword), (outcome.path.name, keyword)
        assert out.SOPInstanceUID != source.SOPInstanceUID
        assert "PatientName" in out and not out.PatientName


def test_dciodvfy_finds_no_new_error_in_real_files(outcomes: list[Outcome], tmp_path: Path) -> None:
    assert DCIODVFY.is_file(), "dicom3tools' dciodvfy is missing from the venv (make setup)"
    checked = 0
    for outcome in outcomes:
        if outcome.output is None:
            continue
        after_path = tmp_path / f"{outcome.path.name}.deid.dcm"
        after_path.write_bytes(outcome.output)
        before, after = dciodvfy_errors(outcome.path), dciodvfy_errors(after_path)
        assert after <= before, f"{outcome.path.name}: new errors {sorted(after - before)}"
        checked += 1
    assert checked >= len(CHEST_CRS)


def test_dciodvfy_finds_no_new_error_in_synthetic_dx(chest: Project, tmp_path: Path) -> None:
    """The real files are all CR; the corpus adds DX (explicit, implicit, JPEG) instances."""
    corpus = build_corpus(tmp_path / "corpus")
    hasher = ProjectHasher.for_project("chest-xray", TEST_HASH_KEY.encode())
    for name in ("cr_explicit", "dx_explicit", "cr_implicit", "dx_jpeg"):
        before_path = corpus.files[name]
        after_path = tmp_path / f"{name}.deid.dcm"
        after_path.write_bytes(deidentify_bytes(before_path.read_bytes(), chest, hasher).data)
        before, after = dciodvfy_errors(before_path), dciodvfy_errors(after_path)
        assert after <= before, f"{name}: new errors {sorted(after - before)}"


def test_dciodvfy_errors_are_read(tmp_path: Path) -> None:
    """The check can fail: dropping a Type 2 attribute gives a new error line."""
    original = next(p for p in local_test_files() if p.name == "RG3_UNCR.dcm")
    source = dcmread(original)
    del source.PatientName
    broken = tmp_path / "broken.dcm"
    source.save_as(broken)
    new = dciodvfy_errors(broken) - dciodvfy_errors(original)
    assert new == {
        "Error - Missing attribute Type 2 Required Element=<PatientName> Module=<Patient>"
    }
