"""The report checker, the second method: every identifier variant found at the right offsets,
eponyms and measurements left alone, recall and false flags on synthetic reports, and
``pixl reports check`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from pixl_cli.main import app
from pixl_cli.reports_cmd import PROGRESS_MIN_BYTES
from pixl_core.text.checker import (
    KINDS,
    PATIENT_KINDS,
    CheckResult,
    Finding,
    PatientIdentifiers,
    check_report,
    merge_findings,
    nhs_number_is_valid,
)
from pixl_ehr.checker_io import ReportInputError, parse_line
from stack.synthetic.reports import generate

PIXL = Path(sys.executable).parent / "pixl"

PATIENT = PatientIdentifiers(
    name="John Michael Parkinson",
    given_name="John",
    family_name="Parkinson",
    mrn="40012345",
    nhs_number="943 476 5919",
    date_of_birth="1950-02-01",
    address="Flat 3, 12 Acacia Avenue, Camden, London NW1 2AB",
    postcode="NW1 2AB",
    phone="020 7946 0958",
)


def found(text: str, identifiers: PatientIdentifiers = PATIENT) -> list[tuple[str, str]]:
    """(kind, matched text) of every finding: readable assertions."""
    return [(f.kind, text[f.start : f.end]) for f in check_report(text, identifiers).findings]


def assert_found(kind: str, variant: str, identifiers: PatientIdentifiers = PATIENT) -> None:
    """``variant`` planted in a sentence is found exactly, with its kind, and nothing else."""
    before = "Findings: the lungs are clear. Seen with "
    text = f"{before}{variant} today. No effusion."
    result = check_report(text, identifiers)
    assert result.flagged
    assert result.findings == [Finding(kind, len(before), len(before) + len(variant))], found(text)


# --- patient-specific identifiers, every variant ----------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        "John Parkinson",
        "John Michael Parkinson",
        "John M. Parkinson",
        "JOHN PARKINSON",
        "john parkinson",
        "PARKINSON, John",
        "Parkinson, John",
        "Parkinson, J.",
        "Parkinson, J. M.",
        "J. Parkinson",
        "J Parkinson",
        "J.M. Parkinson",
        "J. M. Parkinson",
    ],
)
def test_names_with_given_name_initials_or_comma_form(variant: str) -> None:
    assert_found("name", variant)


@pytest.mark.parametrize(
    ("title", "variant"),
    [
        ("Mr ", "Parkinson"),
        ("Mr. ", "Parkinson"),
        ("MR ", "PARKINSON"),
        ("mr ", "parkinson"),
        ("Dr ", "Parkinson"),
        ("Prof ", "Parkinson"),
        ("Mr ", "John Parkinson"),
        ("Mrs ", "J. Parkinson"),
        ("Mr ", "John"),
    ],
)
def test_names_after_a_title_are_flagged_without_the_title(title: str, variant: str) -> None:
    before = f"Discussed with {title}"
    text = f"{before}{variant}'s GP."
    assert check_report(text, PATIENT).findings == [
        Finding("name", len(before), len(before) + len(variant))
    ]


def test_distinctive_surname_alone_is_flagged_common_words_are_not() -> None:
    okafor = PatientIdentifiers(name="Chidi Okafor", family_name="Okafor", given_name="Chidi")
    assert found("Okafor attended. OKAFOR", okafor) == [("name", "Okafor"), ("name", "OKAFOR")]
    assert found("Chidi was reviewed.", okafor) == [("name", "Chidi")]
    # Word-bounded: longer words that contain the name are other names. ("Okaforo", one letter
    # off, is now flagged as a misspelling of the patient's name: issue 9.)
    assert found("Okaforsky and Chidimma are other people.", okafor) == []
    white = PatientIdentifiers(name="Grace White", given_name="Grace", family_name="White")
    assert found("White cell count raised. Little change. Grace period.", white) == []
    assert found("Mrs White attended; G. White; WHITE, Grace; Grace White.", white) == [
        ("name", "White"),
        ("name", "G. White"),
        ("name", "WHITE, Grace"),
        ("name", "Grace White"),
    ]
    may = PatientIdentifiers(name="May Field", given_name="May", family_name="Field")
    assert (
        found("Appearances may represent infection in the lung fields. A field of view.", may) == []
    )


def test_double_barrelled_and_apostrophe_names() -> None:
    ids = PatientIdentifiers(name="Siobhan O'Brien-Smythe")
    assert found("Mrs O'Brien-Smythe and Mrs OBrien Smythe and Ms Smythe.", ids) == [
        ("name", "O'Brien-Smythe"),
        ("name", "OBrien Smythe"),
        ("name", "Smythe"),
    ]


def test_comma_form_stops_at_the_end_of_the_sentence() -> None:
    assert found("Patient: Parkinson, J. A 10 mm nodule. PARKINSON, John. A small effusion.") == [
        ("name", "Parkinson, J."),
        ("name", "PARKINSON, John"),
    ]


def test_name_given_only_as_dicom_or_comma_form() -> None:
    for name in ("PARKINSON^John", "PARKINSON, John"):
        ids = PatientIdentifiers(name=name)
        assert found("Seen with J. Parkinson and Mr Parkinson.", ids) == [
            ("name", "J. Parkinson"),
            ("name", "Parkinson"),
        ]


def test_mrn_as_a_whole_token() -> None:
    assert_found("mrn", "40012345")
    assert found("MRN40012345 and (40012345).") == [("mrn", "40012345"), ("mrn", "40012345")]
    assert found("Ref 400123456 and 140012345 and 40012345.5") == []
    alpha = PatientIdentifiers(mrn="A1234567")
    assert found("Hospital no a1234567; XA1234567 is another.", alpha) == [("mrn", "a1234567")]


@pytest.mark.parametrize("variant", ["9434765919", "943 476 5919", "943-476-5919"])
def test_nhs_number_with_or_without_spaces_or_dashes(variant: str) -> None:
    assert_found("nhs_number", variant)


def test_patient_nhs_number_found_even_if_it_fails_modulus_11() -> None:
    ids = PatientIdentifiers(nhs_number="4010232138")  # check digit should be 7
    assert not nhs_number_is_valid("4010232138")
    assert found("NHS 401 023 2138.", ids) == [("nhs_number", "401 023 2138")]


@pytest.mark.parametrize(
    "variant",
    [
        "01/02/1950",
        "1/2/1950",
        "01-02-1950",
        "01.02.1950",
        "01/02/50",
        "1 Feb 1950",
        "1st February 1950",
        "01 Feb 1950",
        "01-Feb-1950",
        "February 1, 1950",
        "Feb 1st 1950",
        "1950-02-01",
        "19500201",
        "02/01/1950",  # written month first: still the date of birth
    ],
)
def test_date_of_birth_formats(variant: str) -> None:
    assert_found("date_of_birth", variant)


def test_other_dates_are_not_flagged() -> None:
    text = "Study 12/03/2024 10:32, compared with 1 Feb 2019 and 1951-02-01 and 01/03/1950."
    assert found(text) == []


@pytest.mark.parametrize(
    "variant",
    [
        "12 Acacia Avenue",
        "12 ACACIA AVENUE",
        "12 Acacia Ave",
        "12 Acacia Ave.,  Camden",
        "12, Acacia Avenue",
        "12 Acacia Avenue, Camden, London",
        "12 acacia avenue,  camden",
    ],
)
def test_address_lines(variant: str) -> None:
    assert_found("address", variant)


def test_address_town_alone_or_flat_alone_is_not_flagged() -> None:
    assert found("Transferred from London. Flat 3 cm lesion. Camden clinic.") == []


def test_postcode_from_the_address_when_not_given_separately() -> None:
    ids = PatientIdentifiers(address="12 Acacia Avenue, London NW1 2AB")
    assert found("Letter to NW1 2AB and nw12ab.", ids) == [
        ("postcode", "NW1 2AB"),
        ("postcode", "nw12ab"),
    ]


@pytest.mark.parametrize("variant", ["NW1 2AB", "NW12AB", "nw1 2ab", "nw12ab"])
def test_postcode_with_or_without_space_any_case(variant: str) -> None:
    assert_found("postcode", variant)


@pytest.mark.parametrize(
    "variant",
    [
        "020 7946 0958",
        "02079460958",
        "020-7946-0958",
        "(020) 7946 0958",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+442079460958",
        "0044 20 7946 0958",
    ],
)
def test_phone_variants(variant: str) -> None:
    assert_found("phone", variant)


def test_patient_phone_given_in_international_form() -> None:
    ids = PatientIdentifiers(phone="+44 7700 900123")
    assert found("Call 07700 900123 or 07700900123 12 mm.", ids) == [
        ("phone", "07700 900123"),
        ("phone", "07700900123"),
    ]


# --- generic patterns -------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["9434765919", "4010232137", "6541238715"])
def test_modulus_11_valid(number: str) -> None:
    assert nhs_number_is_valid(number)
    spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
    for variant in (number, spaced):
        assert found(f"Other NHS {variant}.", PatientIdentifiers()) == [
            ("nhs_number_pattern", variant)
        ]


@pytest.mark.parametrize("number", ["9434765918", "4010232138", "1234567890", "0000000001"])
def test_modulus_11_invalid_is_not_an_nhs_number(number: str) -> None:
    assert not nhs_number_is_valid(number)
    assert found(f"Ref {number}.", PatientIdentifiers()) == []


def test_check_digit_ten_is_never_valid() -> None:
    # 1000000010: weights give remainder 1, so the check digit would be 10: never issued.
    assert not any(nhs_number_is_valid(f"100000001{d}") for d in "0123456789")


@pytest.mark.parametrize("postcode", ["SW1A 1AA", "SW1A1AA", "m1 1ae", "B33 8TH", "CR2 6XH"])
def test_postcode_pattern(postcode: str) -> None:
    assert found(f"GP at {postcode}.", PatientIdentifiers()) == [("postcode_pattern", postcode)]


@pytest.mark.parametrize(
    "phone", ["020 7946 0123", "07700 900456", "0161 496 0000", "+44 117 496 0999", "01632 960123"]
)
def test_phone_pattern(phone: str) -> None:
    assert found(f"Call {phone} now.", PatientIdentifiers()) == [("phone_pattern", phone)]


def test_email() -> None:
    text = "Copy to radiology.results@nhs.net and a.b-c@example.co.uk."
    assert found(text, PatientIdentifiers()) == [
        ("email", "radiology.results@nhs.net"),
        ("email", "a.b-c@example.co.uk"),
    ]


# --- what must not be flagged -----------------------------------------------------------------

EPONYM_TEXT = (
    "Known Parkinson's disease. Parkinson disease with dysphagia. Hodgkin's lymphoma; "
    "non-Hodgkin lymphoma; Hodgkin lymphoma. A Swan-Ganz catheter; the Swan-Ganz catheter tip. "
    "Pancoast tumour; suspicious for a Pancoast (superior sulcus) tumour. Septal (Kerley B) "
    "lines; Kerley B lines. Chilaiditi sign. Morgagni hernia. Bochdalek hernia. Ghon focus. "
    "Westermark sign. Hampton hump; Hampton's hump. "
)
MEASUREMENT_TEXT = (
    "A 5 mm nodule; 12.5 cm mass; CTR 0.55; T2 weighted MRI; cervical rib at C7; wedge fracture "
    "of L1 and T12; 10 x 12 mm nodule; 120 kVp, 2.5 mAs; study 12/03/2024 at 10:32; SpO2 88%; "
    "FiO2 0.4; WCC 15.2; CRP 145; T8-T9; 5th to 7th ribs; ETT 4 cm above the carina; 38 mm. "
    "Accession RRV12345678. 0.5 cm. L1 2CM. T2 5MM. C7 1CM. 01-02-2024 12 mm. T5 6th rib."
)


@pytest.mark.parametrize(
    "surname",
    [
        "Parkinson", "Hodgkin", "Swan", "Ganz", "Pancoast", "Kerley", "Chilaiditi", "Morgagni",
        "Bochdalek", "Ghon", "Westermark", "Hampton",
    ],
)  # fmt: skip
def test_eponyms_are_not_names_even_when_they_are_the_patients(surname: str) -> None:
    ids = PatientIdentifiers(name=f"Bill {surname}", given_name="Bill", family_name=surname)
    assert found(EPONYM_TEXT + MEASUREMENT_TEXT, ids) == []
    assert found(f"Seen by Mr {surname} today.", ids) == [("name", surname)]


def test_parkinson_patient() -> None:
    assert found("Known Parkinson's disease, no change. Parkinson disease.") == []
    assert found("Mr Parkinson has Parkinson's disease.") == [("name", "Parkinson")]
    assert found("A J Parkinson lymphoma") == []  # initial, then a medical word: an eponym


def test_measurements_and_study_dates_are_not_flagged() -> None:
    assert found(MEASUREMENT_TEXT) == []


def test_phone_inside_nhs_shaped_digits_is_one_phone() -> None:
    # "+44 161 496 0704" ends in a 3-3-4 group that passes modulus 11.
    assert nhs_number_is_valid("1614960704")
    assert found("Tel +44 161 496 0704.", PatientIdentifiers()) == [
        ("phone_pattern", "+44 161 496 0704")
    ]


# --- result shape -----------------------------------------------------------------------------


def test_findings_sorted_and_merged_per_kind() -> None:
    merged = merge_findings(
        [
            Finding("name", 10, 15),
            Finding("mrn", 0, 4),
            Finding("name", 12, 20),
            Finding("name", 20, 22),
            Finding("phone", 12, 18),
        ]
    )
    assert merged == [Finding("mrn", 0, 4), Finding("name", 10, 22), Finding("phone", 12, 18)]
    assert check_report("", PATIENT) == CheckResult(False, [])


def test_every_kind_is_documented_and_reachable() -> None:
    # Issue 9 added the accession number, other patient IDs and the institution (the DICOM
    # header's identifiers, for descriptors and burned-in text).
    text = (
        "John Parkinson 40012345 943 476 5919 01/02/1950 12 Acacia Avenue NW1 2AB 020 7946 0958 "
        "401 023 2137 SW1A 1AA 07700 900123 a@b.nhs.uk ACC7654321 RF-99887 Royal Free Hospital"
    )
    ids = replace(
        PATIENT, accession_number="ACC7654321", other_ids="RF-99887", institution="Royal Free"
    )
    assert {f.kind for f in check_report(text, ids).findings} == set(KINDS)


def test_bad_identifiers_raise_without_the_value() -> None:
    for ids, field in [
        (PatientIdentifiers(date_of_birth="01/02/1950"), "date_of_birth"),
        (PatientIdentifiers(date_of_birth="1950-02-30"), "date_of_birth"),
        (PatientIdentifiers(nhs_number="943476591"), "nhs_number"),
        (PatientIdentifiers(postcode="NOTAPOSTCODE"), "postcode"),
        (PatientIdentifiers(phone="12345"), "phone"),
    ]:
        with pytest.raises(ValueError, match=field) as info:
            check_report("text", ids)
        value = getattr(ids, field)
        assert value not in str(info.value)


# --- synthetic reports: recall and false flags ------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> list:
    return generate(1000, seed=20240601)


def test_synthetic_reports_are_realistic(synthetic: list) -> None:
    lengths = [len(r.text) for r in synthetic]
    assert min(lengths) >= 450 and max(lengths) <= 1600
    planted = Counter(kind for r in synthetic for kind, _, _ in r.planted)
    # The report generator plants the EHR's identifiers; the DICOM header's (accession number,
    # other IDs, institution) are planted by stack/synthetic/checker_variants.py.
    header_kinds = {"accession_number", "other_id", "institution"}
    assert set(PATIENT_KINDS) - header_kinds <= set(planted)
    assert sum(1 for r in synthetic if r.planted) >= 250
    surnames = {r.identifiers.family_name for r in synthetic}
    assert {"Parkinson", "Hodgkin", "Swan", "Kerley", "White"} <= surnames
    assert generate(5, seed=1) == generate(5, seed=1)


def test_recall_is_complete_with_exact_offsets(synthetic: list) -> None:
    planted = missed = 0
    missing = []
    for report in synthetic:
        findings = set(check_report(report.text, report.identifiers).findings)
        for kind, start, end in report.planted:
            planted += 1
            if Finding(kind, start, end) not in findings:
                missed += 1
                missing.append((kind, report.text[start:end]))
    assert planted >= 500
    assert missing == [], f"recall {1 - missed / planted:.2%}"


def test_no_flags_on_clean_reports(synthetic: list) -> None:
    clean = [r for r in synthetic if not r.planted]
    assert len(clean) >= 500
    flagged = []
    for report in clean:
        result = check_report(report.text, report.identifiers)
        if result.flagged:
            flagged.append([(f.kind, report.text[f.start : f.end]) for f in result.findings])
    assert flagged == []


def test_no_extra_findings_on_planted_reports(synthetic: list) -> None:
    extra = []
    for report in synthetic:
        if not report.planted:
            continue
        expected = {Finding(kind, s, e) for kind, s, e in report.planted}
        extra += [
            (f.kind, report.text[f.start : f.end])
            for f in check_report(report.text, report.identifiers).findings
            if f not in expected
        ]
    assert extra == []


# --- input validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 7: not valid JSON"),
        ("[1, 2]", "line 7: not a JSON object"),
        ('{"text": "x", "identifiers": {}}', 'line 7: missing "id"'),
        ('{"id": true, "text": "x", "identifiers": {}}', '"id" must be a string or an integer'),
        ('{"id": 1, "identifiers": {}}', 'line 7: missing "text"'),
        ('{"id": 1, "text": 5, "identifiers": {}}', '"text" must be a string'),
        ('{"id": 1, "text": "x"}', 'missing "identifiers"'),
        ('{"id": 1, "text": "x", "identifiers": []}', '"identifiers" must be an object'),
        ('{"id": 1, "text": "x", "identifiers": {"nhs": "9434765919"}}', "a field other than"),
        ('{"id": 1, "text": "x", "identifiers": {"mrn": 40012345}}', "identifiers.mrn must be"),
        (
            '{"id": 1, "text": "x", "identifiers": {"date_of_birth": "01/02/1950"}}',
            "identifiers.date_of_birth must be a date as YYYY-MM-DD",
        ),
    ],
)
def test_malformed_lines_name_the_line_and_problem_not_the_content(line: str, message: str) -> None:
    with pytest.raises(ReportInputError) as info:
        parse_line(line.encode(), 7)
    assert message in str(info.value)
    for secret in ("9434765919", "40012345", "01/02/1950"):
        assert secret not in str(info.value)


def test_good_lines_parse() -> None:
    record = parse_line(b'{"id": "a", "text": "t", "identifiers": {"mrn": null}, "x": 1}', 1)
    assert record is not None and record.id == "a" and record.identifiers == PatientIdentifiers()
    assert parse_line(b"   \n", 2) is None
    with pytest.raises(ReportInputError, match="line 3: not valid UTF-8"):
        parse_line(b'{"id": 1, "text": "\xff"}', 3)


# --- the CLI end to end -----------------------------------------------------------------------


def _write_input(path: Path, reports: list) -> None:
    with path.open("w", encoding="utf-8") as out:
        for index, report in enumerate(reports):
            identifiers = {k: v for k, v in asdict(report.identifiers).items() if v is not None}
            out.write(
                json.dumps({"id": f"r{index}", "text": report.text, "identifiers": identifiers})
                + "\n"
            )


def _pixl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIXL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_check_end_to_end(tmp_path: Path, synthetic: list) -> None:
    reports = synthetic  # over 1 MB: the progress bar's path (silent when not a terminal)
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_input(source, reports)
    assert source.stat().st_size > PROGRESS_MIN_BYTES
    done = _pixl("reports", "check", "--input", str(source), "--output", str(target))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(len(reports))]
    for line, report in zip(lines, reports, strict=True):
        assert set(line) == {"id", "flagged", "findings"}
        assert line["flagged"] == bool(report.planted)
        expected = [[kind, s, e] for kind, s, e in sorted(report.planted, key=lambda p: p[1:])]
        assert [[f["kind"], f["start"], f["end"]] for f in line["findings"]] == expected
    flagged = sum(1 for r in reports if r.planted)
    assert done.stdout.startswith(f"checked {len(reports)} reports, {flagged} flagged (")
    assert done.stderr == ""
    # No identifier text in the output: neither the planted strings nor the patients' values.
    output = target.read_bytes() + done.stdout.encode() + done.stderr.encode()
    for report in reports:
        for _, s, e in report.planted:
            assert report.text[s:e].encode() not in output
        for value in asdict(report.identifiers).values():
            if value and len(value) >= 5:
                assert value.encode() not in output


def test_cli_malformed_line_and_exit_codes(tmp_path: Path) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = {"id": 1, "text": "Mr Parkinson", "identifiers": {"family_name": "Parkinson"}}
    bad = {"id": 2, "text": "x", "identifiers": {"nhs_number": "943 476 591X"}}
    source.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    done = _pixl("reports", "check", "--input", str(source), "--output", str(target))
    assert done.returncode == 1
    assert "line 3: identifiers.nhs_number must be 10 digits" in done.stderr
    assert "943 476 591X" not in done.stderr + done.stdout and "Parkinson" not in done.stderr
    assert not target.exists() and list(tmp_path.iterdir()) == [source]  # nothing partial

    source.write_text(json.dumps(good) + "\n", encoding="utf-8")
    ok = _pixl("reports", "check", "--input", str(source), "--output", str(target))
    assert ok.returncode == 0
    assert ok.stdout.strip() == "checked 1 reports, 1 flagged (name 1)"
    assert json.loads(target.read_text()) == {
        "id": 1,
        "flagged": True,
        "findings": [{"kind": "name", "start": 3, "end": 12}],
    }


def test_cli_exit_codes_for_files_and_usage(tmp_path: Path) -> None:
    """The same command in-process (no interpreter start-up): unreadable or unwritable files
    and bad usage exit 2."""
    runner = CliRunner()
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "x", "identifiers": {}}\n', encoding="utf-8")

    def check(*args: str) -> Result:
        return runner.invoke(app, ["reports", "check", *args])

    missing = check("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert missing.exit_code == 2 and "cannot read" in missing.stderr
    nowhere = str(tmp_path / "no-such-dir" / "out.jsonl")
    unwritable = check("--input", str(source), "--output", nowhere)
    assert unwritable.exit_code == 2 and "cannot write" in unwritable.stderr
    assert check("--input", str(source)).exit_code == 2  # --output missing
    folder = check("--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert folder.exit_code == 2 and "cannot read" in folder.stderr
    ok = check("--input", str(source), "--output", str(tmp_path / "o"))
    assert ok.exit_code == 0 and ok.stdout.strip() == "checked 1 reports, 0 flagged"
