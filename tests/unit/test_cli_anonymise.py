"""``pixl anonymise`` as an operator runs it: exit codes, summary line, --verbose, output names.

Every test runs the installed ``pixl`` command in a subprocess, with its own environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from stack.synthetic.dicom_builder import MR_STORAGE, base_dataset, to_bytes
from stack.synthetic.phi_corpus import TEST_HASH_KEY

PIXL = Path(sys.executable).with_name("pixl")
ROOT = "1.2.826.0.1.3680043.10.979."
MRN = "PHIXMRN7Q2K9"
ACCESSION = "PHIXACC3M8T1"
PSEUDONYM = re.compile(r"2\.25\.\d{1,39}")


def pixl(
    *args: str | Path, key: str | None = TEST_HASH_KEY, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXL_")}
    if key is not None:
        env["PIXL_HASH_KEY"] = key
    env["COLUMNS"] = "200"  # one summary line, however long the paths
    return subprocess.run(
        [str(PIXL), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def instance(number: int, **attributes: object) -> bytes:
    options = {k: attributes.pop(k) for k in ("modality", "sop_class") if k in attributes}
    ds = base_dataset(
        sop_uid=f"{ROOT}1.1.{number}",
        study_uid=f"{ROOT}1",
        series_uid=f"{ROOT}1.1",
        patient_id=MRN,
        accession=ACCESSION,
        **options,  # type: ignore[arg-type]
    )
    ds.InstanceNumber = number
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Input files named as a PACS export names them: MRN and accession number."""
    folder = tmp_path_factory.mktemp("inputs") / f"{MRN}_{ACCESSION}"
    (folder / "nested" / "deeper").mkdir(parents=True)
    good = instance(1)
    files = {
        "good1": (folder / f"{MRN}_{ACCESSION}_1.dcm", good),
        "good2": (folder / "nested" / f"{MRN}_2.dcm", instance(2)),
        "good3": (folder / "nested" / "deeper" / f"{ACCESSION}_3", instance(3)),
        "mr": (folder.parent / f"{MRN}_mr.dcm", instance(4, modality="MR", sop_class=MR_STORAGE)),
        "scout": (folder.parent / f"{MRN}_scout.dcm", instance(5, SeriesDescription="SCOUT")),
        "garbage": (folder.parent / f"{MRN}_garbage.dcm", b"not dicom\n" * 50),
        "truncated": (folder.parent / f"{MRN}_truncated.dcm", good[: len(good) // 2]),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()}


def written(output: Path) -> list[Path]:
    return sorted(p for p in output.rglob("*") if p.is_file())


def summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return lines[0]


def test_all_done_exits_0(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = pixl(
        "anonymise",
        "--project",
        "chest-xray",
        "--output",
        tmp_path / "out",
        inputs["good1"],
        inputs["good2"],
    )
    assert result.returncode == 0, result.stderr
    assert summary(result) == "de-identified 2, refused 0"
    assert len(written(tmp_path / "out")) == 2


def test_refusals_by_policy_still_exit_0(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = pixl(
        "anonymise",
        "-p",
        "chest-xray",
        "-o",
        tmp_path / "out",
        inputs["good1"],
        inputs["mr"],
        inputs["scout"],
    )
    assert result.returncode == 0, result.stderr
    assert summary(result) == (
        "de-identified 1, refused 2 (modality_not_allowed 1, series_filtered 1)"
    )
    assert len(written(tmp_path / "out")) == 1
    # Without --verbose nothing names an input (input names carry MRNs).
    assert MRN not in result.stdout + result.stderr


def test_unreadable_input_exits_1_and_the_others_are_still_done(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    result = pixl(
        "anonymise",
        "-p",
        "chest-xray",
        "-o",
        tmp_path / "out",
        inputs["garbage"],
        inputs["good1"],
        inputs["truncated"],
        inputs["mr"],
    )
    assert result.returncode == 1, result.stderr
    assert summary(result) == "de-identified 1, refused 3 (modality_not_allowed 1, unreadable 2)"
    assert len(written(tmp_path / "out")) == 1
    assert "Traceback" not in result.stderr


def test_verbose_lists_each_refused_path(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = pixl(
        "anonymise",
        "-p",
        "chest-xray",
        "-o",
        tmp_path / "out",
        "--verbose",
        inputs["good1"],
        inputs["mr"],
        inputs["garbage"],
    )
    assert result.returncode == 1
    listed = [line for line in result.stderr.splitlines() if line.startswith("refused ")]
    assert sorted(listed) == sorted(
        [
            f"refused modality_not_allowed: {inputs['mr']}",
            f"refused unreadable: {inputs['garbage']}",
        ]
    )
    assert str(inputs["good1"]) not in result.stderr + result.stdout


def test_folders_are_searched_recursively(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = pixl("anonymise", "-p", "chest-xray", "-o", tmp_path / "out", inputs["good1"].parent)
    assert result.returncode == 0, result.stderr
    assert summary(result) == "de-identified 3, refused 0"
    assert len(written(tmp_path / "out")) == 3


def test_output_is_named_by_pseudonymised_uids_only(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = pixl("anonymise", "-p", "chest-xray", "-o", output, inputs["good1"].parent)
    assert result.returncode == 0, result.stderr
    files = written(output)
    assert len(files) == 3
    for path in files:
        study, series, name = path.relative_to(output).parts
        assert name.endswith(".dcm")
        instance_uid = name.removesuffix(".dcm")
        for part in (study, series, instance_uid):
            assert PSEUDONYM.fullmatch(part), part
            assert ROOT.rstrip(".") not in part
        ds = dcmread(path, stop_before_pixels=True)
        assert (study, series, instance_uid) == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
    relative = " ".join(p.relative_to(output).as_posix() for p in files)
    assert MRN not in relative and ACCESSION not in relative
    assert len({p.parent for p in files}) == 1  # one study, one series


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (["--project", "no-such-project"], TEST_HASH_KEY, "unknown project 'no-such-project'"),
        (["--project", "chest-xray"], None, "PIXL_HASH_KEY is not set"),
        (["--project", "chest-xray"], "too-short", "PIXL_HASH_KEY is too short"),
    ],
    ids=["unknown-project", "no-key", "short-key"],  # never the key: it is drawn per run
)
def test_configuration_errors_exit_2_with_one_line(
    inputs: dict[str, Path], tmp_path: Path, args: list[str], key: str | None, message: str
) -> None:
    output = tmp_path / "out"
    result = pixl("anonymise", *args, "--output", output, inputs["good1"], key=key)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()


def test_missing_input_path_exits_2(inputs: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out"
    missing = tmp_path / "not-here.dcm"
    result = pixl("anonymise", "-p", "chest-xray", "-o", output, inputs["good1"], missing)
    assert result.returncode == 2
    assert "input not found" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()  # nothing is done when an input is missing


def test_the_same_instance_given_twice_is_written_once(tmp_path, monkeypatch):
    import shutil
    import subprocess

    from pydicom.data import get_testdata_file

    source = get_testdata_file("RG1_UNCI.dcm")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(source, inputs / "a.dcm")
    shutil.copy(source, inputs / "b.dcm")
    env = {"PIXL_HASH_KEY": TEST_HASH_KEY, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [
            str(PIXL),
            "anonymise",
            "-p",
            "chest-xray",
            "-o",
            str(tmp_path / "out"),
            str(inputs),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "de-identified 1, refused 1 (duplicate_instance 1)" in result.stdout
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 1


def test_a_description_with_the_patients_name_leaves_empty(tmp_path: Path) -> None:
    """Issue 9 §2: kept descriptions are checked against the instance's own identifiers."""
    source = tmp_path / "in.dcm"
    source.write_bytes(
        instance(
            7,
            PatientName="OKAFOR^CHIDI",
            StudyDescription="CXR PA OKAF0R",  # the surname, as OCR or a tired typist writes it
            SeriesDescription="PA",
        )
    )
    result = pixl("anonymise", "--project", "chest-xray", "--output", tmp_path / "out", source)
    assert result.returncode == 0, result.stderr
    assert summary(result) == "de-identified 1, refused 0, descriptions cleaned 1 (name 1)"
    (output,) = written(tmp_path / "out")
    ds = dcmread(output)
    assert ds.StudyDescription == "" and ds.SeriesDescription == "PA"
    assert b"OKAF" not in output.read_bytes()
    assert "113105" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good instances of two studies, refusals of each kind, and one instance given twice with
    different content: the first input (in sorted order) must be the one kept."""
    folder = tmp_path_factory.mktemp("mixed")
    files = {f"g{n:02d}.dcm": instance(n, SeriesDescription="PA") for n in range(1, 9)}
    files["g01_again.dcm"] = instance(1, SeriesDescription="LATERAL")  # same SOP UID as g01
    files["mr.dcm"] = instance(20, modality="MR", sop_class=MR_STORAGE)
    files["scout.dcm"] = instance(21, SeriesDescription="SCOUT")
    files["garbage.dcm"] = b"not dicom\n" * 50
    files["truncated.dcm"] = instance(22)[:2000]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def tree(output: Path) -> dict[str, bytes]:
    return {p.relative_to(output).as_posix(): p.read_bytes() for p in written(output)}


def test_any_number_of_jobs_writes_byte_identical_output(mixed: Path, tmp_path: Path) -> None:
    runs = {
        jobs: pixl(
            "anonymise", "-p", "chest-xray", "-o", tmp_path / f"j{jobs}", "-v", "-j", jobs, mixed
        )
        for jobs in ("1", "3")
    }
    one, three = runs["1"], runs["3"]
    assert one.returncode == three.returncode == 1  # the garbage and the truncated file
    assert (
        summary(one)
        == summary(three)
        == (
            "de-identified 8, refused 5 (duplicate_instance 1, modality_not_allowed 1, "
            "series_filtered 1, unreadable 2)"
        )
    )
    # Refusals listed in input order, whatever finished first.
    assert one.stderr == three.stderr and "refused duplicate_instance: " in one.stderr
    files = tree(tmp_path / "j1")
    assert len(files) == 8 and files == tree(tmp_path / "j3")
    kept = [dcmread(tmp_path / "j3" / name) for name in files]
    assert sorted(ds.SeriesDescription for ds in kept) == ["PA"] * 8  # the first g01, not "again"
    assert not list(tmp_path.rglob("*.partial"))


def test_jobs_out_of_range_is_one_line(mixed: Path, tmp_path: Path) -> None:
    result = pixl("anonymise", "-p", "chest-xray", "-o", tmp_path / "out", "-j", "0", mixed)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --jobs must be a whole number from 1 to 256"
    assert not (tmp_path / "out").exists()


def test_a_worker_that_dies_costs_only_the_file_it_was_on(
    mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in a C decoder kills the worker process, not an exception: the pool breaks, the
    files that were in flight are run again one by one, and only the crashing one is refused."""
    from typer.testing import CliRunner

    import pixl_core.dicom.deid as deid
    from pixl_cli.main import app

    real = deid.deidentify_bytes
    poison = f"{ROOT}1.1.5".encode()

    def crashing(data: bytes, *args: object) -> object:
        if poison in data:
            os._exit(9)  # as a segfault would: no exception, no cleanup
        return real(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(deid, "deidentify_bytes", crashing)  # inherited by forked workers
    monkeypatch.setenv("PIXL_HASH_KEY", TEST_HASH_KEY)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["anonymise", "-p", "chest-xray", "-o", str(output), "-j", "2", str(mixed)]
    )
    assert result.exit_code == 1, result.output
    assert "de-identified 7, refused 6 (duplicate_instance 1, internal_error 1, " in result.output
    assert len(written(output)) == 7
    assert not list(output.rglob("*.partial"))


def test_the_collector_is_paused_for_start_up_only() -> None:
    """Off while the engine is imported and the project loaded, on again before any file is
    read, an early exit (a configuration error) included."""
    import gc

    import typer

    from pixl_cli.anonymise_cmd import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(typer.Exit), collector_paused():
        raise typer.Exit(2)
    assert gc.isenabled()
