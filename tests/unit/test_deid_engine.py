"""How the de-identification engine behaves: pseudonyms, dates, policy, refusals, pixels.

Runs ``pixl_core.dicom.deid.deidentify_bytes`` (the code orthanc-anon and ``pixl anonymise`` run) on
the PHI corpus and on small instances built here. Engine-only behaviour that chest-xray does
not exercise (kept references, truncated dates) uses a project written to ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from pixl_core.config.pixel_policy import PixelText
from pixl_core.config.projects import REPO_ROOT, Project, load_project_file
from pixl_core.dicom.deid import (
    PIXL_IMPLEMENTATION_UID,
    REFUSED_BURNED_IN,
    REFUSED_INVALID_VALUE,
    REFUSED_MISSING_UID,
    REFUSED_MODALITY,
    REFUSED_NOT_IMAGE,
    REFUSED_SERIES,
    REFUSED_UNREADABLE,
    Refused,
    deidentify_bytes,
)
from pixl_core.dicom.header import parse_header
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import KEY_VARIABLE, ProjectHasher, hash_accession_number
from stack.synthetic.dicom_builder import (
    BASIC_TEXT_SR_STORAGE,
    CR_STORAGE,
    DX_STORAGE,
    EXAMPLE_CREATOR,
    EXAMPLE_GROUP,
    GSPS_STORAGE,
    KEY_OBJECT_STORAGE,
    MR_STORAGE,
    base_dataset,
    set_private,
    to_bytes,
)
from stack.synthetic.phi_corpus import TEST_HASH_KEY, Corpus, build_corpus

ROOT = "1.2.826.0.1.3680043.10.978."
# Some tests write deliberately invalid values; pydicom warns about each.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
KEY = TEST_HASH_KEY.encode()


# --- helpers -------------------------------------------------------------------------------


def load_repo_project(name: str = "chest-xray.yaml", path: Path | None = None) -> Project:
    """A project file read against the repository's allow-lists, whatever the environment says."""
    saved = os.environ.pop("PIXL_ALLOWLISTS_DIR", None)
    try:
        return load_project_file(path or REPO_ROOT / "projects" / name)
    finally:
        if saved is not None:
            os.environ["PIXL_ALLOWLISTS_DIR"] = saved


def make(**overrides: object) -> Dataset:
    """A valid Philips DigitalDiagnost CR instance; keyword arguments set attributes."""
    uid = overrides.pop("uid", "1")
    options = {
        k: overrides.pop(k) for k in ("modality", "sop_class", "transfer_syntax") if k in overrides
    }
    ds = base_dataset(
        sop_uid=str(overrides.pop("sop_uid", f"{ROOT}{uid}.3")),
        study_uid=str(overrides.pop("study_uid", f"{ROOT}{uid}.1")),
        series_uid=str(overrides.pop("series_uid", f"{ROOT}{uid}.2")),
        **options,  # type: ignore[arg-type]
    )
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def run(data: bytes | Dataset, project: Project, hasher: ProjectHasher | None = None) -> Dataset:
    raw = to_bytes(data) if isinstance(data, Dataset) else data
    hasher = hasher or ProjectHasher.for_project(project.slug, KEY)
    return dcmread(BytesIO(deidentify_bytes(raw, project, hasher).data))


def refusal(data: bytes | Dataset, project: Project) -> Refused:
    raw = to_bytes(data) if isinstance(data, Dataset) else data
    with pytest.raises(Refused) as caught:
        deidentify_bytes(raw, project, ProjectHasher.for_project(project.slug, KEY))
    return caught.value


def days(text: str) -> dt.date:
    return dt.datetime.strptime(text[:8], "%Y%m%d").date()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> Project:
    return load_repo_project()


@pytest.fixture(scope="module")
def hasher() -> ProjectHasher:
    return ProjectHasher.for_project("chest-xray", KEY)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("phi-corpus"))


@pytest.fixture(scope="module")
def outputs(corpus: Corpus, chest: Project, hasher: ProjectHasher) -> dict[str, bytes]:
    done = {}
    for name, path in corpus.files.items():
        try:
            done[name] = deidentify_bytes(path.read_bytes(), chest, hasher).data
        except Refused:
            continue
    assert len(done) == len(corpus.files) - 1  # dx_private_text is refused
    return done


@pytest.fixture(scope="module")
def engine_test_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project that keeps references and truncates dates, which chest-xray does not."""
    root = tmp_path_factory.mktemp("engine-test")
    (root / "allowlists").mkdir()
    (root / "projects").mkdir()
    refs = [
        f"  - attribute: {sequence}\n"
        "    action: keep\n"
        "    items:\n"
        "      - {attribute: ReferencedSOPClassUID, action: keep}\n"
        "      - {attribute: ReferencedSOPInstanceUID, action: uid}\n"
        for sequence in ("SourceImageSequence", "ReferencedImageSequence")
    ]
    kept = [
        "SOPClassUID: keep",
        "SOPInstanceUID: uid",
        "StudyInstanceUID: uid",
        "SeriesInstanceUID: uid",
        "FrameOfReferenceUID: uid",
        "Modality: keep",
        "PatientID: hash",
        "AccessionNumber: hash",
        "PatientBirthDate: truncate, to: year",
        "StudyDate: truncate, to: month",
        "AcquisitionDateTime: shift",
        "ContentDate: shift",
        "Rows: keep",
        "Columns: keep",
        "SamplesPerPixel: keep",
        "BitsAllocated: keep",
        "PixelData: keep",
    ]
    lines = [f"  - {{attribute: {rule.replace(': ', ', action: ', 1)}}}\n" for rule in kept]
    (root / "allowlists" / "engine-test.yaml").write_text(
        "description: engine test list\nattributes:\n" + "".join(lines + refs)
    )
    path = root / "projects" / "engine-test.yaml"
    path.write_text(
        "modalities: [CR, DX]\nallowlists: [engine-test.yaml]\n"
        "ps315_options: [rtnLongModifDatesOpt]\ndate_shift_max_days: 30\n"
    )
    saved = os.environ.get("PIXL_ALLOWLISTS_DIR")
    os.environ["PIXL_ALLOWLISTS_DIR"] = str(root / "allowlists")
    try:
        return load_project_file(path)
    finally:
        if saved is None:
            del os.environ["PIXL_ALLOWLISTS_DIR"]
        else:
            os.environ["PIXL_ALLOWLISTS_DIR"] = saved


# --- determinism and unlinkability ---------------------------------------------------------


def test_same_key_gives_byte_identical_output(
    corpus: Corpus, chest: Project, outputs: dict[str, bytes]
) -> None:
    again = ProjectHasher.for_project("chest-xray", KEY)
    for name, data in outputs.items():
        assert deidentify_bytes(corpus.files[name].read_bytes(), chest, again).data == data, name


def test_written_file_is_the_data_byte_for_byte(
    corpus: Corpus, chest: Project, hasher: ProjectHasher, outputs: dict[str, bytes], tmp_path: Path
) -> None:
    """``pixl anonymise`` writes the header and the Pixel Data element one after the other
    (no joined copy); the file must be exactly what orthanc-anon gets as ``data``."""
    for name, data in outputs.items():
        result = deidentify_bytes(corpus.files[name].read_bytes(), chest, hasher)
        result.write_to(tmp_path / "out.dcm")
        assert (tmp_path / "out.dcm").read_bytes() == result.data == data, name
        assert result.pixel_element or "deflated" in name, name


def test_another_process_gives_byte_identical_output(
    corpus: Corpus, outputs: dict[str, bytes]
) -> None:
    """A fresh interpreter, reading the key from PIXL_HASH_KEY as production does."""
    script = textwrap.dedent(
        """\
        import hashlib, sys
        from pathlib import Path
        from pixl_core.dicom.deid import deidentify_bytes
        from pixl_core.hashing import ProjectHasher
        from pixl_core.config.projects import load_project
        project = load_project("chest-xray")
        hasher = ProjectHasher.for_project("chest-xray")
        for path in sys.argv[1:]:
            print(hashlib.sha256(deidentify_bytes(Path(path).read_bytes(), project, hasher).data).hexdigest())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXL_")}
    env[KEY_VARIABLE] = TEST_HASH_KEY
    names = sorted(outputs)
    result = subprocess.run(
        [sys.executable, "-c", script] + [str(corpus.files[n]) for n in names],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == [hashlib.sha256(outputs[n]).hexdigest() for n in names]


PSEUDONYMS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "PatientID",
    "AccessionNumber",
)


def test_another_project_gets_unrelated_pseudonyms(
    corpus: Corpus, chest: Project, tmp_path: Path
) -> None:
    other_file = tmp_path / "other-study.yaml"
    other_file.write_text((REPO_ROOT / "projects" / "chest-xray.yaml").read_text())
    other = load_repo_project(path=other_file)
    assert other.slug == "other-study"
    data = corpus.files["cr_explicit"].read_bytes()
    mine = run(data, chest)
    theirs = run(data, other)
    for keyword in PSEUDONYMS:
        assert mine.get(keyword) and theirs.get(keyword), keyword
        assert mine.get(keyword) != theirs.get(keyword), keyword
    assert "other-study" in theirs.DeidentificationMethod


def test_another_key_gets_unrelated_pseudonyms(corpus: Corpus, chest: Project) -> None:
    data = corpus.files["cr_explicit"].read_bytes()
    mine = run(data, chest)
    theirs = run(data, chest, ProjectHasher.for_project("chest-xray", b"another-key-0123456789"))
    for keyword in PSEUDONYMS:
        assert mine.get(keyword) != theirs.get(keyword), keyword


def test_pseudonyms_are_valid_values(outputs: dict[str, bytes]) -> None:
    for data in outputs.values():
        ds = dcmread(BytesIO(data))
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(keyword))
            assert value.startswith("2.25.") and len(value) <= 64 and value[5:].isdigit()
        assert len(ds.AccessionNumber) == 16 and len(ds.PatientID) == 64


# --- referential integrity -----------------------------------------------------------------


def test_one_study_keeps_one_study_uid_and_frame_of_reference(
    corpus: Corpus, outputs: dict[str, bytes], hasher: ProjectHasher
) -> None:
    cr = dcmread(BytesIO(outputs["cr_explicit"]))
    dx = dcmread(BytesIO(outputs["dx_explicit"]))
    assert cr.StudyInstanceUID == dx.StudyInstanceUID == hasher.uid(corpus.uids["study 1"])
    assert cr.FrameOfReferenceUID == dx.FrameOfReferenceUID
    assert cr.SeriesInstanceUID != dx.SeriesInstanceUID
    assert cr.AccessionNumber == dx.AccessionNumber
    assert cr.PatientID == dx.PatientID
    others = {
        dcmread(BytesIO(data)).StudyInstanceUID
        for name, data in outputs.items()
        if name not in ("cr_explicit", "dx_explicit")
    }
    assert cr.StudyInstanceUID not in others


def test_one_series_keeps_one_series_uid(chest: Project) -> None:
    first = run(make(sop_uid=ROOT + "5.1", series_uid=ROOT + "5.0"), chest)
    second = run(make(sop_uid=ROOT + "5.2", series_uid=ROOT + "5.0", InstanceNumber=2), chest)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_referenced_instance_uid_maps_to_the_referenced_instance(
    corpus: Corpus, engine_test_project: Project
) -> None:
    cr = run(corpus.files["cr_explicit"].read_bytes(), engine_test_project)
    dx = run(corpus.files["dx_explicit"].read_bytes(), engine_test_project)
    for sequence in ("SourceImageSequence", "ReferencedImageSequence"):
        (item,) = dx[sequence].value
        assert item.ReferencedSOPInstanceUID == cr.SOPInstanceUID
        assert item.ReferencedSOPClassUID == CR_STORAGE
        assert set(item.keys()) == {0x00081150, 0x00081155}


# --- dates ---------------------------------------------------------------------------------


def test_shifted_dates_keep_their_interval(chest: Project) -> None:
    source = make(
        PatientID="PIXLTEST-DATES-1",
        StudyDate="20230105",
        SeriesDate="20230105",
        AcquisitionDate="20230211",  # 37 days later
        ContentDate="20230211",
    )
    out = run(source, chest)
    shift = (days(out.StudyDate) - days("20230105")).days
    assert shift != 0 and abs(shift) <= chest.date_shift_max_days
    assert (days(out.AcquisitionDate) - days(out.StudyDate)).days == 37
    assert (days(out.ContentDate) - days(out.SeriesDate)).days == 37
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.StudyTime == "" and out.ContentTime == ""

    # The same patient in another study: the same shift. Another patient: another shift.
    later = run(make(uid="6", PatientID="PIXLTEST-DATES-1", StudyDate="20240601"), chest)
    assert (days(later.StudyDate) - days("20240601")).days == shift
    other = run(make(uid="7", PatientID="PIXLTEST-DATES-2", StudyDate="20230105"), chest)
    other_shift = (days(other.StudyDate) - days("20230105")).days
    assert other_shift != shift and other_shift != 0


def test_shift_applies_to_datetimes_and_truncate_to_year_and_month(
    engine_test_project: Project,
) -> None:
    out = run(
        make(
            PatientBirthDate="19560817",
            StudyDate="20230105",
            ContentDate="20230105",
            AcquisitionDateTime="20230105101112.5",
        ),
        engine_test_project,
    )
    assert out.PatientBirthDate == "19560101"
    assert out.StudyDate == "20230101"
    shift = (days(out.ContentDate) - days("20230105")).days
    assert 0 < abs(shift) <= 30
    assert (
        out.AcquisitionDateTime
        == (days("20230105") + dt.timedelta(days=shift)).strftime("%Y%m%d") + "101112.5"
    )
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113101"]  # 113101: the pixels were checked


# --- what the output says about itself -----------------------------------------------------


def test_file_meta_matches_the_data_set(corpus: Corpus, outputs: dict[str, bytes]) -> None:
    for name, data in outputs.items():
        out = dcmread(BytesIO(data))
        source = dcmread(corpus.files[name], stop_before_pixels=True)
        meta = out.file_meta
        assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID, name
        assert meta.MediaStorageSOPClassUID == out.SOPClassUID == source.SOPClassUID, name
        assert meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID, name
        assert meta.ImplementationClassUID == PIXL_IMPLEMENTATION_UID
        assert set(meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003} | {
            0x00020010,
            0x00020012,
            0x00020013,
        }
        assert out.preamble == b"\0" * 128


def test_output_declares_the_confidentiality_profile(outputs: dict[str, bytes]) -> None:
    for data in outputs.values():
        out = dcmread(BytesIO(data))
        assert out.PatientIdentityRemoved == "YES"
        assert "chest-xray" in out.DeidentificationMethod
        items = out.DeidentificationMethodCodeSequence
        # 113105: Clean Descriptors (the project's descriptor check is on); 113101: Clean Pixel
        # Data (its pixels are checked)
        assert [i.CodeValue for i in items] == ["113100", "113107", "113108", "113105", "113101"]
        assert {i.CodingSchemeDesignator for i in items} == {"DCM"}


def test_pixel_data_is_byte_identical(corpus: Corpus, outputs: dict[str, bytes]) -> None:
    for name, data in outputs.items():
        source = corpus.files[name].read_bytes()
        assert dcmread(BytesIO(data)).PixelData == dcmread(BytesIO(source)).PixelData, name
        if "deflated" not in name:  # the raw element itself, header and all
            assert bytes(parse_header(data).pixel_element) == bytes(
                parse_header(source).pixel_element
            ), name
            assert len(parse_header(data).pixel_element) > 500


def test_accession_number_is_the_radiology_parquet_hash(
    corpus: Corpus, outputs: dict[str, bytes], hasher: ProjectHasher
) -> None:
    for name, data in outputs.items():
        out = dcmread(BytesIO(data))
        original = corpus.accession_numbers[name]
        assert out.AccessionNumber == hash_accession_number(hasher, original), name
        assert hash_accession_number(hasher, f" {original} ") == out.AccessionNumber
        assert out.PatientID == hasher.text(corpus.patient_ids[name], 64), name


def test_implicit_vr_stays_implicit_with_its_private_value(outputs: dict[str, bytes]) -> None:
    out = dcmread(BytesIO(outputs["cr_implicit"]))
    assert out.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    value = out.private_block(EXAMPLE_GROUP, EXAMPLE_CREATOR)[0x10].value
    assert (value.decode() if isinstance(value, bytes) else str(value)).strip() == "412.5"


def test_deflated_stays_deflated(outputs: dict[str, bytes]) -> None:
    out = dcmread(BytesIO(outputs["dx_deflated"]))
    assert out.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian


# --- private attributes and manufacturer overrides -----------------------------------------


def private_values(ds: Dataset) -> dict[tuple[int, int], object]:
    return {(e.tag.group, e.tag.element): e.value for e in ds if e.tag.is_private}


def test_private_value_is_kept_whatever_its_block_number(outputs: dict[str, bytes]) -> None:
    for name in ("cr_explicit", "dx_explicit"):  # block 0x10 and block 0x11 in the inputs
        out = dcmread(BytesIO(outputs[name]))
        assert str(out.private_block(EXAMPLE_GROUP, EXAMPLE_CREATOR)[0x10].value) == "412.5"
        # The other vendor's element at the same offset (dx: block 0x10) and every other
        # private attribute are gone; only our creator and value remain.
        assert private_values(out) == {
            (EXAMPLE_GROUP, 0x0010): EXAMPLE_CREATOR,
            (EXAMPLE_GROUP, 0x1010): out.private_block(EXAMPLE_GROUP, EXAMPLE_CREATOR)[0x10].value,
        }


def test_private_value_kept_at_a_high_block_number(chest: Project) -> None:
    source = make()
    set_private(source, EXAMPLE_GROUP, 0x10, "SOMEONE ELSE", 0x10, "DS", "1")
    set_private(source, EXAMPLE_GROUP, 0x4F, EXAMPLE_CREATOR, 0x10, "DS", "77.25")
    out = run(source, chest)
    assert str(out.private_block(EXAMPLE_GROUP, EXAMPLE_CREATOR)[0x10].value) == "77.25"
    assert "SOMEONE ELSE" not in [str(v) for v in private_values(out).values()]


@pytest.mark.parametrize(
    ("manufacturer", "model", "applies"),
    [
        ("Philips Medical Systems", "DigitalDiagnost", True),
        ("PHILIPS", "DigitalDiagnost C90", True),
        ("Philips Medical Systems", "Essenta DR", False),
        ("GE Healthcare", "DigitalDiagnost", False),
        ("Not Philips", "DigitalDiagnost", False),
        ("", "", False),
    ],
)
def test_manufacturer_override_applies_only_to_its_devices(
    chest: Project, manufacturer: str, model: str, applies: bool
) -> None:
    source = make(Manufacturer=manufacturer, ManufacturerModelName=model)
    source.AcquisitionDeviceProcessingDescription = "CHEST PA"
    set_private(source, EXAMPLE_GROUP, 0x10, EXAMPLE_CREATOR, 0x10, "DS", "412.5")
    out = run(source, chest)
    kept = (EXAMPLE_GROUP, 0x1010) in private_values(out)
    assert kept is applies
    # The override also removes the free-text processing description for its devices only.
    assert ("AcquisitionDeviceProcessingDescription" in out) is not applies


# --- refusals ------------------------------------------------------------------------------


def without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: make(modality="MR", sop_class=MR_STORAGE), REFUSED_MODALITY),
        (lambda: make(Modality="CT"), REFUSED_MODALITY),
        (lambda: make(Modality=""), REFUSED_MODALITY),
        (lambda: without_pixels(make(Modality="SR", sop_class=BASIC_TEXT_SR_STORAGE)), "not_image"),
        (lambda: without_pixels(make(Modality="PR", sop_class=GSPS_STORAGE)), REFUSED_NOT_IMAGE),
        (lambda: without_pixels(make(Modality="KO", sop_class=KEY_OBJECT_STORAGE)), "not_image"),
        (lambda: make(sop_class="1.2.3.4.5.6"), REFUSED_NOT_IMAGE),
        (lambda: make(SeriesDescription="SCOUT"), REFUSED_SERIES),
        (lambda: make(SeriesDescription="Chest localiser"), REFUSED_SERIES),
        (lambda: make(SeriesDescription="Dose Report"), REFUSED_SERIES),
        (lambda: make(SeriesInstanceUID=""), REFUSED_MISSING_UID),
    ],
)
def test_policy_refusals(chest: Project, build: Callable[[], Dataset], reason: str) -> None:
    assert refusal(build(), chest).reason == reason


@pytest.mark.parametrize(
    "build",
    [
        lambda: make(modality="DX", sop_class=DX_STORAGE, BurnedInAnnotation="YES"),
        lambda: make(BurnedInAnnotation="yes"),
    ],
)
def test_a_burned_in_header_refuses_unless_the_pixels_are_masked(
    chest: Project, build: Callable[[], Dataset]
) -> None:
    """With ``pixel_text: mask`` the header is no guide: the pixels are checked and masked (a
    wrong YES must not refuse a clean film). ``refuse`` and ``off`` still refuse on the header."""
    for policy in (PixelText.REFUSE, PixelText.OFF):
        strict = dataclasses.replace(chest, pixel_text=policy, pixel_text_justification="test")
        assert refusal(build(), strict).reason == REFUSED_BURNED_IN
    hasher = ProjectHasher.for_project(chest.slug, KEY)
    out = dcmread(BytesIO(deidentify_bytes(to_bytes(build()), chest, hasher).data))
    assert out.BurnedInAnnotation == "NO"


def test_truncated_files_are_unreadable(corpus: Corpus, chest: Project) -> None:
    """Cut anywhere up to the end of Pixel Data (preamble, meta, header, pixels): no output.

    (Elements after Pixel Data are never copied, so a cut among them changes nothing.)
    """
    for name in ("cr_explicit", "cr_implicit", "dx_jpeg", "dx_deflated"):
        data = corpus.files[name].read_bytes()
        end = len(data)
        if name != "dx_deflated":
            pixels = bytes(parse_header(data).pixel_element)
            end = data.index(pixels) + len(pixels)
        cuts = sorted({*range(0, end, max(1, end // 60)), end - 2, end - 1})
        for cut in cuts:
            assert refusal(data[:cut], chest).reason == REFUSED_UNREADABLE, (name, cut)
        run(data[:end], chest)  # and the whole of it is fine


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0" * 132,
        b"\0" * 128 + b"DICM",
        bytes(range(256)) * 40,
        b"not a dicom file at all\n" * 100,
    ],
)
def test_garbage_is_unreadable(chest: Project, data: bytes) -> None:
    assert refusal(data, chest).reason == REFUSED_UNREADABLE


def test_pixel_data_that_does_not_fit_the_header_is_unreadable(chest: Project) -> None:
    assert refusal(make(Rows=128), chest).reason == REFUSED_UNREADABLE
    padded = make()
    padded.PixelData = padded.PixelData + b"\0" * 64  # zero padding is harmless
    run(padded, chest)
    texted = make()
    texted.PixelData = texted.PixelData + b"PHIXPADDING12345"
    assert refusal(texted, chest).reason == REFUSED_UNREADABLE


def patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def test_values_that_are_not_what_their_vr_says_are_refused(corpus: Corpus, chest: Project) -> None:
    # The override's kept DS slot written as LO text (the corpus instance).
    data = corpus.files["dx_private_text"].read_bytes()
    assert refusal(data, chest).reason == REFUSED_INVALID_VALUE
    # Text in a kept IS, after a shifted date, and a control character in kept text.
    series = patch(to_bytes(make(SeriesNumber="123456789012")), b"123456789012", b"PHIXSERIES12")
    assert refusal(series, chest).reason == REFUSED_INVALID_VALUE
    dated = patch(to_bytes(make(SeriesDate="2023010512345678")), b"12345678", b"PHIXDATE")
    assert refusal(dated, chest).reason == REFUSED_INVALID_VALUE
    assert refusal(make(StudyDescription="XR\x01CHEST"), chest).reason == REFUSED_INVALID_VALUE
    # A public attribute written with another VR than the dictionary's.
    wrong_vr = make()
    wrong_vr.add_new(0x00200011, "LO", "PHIXSERIESLO")  # SeriesNumber is IS
    assert refusal(wrong_vr, chest).reason == REFUSED_INVALID_VALUE


def test_private_text_that_has_the_declared_shape_is_kept(chest: Project) -> None:
    """Vendors write numbers as LO: a DS-shaped LO in the DS slot is still kept."""
    source = make()
    set_private(source, EXAMPLE_GROUP, 0x10, EXAMPLE_CREATOR, 0x10, "LO", "412.5")
    out = run(source, chest)
    assert str(out.private_block(EXAMPLE_GROUP, EXAMPLE_CREATOR)[0x10].value) == "412.5"


def test_refusals_carry_only_a_reason_code(corpus: Corpus, chest: Project) -> None:
    """No identifier in a refusal's message, arguments or chained exception."""
    planted = [v for v in corpus.planted_values + corpus.original_uids if len(v) > 6]
    data = corpus.files["cr_explicit"].read_bytes()
    cases: list[bytes] = [
        data[: len(data) // 2],
        b"PHIX" + data[4:100],
        corpus.files["dx_private_text"].read_bytes(),
    ]
    for keyword, value in (
        ("Modality", "MR"),
        ("PhotometricInterpretation", "RGB"),
        ("SeriesDescription", "SCOUT"),
        ("SOPClassUID", BASIC_TEXT_SR_STORAGE),
    ):
        ds = dcmread(corpus.files["cr_explicit"])
        setattr(ds, keyword, value)
        cases.append(to_bytes(ds))
    reasons = set()
    for case in cases:
        refused = refusal(case, chest)
        reasons.add(refused.reason)
        text = f"{refused!s} {refused!r} {refused.args!r} {refused.__cause__!r}"
        assert str(refused) == refused.reason
        assert refused.__cause__ is None
        assert not [v for v in planted if v in text]
    cases.append(
        patch(to_bytes(make(SeriesNumber="123456789012")), b"123456789012", b"PHIXSERIES12")
    )
    for case in cases[-1:]:
        refused = refusal(case, chest)
        reasons.add(refused.reason)
        assert "PHIX" not in f"{refused!s} {refused!r} {refused.args!r}"
    assert reasons == {
        REFUSED_UNREADABLE,
        REFUSED_INVALID_VALUE,
        REFUSED_MODALITY,
        "pixels_not_greyscale",
        REFUSED_SERIES,
        REFUSED_NOT_IMAGE,
    }


def test_missing_or_short_key_is_one_config_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with pytest.raises(PixlConfigError) as missing:
        ProjectHasher.for_project("chest-xray")
    assert KEY_VARIABLE in str(missing.value) and "\n" not in str(missing.value)
    monkeypatch.setenv(KEY_VARIABLE, "short")
    with pytest.raises(PixlConfigError) as short:
        ProjectHasher.for_project("chest-xray")
    assert KEY_VARIABLE in str(short.value) and "\n" not in str(short.value)
    assert "short" not in str(short.value).replace("too short", "")
    monkeypatch.setenv(KEY_VARIABLE, TEST_HASH_KEY)
    assert ProjectHasher.for_project("chest-xray") == ProjectHasher.for_project("chest-xray", KEY)


def test_kept_sequences_keep_only_listed_item_attributes(outputs: dict[str, bytes]) -> None:
    out = dcmread(BytesIO(outputs["cr_explicit"]))
    (view,) = out.ViewCodeSequence
    assert set(view.keys()) == {0x00080100, 0x00080102, 0x00080104}
    assert view.CodeMeaning == "postero-anterior"
    (region,) = out.AnatomicRegionSequence
    assert set(region.keys()) == {0x00080100, 0x00080102, 0x00080104}
    for gone in ("IconImageSequence", "RequestAttributesSequence", "OtherPatientIDsSequence"):
        assert gone not in out
    assert not [e for e in out if 0x6000 <= e.tag.group <= 0x60FF]
    assert not [e for e in out if e.tag > 0x7FE00010]


def test_empty_sequence_item_list_is_harmless(chest: Project) -> None:
    out = run(make(ViewCodeSequence=Sequence([])), chest)
    assert len(out.ViewCodeSequence) == 0
