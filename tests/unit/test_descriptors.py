"""Kept free-text attributes checked against the instance's own identifiers (issue 9 §2): a
description carrying the patient's name, MRN or accession number leaves empty (or as the
project's replacement), examination names leave byte for byte, and cleanDescOpt is claimed only
while the check is on."""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pixl_core.config.projects import REPO_ROOT, Project, load_project_file
from pixl_core.dicom.deid import Deidentified, deidentify_bytes
from pixl_core.dicom.descriptors import identifiers_of
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher
from stack.synthetic.dicom_builder import base_dataset, to_bytes
from stack.synthetic.phi_corpus import TEST_HASH_KEY

ROOT = "1.2.826.0.1.3680043.10.981."
CLEAN_DESCRIPTORS_CODE = "113105"


def project(tmp_path: Path | None = None, edit: dict[str, str] | None = None) -> Project:
    """The shipped chest-xray project, optionally with lines of its YAML replaced."""
    source = REPO_ROOT / "projects" / "chest-xray.yaml"
    path = source
    if edit:
        assert tmp_path is not None
        text = source.read_text(encoding="utf-8")
        for old, new in edit.items():
            assert old in text
            text = text.replace(old, new)
        path = tmp_path / "chest-xray.yaml"
        path.write_text(text, encoding="utf-8")
    saved = os.environ.pop("PIXL_ALLOWLISTS_DIR", None)
    try:
        return load_project_file(path)
    finally:
        if saved is not None:
            os.environ["PIXL_ALLOWLISTS_DIR"] = saved


def instance(**attributes: object) -> Dataset:
    ds = base_dataset(
        sop_uid=f"{ROOT}1.1.1",
        study_uid=f"{ROOT}1",
        series_uid=f"{ROOT}1.1",
        patient_name="SMITH^JOHN",
        patient_id="04001234",
        birth_date="19500201",
        accession="ACC1234567",
    )
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def deidentify(ds: Dataset, config: Project | None = None) -> tuple[Dataset, Deidentified]:
    config = config or project()
    hasher = ProjectHasher.for_project(config.slug, TEST_HASH_KEY.encode())
    result = deidentify_bytes(to_bytes(ds), config, hasher)
    return dcmread(BytesIO(result.data)), result


@pytest.mark.parametrize(
    ("keyword", "value", "kind"),
    [
        ("StudyDescription", "CXR PA SMITH", "name"),
        ("StudyDescription", "XR CHEST ACC1234567", "accession_number"),
        ("StudyDescription", "XR CHEST 1234567", "accession_number"),
        ("StudyDescription", "CXR SMTIH PA", "name"),  # a typo of the surname
        ("StudyDescription", "CHEST PA 5MITH", "name"),  # OCR-ish: 5 for S
        ("StudyDescription", "CHEST PA SMITH J", "name"),
        ("SeriesDescription", "PA JOHN SMITH", "name"),
        ("SeriesDescription", "PA 0400 1234", "mrn"),
        ("SeriesDescription", "PA 4001234", "mrn"),  # the leading zero dropped
        ("AcquisitionDeviceProcessingDescription", "CHEST PA DOB 01.02.1950", "date_of_birth"),
        (
            "AcquisitionDeviceProcessingDescription",
            "CHEST PA NHS 943 476 5919",
            "nhs_number_pattern",
        ),
    ],
)
def test_a_description_with_an_identifier_leaves_empty(keyword: str, value: str, kind: str) -> None:
    ds = instance(**{keyword: value})
    if keyword == "AcquisitionDeviceProcessingDescription":
        ds.Manufacturer = "GE Healthcare"  # the Philips override removes it; the base keeps it
    output, result = deidentify(ds)
    assert output.get(keyword) == ""
    assert result.descriptors.cleaned == 1
    assert result.descriptors.by_kind == {kind: 1}


@pytest.mark.parametrize(
    "value", ["XR CHEST PA", "CHEST AP SUPINE", "CHEST X RAY", "XR CHEST PA AND LATERAL", "PA"]
)
@pytest.mark.parametrize("surname", ["SMITH", "RAY", "CHEST", "WALL", "PARKINSON", "LATERAL"])
def test_examination_names_stay_exactly(value: str, surname: str) -> None:
    ds = instance(StudyDescription=value, SeriesDescription=value)
    ds.PatientName = f"{surname}^JOHN"
    output, result = deidentify(ds)
    assert output.StudyDescription == value and output.SeriesDescription == value
    assert result.descriptors.cleaned == 0
    source = to_bytes(ds)
    data = result.data
    # byte for byte: the value as written in the input is in the output
    assert value.encode() in source and value.encode() in data


def test_only_kept_values_are_checked_and_pixls_own_are_not() -> None:
    """The hashed accession number and PIXL's DeidentificationMethod are not descriptions."""
    output, result = deidentify(instance(StudyDescription="CXR PA SMITH"))
    assert output.AccessionNumber and output.AccessionNumber != "ACC1234567"
    assert output.DeidentificationMethod.startswith("PIXL")
    assert result.descriptors.cleaned == 1


def test_replacement_and_the_claim(tmp_path: Path) -> None:
    replaced = project(tmp_path, {'replacement: ""': "replacement: REMOVED"})
    output, _ = deidentify(instance(StudyDescription="CXR PA SMITH"), replaced)
    assert output.StudyDescription == "REMOVED"
    codes = [item.CodeValue for item in output.DeidentificationMethodCodeSequence]
    assert CLEAN_DESCRIPTORS_CODE in codes


def test_check_off_keeps_values_and_may_not_claim_the_option(tmp_path: Path) -> None:
    with pytest.raises(PixlConfigError, match="'cleanDescOpt' is claimed but"):
        project(tmp_path, {"  check: clean": "  check: off\n  justification: a reviewed catalogue"})
    with pytest.raises(PixlConfigError, match="needs a 'justification:'"):
        project(tmp_path, {"  - cleanDescOpt\n": "", "  check: clean": "  check: off"})
    off = project(
        tmp_path,
        {
            "  - cleanDescOpt\n": "",
            "  check: clean": "  check: off\n  justification: a reviewed catalogue",
        },
    )
    output, result = deidentify(instance(StudyDescription="CXR PA SMITH"), off)
    assert output.StudyDescription == "CXR PA SMITH" and result.descriptors.cleaned == 0
    codes = [item.CodeValue for item in output.DeidentificationMethodCodeSequence]
    assert CLEAN_DESCRIPTORS_CODE not in codes


def test_bad_descriptor_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PixlConfigError, match="must be clean or off"):
        project(tmp_path, {"  check: clean": "  check: maybe"})
    with pytest.raises(PixlConfigError, match="at most 16 printable characters"):
        project(tmp_path, {'replacement: ""': "replacement: A VERY LONG REPLACEMENT TEXT"})


def test_identifiers_come_from_the_instances_own_header() -> None:
    ds = instance(OtherPatientIDs="RF99887", InstitutionName="Royal Free Hospital")
    ds.PatientBirthDate = "19500230"  # no such day: left out, the rest still checked
    ids = identifiers_of(ds)
    assert ids.name == "SMITH^JOHN" and ids.mrn == "04001234"
    assert ids.accession_number == "ACC1234567" and ids.other_ids == "RF99887"
    assert ids.institution == "Royal Free Hospital" and ids.date_of_birth is None
    output, result = deidentify(
        instance(
            OtherPatientIDs="RF99887",
            InstitutionName="Royal Free Hospital",
            StudyDescription="XR CHEST RF 99887",
            SeriesDescription="ROYAL FREE PA",
        )
    )
    assert output.StudyDescription == "" and output.SeriesDescription == ""
    assert result.descriptors.by_kind == {"other_id": 1, "institution": 1}
