"""Burned-in text through the real stack: VNA → orthanc-raw → orthanc-anon → FTPS DSH.

Films from the burned-in corpus (identifiers, benign markers only, clean; MONOCHROME1 and 2,
RLE and JPEG 2000 among them; headers YES, NO or silent) are stored in the VNA and asked for as a
CSV cohort of a project of their own (a copy of chest-xray, ``pixel_text: mask``). The zips that
reach the DSH are scored by the independent OCR scorer: no planted identifier readable, benign
and clean films byte-identical in their pixels, and the counts by kind in Postgres.
"""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
import requests
from pydicom import dcmread

from pixl_core.dicom.header import parse_header
from pixl_core.hashing import ProjectHasher
from stack.driver import Stack
from stack.synthetic.burned_in import PHI, build_corpus
from stack.synthetic.burned_in_scorer import score

pytestmark = pytest.mark.system
PROJECT = "burned-in"


def test_burned_in_identifiers_never_reach_the_dsh(stack: Stack, tmp_path) -> None:
    images = build_corpus(2, rows=768, columns=768, seed=31)
    vna = stack.settings.url("vna").rstrip("/") + "/instances"
    rows = []
    for image in images:
        response = requests.post(
            vna, data=image.data, headers={"Content-Type": "application/dicom"}, timeout=60
        )
        assert response.status_code == 200, image.name
        header = dcmread(io.BytesIO(image.data), stop_before_pixels=True)
        rows.append(
            {
                "mrn": str(header.PatientID),
                "accession_number": str(header.AccessionNumber),
                "study_datetime": "",
            }
        )
    cohort = tmp_path / "burned-in.csv"
    with cohort.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["mrn", "accession_number", "study_datetime"])
        writer.writeheader()
        writer.writerows(rows)
    stack.pixl("populate", str(cohort), "--project", PROJECT)
    settled = stack.wait_until_settled([PROJECT]).studies[PROJECT]
    assert settled["exported"] == len(images), settled

    hasher = ProjectHasher.for_project(PROJECT, stack.settings.secrets["PIXL_HASH_KEY"].encode())
    folder = stack.settings.dsh_dir / PROJECT / "dicom"
    leaks = []
    for image in images:
        header = dcmread(io.BytesIO(image.data), stop_before_pixels=True)
        with zipfile.ZipFile(folder / f"{hasher.uid(str(header.StudyInstanceUID))}.zip") as zipped:
            (name,) = zipped.namelist()
            output = zipped.read(name)
        out = dcmread(io.BytesIO(output), stop_before_pixels=True)
        assert out.BurnedInAnnotation == "NO", image.name
        if image.category == PHI:
            leaks += [
                (image.name, k)
                for k in score(image.name, output, image.planted).readable_identifiers
            ]
        else:
            assert bytes(parse_header(output).pixel_element) == bytes(
                parse_header(image.data).pixel_element
            ), image.name
    assert leaks == []
    (masked,) = stack.query(
        "SELECT count(DISTINCT p.instance_key) FROM instance_pixel_text p "
        "JOIN study s ON s.id = p.study_id WHERE s.project = %s AND p.masked",
        PROJECT,
    )
    assert masked[0] == sum(image.category == PHI for image in images)
